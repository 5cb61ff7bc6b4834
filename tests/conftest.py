import os
import shutil
import tempfile

import pytest

# Tests run on the CPU unless told otherwise, with the project's PRNG (see archbench/cli/main.py).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
# `make test` runs the suite on pytest-xdist workers, one per core. pytest-benchmark turns its
# timers off in any process that has PYTEST_XDIST_WORKER set, which would include the matrix
# sessions these tests start (`archbench run`, in-process or in a subprocess): they are whole
# sessions of their own, never split, and must time their cells.
WORKER = os.environ.pop("PYTEST_XDIST_WORKER", None)


# ---- a compilation cache for the tests' own programs ------------------------------------------
#
# Many tests compile the same small programs again (archs.init_variables jits a fresh function
# at every call, so the same init compiles in test after test). JAX's persistent compilation
# cache, in a folder of this test process alone, compiles each once. The engine turns the cache
# off for the programs it measures (jax_enable_compilation_cache=False, so compile_s is a real
# compile), but JAX decides whether to use the cache once per process, at its first compile:
# `_honour_the_switch` makes JAX read the switch at every compile, so the engine's cells are
# never cached, and `_cache_on` turns it back on for the next test. Only this process: the
# subprocesses the tests start (archbench run, scripts) see none of it.
@pytest.fixture(scope="session")
def _compilation_cache():
    import jax
    from jax._src import compilation_cache

    if not hasattr(compilation_cache, "is_cache_used"):  # a JAX without this hook: no cache
        yield
        return
    folder = tempfile.mkdtemp(prefix=f"archbench-tests-xla-{WORKER or 'main'}-")
    enabled = compilation_cache._is_cache_enabled

    def honour_the_switch(backend) -> bool:
        return enabled() and backend.platform in ("cpu", "gpu", "tpu")

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    saved = compilation_cache.is_cache_used
    compilation_cache.is_cache_used = honour_the_switch
    yield
    compilation_cache.is_cache_used = saved
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _cache_on(_compilation_cache):
    import jax

    jax.config.update("jax_enable_compilation_cache", True)


# ---- the slowest files first ----------------------------------------------------------------
#
# `make test` gives each pytest-xdist worker whole files (--dist loadfile), in the order of the
# collection (--no-loadscope-reorder; xdist's own order, most tests first, would leave a few
# long files of few tests to the end, one worker running them while the other idles). The
# files below take the longest on two cores, longest first; every other file follows in its
# usual order. A file missing here only runs later; a stale order only balances worse.
SLOWEST_FILES = (
    "test_sharding.py",
    "test_attention_variants.py",
    "test_compile_only.py",
    "test_archs.py",
    "test_multihost.py",
    "test_api.py",
    "test_train_sharded.py",
    "test_remat.py",
    "test_topology.py",
    "test_cli.py",
    "test_variants.py",
    "test_checks_variants.py",
    "test_report.py",
    "test_generate.py",
    "test_layout.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: same order within


@pytest.fixture(scope="session")
def lstm_infer():
    """LSTM small over 8 steps (a short sequence keeps the unrolled lowering cheap)."""
    from archbench.engine.measure import Cell, prepare  # after the environment above is set

    cell = Cell("lstm", "small", "infer", 16, "float32", seq_len=8)
    return cell, prepare(cell)


@pytest.fixture
def isolated_registry(monkeypatch):
    """Whatever a test registers or loads (archbench.register, --plugin) is gone afterwards."""
    from archbench.archs import plugins, registry
    from archbench.train import recipes

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(plugins, "_registry", registry._REGISTRY)
    monkeypatch.setattr(plugins, "ORIGIN", dict(plugins.ORIGIN))
    monkeypatch.setattr(plugins, "_loaded", dict(plugins._loaded))
    monkeypatch.setattr(registry, "_FIRST_QUERY", [])
    monkeypatch.setattr(recipes, "RECIPES", dict(recipes.RECIPES))
