"""The benchmark matrix: one pytest-benchmark test per cell.

`archbench run` is the front door. Directly:
    pytest bench/matrix/test_matrix.py --benchmark-enable --arch mlp,lenet5 --size tiny \
        --archbench-out results.json
A cell that fails to build, compile or run (OOM, an error) is recorded in the results with
its status and message, then skipped, so the matrix goes on.
"""

import dataclasses

import pytest

from archbench.matrix.session import compile_request, measure_request


def test_cell(cell, benchmark, matrix_session):
    # the row's "params", as pytest-benchmark stores them: each field of the cell by name
    benchmark.params = dataclasses.asdict(cell)
    if matrix_session.compile_only:
        info = compile_request(
            benchmark,
            cell,
            matrix_session.device_memory,
            matrix_session.target,
            matrix_session.topology,
            hlo_dir=matrix_session.hlo_dir,
        )
    else:
        info = measure_request(
            benchmark,
            cell,
            matrix_session.target_s,
            profile_dir=matrix_session.profile_dir,
            hlo_dir=matrix_session.hlo_dir,
            progress=matrix_session.cell_progress(cell.id),
        )
    matrix_session.record(benchmark, info)
    if info["status"] not in ("ok", "compiled"):
        pytest.skip(f"{info['cell_id']}: {info['status']}: {info.get('error')}")
