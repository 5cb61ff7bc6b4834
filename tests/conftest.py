import os

import pytest

# Tests run on the CPU unless told otherwise, with the project's PRNG (see archbench/cli/main.py).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
# `make test` runs the suite on pytest-xdist workers, one per core. pytest-benchmark turns its
# timers off in any process that has PYTEST_XDIST_WORKER set, which would include the matrix
# sessions these tests start (`archbench run`, in-process or in a subprocess): they are whole
# sessions of their own, never split, and must time their cells.
os.environ.pop("PYTEST_XDIST_WORKER", None)


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
