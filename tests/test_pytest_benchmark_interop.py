"""The matrix as pytest-benchmark's users know it: `pytest-benchmark compare` on a results file
shows archbench's per-step medians, `pytest bench/` runs straight from the checkout, and
machine_info holds what a reproduction needs."""

import copy
import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from archbench.cli.main import main
from archbench.matrix import interop, results
from tests import xla_flags

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).with_name("fixtures") / "results-v0.1-jax0.10.json"
CELL = "mlp-tiny-infer-b4-float32-d1"
TINY = ["--arch", "mlp", "--size", "tiny", "--mode", "infer", "--batch", "4"]
SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def table_column(text: str, column: str) -> list[str]:
    """The cells of `column` in a text.py table (a header, a line of dashes, the rows)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if re.match(r"^-+( +-+)*$", line))
    spans = [m.span() for m in re.finditer(r"-+", lines[at])]
    start, end = spans[lines[at - 1].split().index(column)]
    return [line[start:end].strip() for line in lines[at + 1 :] if line.strip()]


def test_pytest_benchmark_compare_shows_the_step_median_archbench_reports(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["run", *TINY, "--target-s", "0.2", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["benchmarks"]
    info = row["extra_info"]
    assert doc[results.MARKER]["stats_per"] == "step"
    assert row["stats"]["iterations"] == info["steps_per_round"] > 1
    assert row["stats"]["median"] == pytest.approx(info["step_time_s"], rel=1e-12)

    compare = subprocess.run(
        [Path(sys.executable).with_name("pytest-benchmark"), "compare", "--columns=median", out],
        cwd=tmp_path,  # no conftest.py there for it to import
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    unit = re.search(r"Name \(time in (\w+)\)", compare).group(1)
    shown = float(re.search(rf"test_cell\[{CELL}\](?: \(\S+\))?\s+([0-9.]+)", compare)[1])
    assert shown * SECONDS[unit] == pytest.approx(info["step_time_s"], abs=SECONDS[unit] * 1e-4)

    capsys.readouterr()
    assert main(["report", str(out), "--table"]) == 0
    (reported,) = table_column(capsys.readouterr().out, "step_time_s")
    digits = len(reported.lower().split("e")[0].replace(".", "").lstrip("0"))  # significant
    assert float(f"{shown * SECONDS[unit]:.{digits}g}") == float(reported)


def test_an_old_file_resumed_gets_per_step_stats():
    doc = json.loads(FIXTURE.read_text())
    assert "stats_per" not in doc[results.MARKER]  # written when stats were per round
    before = copy.deepcopy(doc)
    interop.stats_per_step(doc)
    converted = 0
    for old, new in zip(before["benchmarks"], doc["benchmarks"], strict=True):
        info = new["extra_info"]
        if not old["stats"] or info.get("mode") == "generate":
            assert new["stats"] == old["stats"]
            continue
        converted += 1
        steps = info["steps_per_round"]
        assert new["stats"]["iterations"] == steps
        assert new["stats"]["median"] == pytest.approx(old["stats"]["median"] / steps)
        assert new["stats"]["median"] == pytest.approx(info["step_time_s"])
        assert new["stats"]["rounds"] == old["stats"]["rounds"]
    assert converted
    again = copy.deepcopy(doc)
    doc[results.MARKER]["stats_per"] = "step"
    interop.stats_per_step(doc)  # a file that says its stats are per step is left alone
    assert doc["benchmarks"] == again["benchmarks"]


def pytest_straight(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """`pytest ARGS` from the repository root, as a user types it (the root's addopts apply)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_pytest_benchmark_only_on_bench_times_the_cells_and_records_the_machine(tmp_path):
    out = tmp_path / "straight.json"
    flags = xla_flags.with_devices(2)
    done = pytest_straight(
        "--benchmark-only", "bench/", *TINY, "--target-s", "0.1", "--archbench-out", str(out),
        env={"XLA_FLAGS": flags, "JAX_DEFAULT_MATMUL_PRECISION": "highest"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert "archbench: cells timed" in done.stdout  # over pyproject's --benchmark-disable
    assert "no filters" not in done.stdout
    doc = results.load_results(out)
    (row,) = doc["benchmarks"]
    assert row["stats"]["iterations"] == row["extra_info"]["steps_per_round"] > 1  # timed

    machine = doc["machine_info"]
    assert machine["environment"]["XLA_FLAGS"] == machine["xla_flags"] == flags
    assert machine["environment"]["JAX_DEFAULT_MATMUL_PRECISION"] == "highest"
    assert machine["environment"]["JAX_PLATFORMS"] == "cpu"
    assert machine["device_count"] == 2  # the flags were in force
    assert machine["cpu_count"] == os.cpu_count() and machine["cpu"]["count"]
    assert machine["archbench_cpu"] and "brand_raw" in machine["cpu"]
    assert machine["archbench_version"] == metadata.version("archbench")
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a checkout: archbench's own commit, whatever the cwd
        assert machine["archbench_commit"]["id"] == head.stdout.strip()
        assert isinstance(machine["archbench_commit"]["dirty"], bool)


def test_pytest_bench_without_filters_says_how_to_choose_cells(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # in this process: collecting only, nothing is compiled
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    quiet = ["-p", "no:cacheprovider", "--collect-only"]
    assert pytest.main(["--benchmark-only", "bench/", *quiet]) == 0
    lines = capsys.readouterr().out.splitlines()
    hint = next(line for line in lines[:2] if "no filters" in line)
    cells = int(re.search(r"the main job, (\d+) cells", hint)[1])
    assert any(f"{cells} tests collected" in line for line in lines)
    assert "--arch mlp --size tiny" in hint and "archbench run" in hint

    assert pytest.main(["bench/", *quiet, "--benchmark-disable", "--arch", "mlp"]) == 0
    out = capsys.readouterr().out
    assert "archbench: --benchmark-disable: each cell's step time" in out  # as asked
    assert "no filters" not in out and "cells timed" not in out
