import gc
import os
import shutil
import tempfile

import pytest

from tests import xla_flags

# Tests run on the CPU unless told otherwise, with the project's PRNG (see archbench/cli/main.py).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
# `make test` runs the suite on pytest-xdist workers, one per core. pytest-benchmark turns its
# timers off in any process that has PYTEST_XDIST_WORKER set, which would include the matrix
# sessions these tests start (`archbench run`, in-process or in a subprocess): they are whole
# sessions of their own, never split, and must time their cells.
WORKER = os.environ.pop("PYTEST_XDIST_WORKER", None)


# ---- one compilation cache for the whole test run ----------------------------------------------
#
# Many tests compile the same small programs again, in this process and in the `archbench run`
# subprocesses they start (the same tiny cells, their inits, their counting twins). JAX's
# persistent compilation cache, in one folder for the whole run, compiles each program once:
# set here through JAX's own environment variables, before JAX is imported, so that every
# pytest-xdist worker and every subprocess inherits it. The engine records what the cache did
# for each measured step (compile_cache: hit, miss or disabled); the tests of compile_s itself
# turn it off. The folder is the controller's, removed when the run ends.
if "ARCHBENCH_TESTS_XLA_CACHE" not in os.environ:
    os.environ["ARCHBENCH_TESTS_XLA_CACHE"] = tempfile.mkdtemp(prefix="archbench-tests-xla-")
    _OWN_CACHE = True
else:
    _OWN_CACHE = False
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.environ["ARCHBENCH_TESTS_XLA_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The CPU's peaks (matmul TFLOP/s, copy bandwidth) are measured by the first process that needs
# them and read back by the others (archbench.engine.peaks.PEAKS_FILE): about two seconds each
# for every `archbench run` the tests start.
os.environ.setdefault(
    "ARCHBENCH_PEAKS_FILE", os.path.join(os.environ["ARCHBENCH_TESTS_XLA_CACHE"], "peaks.json")
)
# ...and with LLVM's optimisations off, which changes no program, only how long XLA:CPU takes
# to emit its machine code (tests/xla_flags.py says why that is safe).
xla_flags.set_for_this_run()


# ---- garbage collection -----------------------------------------------------------------------
#
# A test worker ends up holding what the earlier tests compiled (JAX's caches of traces, jaxprs
# and executables): a great many objects, which every full garbage collection walks. The engine
# collects after each cell, to free its buffers before the next one compiles, and each matrix
# session ended with two more: sampled with py-spy, these explicit collections took 107 of the
# suite's 780 CPU seconds. Before each test, what exists is moved out of the collector's sight
# (gc.freeze): a collection then walks only what the running test made, where its cell's
# buffers are (4 CPU seconds in all; peak memory 1.87 GB against 1.84 on five files).
def pytest_runtest_setup(item):
    gc.freeze()


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["ARCHBENCH_TESTS_XLA_CACHE"], ignore_errors=True)


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
