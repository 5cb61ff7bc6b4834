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


@pytest.fixture(scope="session")
def lstm_infer():
    """LSTM small over 8 steps (a short sequence keeps the unrolled lowering cheap)."""
    from archbench.engine.measure import Cell, prepare  # after the environment above is set

    cell = Cell("lstm", "small", "infer", 16, "float32", seq_len=8)
    return cell, prepare(cell)
