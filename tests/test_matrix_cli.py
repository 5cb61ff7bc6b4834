"""`archbench run` and `archbench report`: the matrix end to end on tiny sizes, resume, a killed
run, bad input, and the flat rows."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archbench import archs
from archbench.cli.main import main
from archbench.engine import measure
from archbench.matrix import cells, results, session

ROOT = Path(__file__).resolve().parents[1]
RUN = ["run", "--arch", "mlp,lenet5", "--size", "tiny", "--mode", "train,infer"]
RUN += ["--target-s", "0.1"]
CELLS = {f"{a}-tiny-{m}-b32-float32-d1" for a in ("mlp", "lenet5") for m in ("train", "infer")}
METRICS = {"status", "params", "flops_per_step", "step_time_s", "step_time_iqr_s"}
METRICS |= {"samples_per_s", "tflops_per_s", "mfu", "lower_s", "compile_s", "compiled_bytes"}
METRICS |= {"peak_bytes", "backend", "device_kind", "cell_id"}


def rows_by_id(path) -> dict:
    return {session.row_key(r): r for r in results.load_results(path)["benchmarks"]}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("archbench"), err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """The four tiny cells, measured once for the whole module."""
    out = tmp_path_factory.mktemp("run") / "results.json"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


def test_default_selection_is_the_main_job():
    requests = cells.select()
    measured = [r for r in requests if r.mode != "generate"]  # tests/test_generate.py: the rest
    assert {(r.arch, r.size, r.mode) for r in measured} == {
        (a, "small", m) for a in archs.names() for m in ("train", "infer")
    }
    assert {(r.batch, r.dtype, r.devices, r.seq_len) for r in requests} == {
        (32, "float32", 1, None)
    }
    auto = cells.select(arch="gpt", size="tiny", mode="train", batch="auto", seq_len="8")
    assert [r.id for r in auto] == ["gpt-tiny-train-bauto-float32-d1-t8"]


def test_run_writes_pytest_benchmark_json(first_run):
    doc = json.loads(first_run.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= doc.keys()
    assert doc["archbench"]["schema"] == results.SCHEMA and doc["archbench"]["complete"]
    info = doc["machine_info"]
    assert info["backend"] and info["device_kind"] and info["device_count"] >= 1
    assert {r["param"] for r in doc["benchmarks"]} == CELLS
    for row in doc["benchmarks"]:
        assert {"name", "fullname", "params", "stats", "extra_info", "options"} <= row.keys()
        assert row["name"] == f"test_cell[{row['param']}]"
        assert {"median", "iqr", "rounds", "data"} <= row["stats"].keys()
        assert row["stats"]["rounds"] >= session.MIN_ROUNDS
        assert row["extra_info"].keys() >= METRICS, row["extra_info"].keys()
        assert row["extra_info"]["status"] == "ok" and row["extra_info"]["step_time_s"] > 0
        assert row["params"]["arch"] in ("mlp", "lenet5") and row["params"]["batch"] == 32


def test_resume_runs_only_missing_and_failed_cells(first_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.json"
    out.write_text(first_run.read_text())
    before = rows_by_id(out)
    prepared, failing = [], {"mlp-tiny-infer-b8-float32-d1"}
    real_prepare = measure.prepare

    def prepare(plan):
        prepared.append(plan.cell.id)
        if plan.cell.id in failing:
            raise RuntimeError("simulated failure\nwith a second line")
        return real_prepare(plan)

    monkeypatch.setattr(measure, "prepare", prepare)
    assert main([*RUN, "--out", str(out), "--resume"]) == 0  # nothing left to measure
    assert prepared == [] and rows_by_id(out) == before

    # A new cell joins the file; it fails: recorded, the matrix goes on, exit status 1.
    more = [*RUN, "--arch", "mlp", "--mode", "infer", "--batch", "32,8", "--out", str(out)]
    assert main([*more, "--resume"]) == 1
    assert prepared == ["mlp-tiny-infer-b8-float32-d1"]
    rows = rows_by_id(out)
    assert {k: rows[k] for k in before} == before and len(rows) == len(before) + 1
    failed = rows["mlp-tiny-infer-b8-float32-d1"]
    assert failed["stats"] is None and failed["extra_info"]["status"] == "error"
    assert failed["extra_info"]["error"] == "RuntimeError: simulated failure"
    # stderr is not a terminal here: a line per cell instead of a bar
    err = capsys.readouterr().err
    assert "archbench 1/1 mlp-tiny-infer-b8-float32-d1: error\n" in err and "|" not in err

    # Resume runs the failed cell again, and only it; every other row stays as it was.
    failing.clear()
    assert main([*more, "--resume"]) == 0
    assert prepared == ["mlp-tiny-infer-b8-float32-d1"] * 2
    after = rows_by_id(out)
    assert after["mlp-tiny-infer-b8-float32-d1"]["extra_info"]["status"] == "ok"
    assert re.search(r"archbench 1/1 mlp-tiny-infer-b8-float32-d1: ok, [\d.]+ .?s per step\n",
                     capsys.readouterr().err)  # fmt: skip
    assert {k: after[k] for k in before} == before


HANG_AFTER_ONE_CELL = """
import sys, time
from archbench.engine import measure
real_prepare, calls = measure.prepare, []
def prepare(cell):
    calls.append(cell)
    if len(calls) > 1:
        time.sleep(600)  # the second cell never finishes: the run is killed here
    return real_prepare(cell)
measure.prepare = prepare
from archbench.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_keeps_finished_cells(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", HANG_AFTER_ONE_CELL, *RUN, "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)  # well into the second cell's (hanging) prepare
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rows = rows_by_id(out)
    assert list(rows) == ["mlp-tiny-train-b32-float32-d1"]
    assert rows["mlp-tiny-train-b32-float32-d1"]["extra_info"]["status"] == "ok"
    assert not results.load_results(out)["archbench"]["complete"]
    left = sorted(p.name for p in tmp_path.iterdir())  # no temporary file; the lock sidecar
    assert left == [".results.json.lock", "results.json"]  # stays, unlocked (cli/locks.py)


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--arch", "mlp,nosuch"], "unknown architecture 'nosuch'; valid: "),
        (["--size", "huge"], "unknown size 'huge'; valid: tiny, small"),
        (["--mode", "train,fly"], "unknown mode 'fly'; valid: train, infer"),
        (["--dtype", "float8"], "unknown dtype 'float8'; valid: float32"),
        (["--batch", "0"], "--batch '0': not a positive integer or 'auto'"),
        (["--batch", "32,x"], "--batch 'x': not a positive integer"),
        (["--devices", "999"], "--devices 999: only "),
        (["--seq-len", "64"], "--seq-len applies to sequence models ("),
        (["--target-s", "0"], "--target-s"),
        (["--target-s", "soon"], "--target-s"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_run_input_is_one_line_and_exit_2(argv, expect, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["run", "--arch", "mlp", "--size", "tiny", *argv, "--out", str(out)]) == 2
    assert expect in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    "content", [b"", b"name,time\nmlp,1\n", b'{"benchmarks": []}', b"\x00\xff"], ids=repr
)
def test_foreign_out_file_is_named_and_left_byte_identical(content, tmp_path, capsys):
    out = tmp_path / "precious.json"
    out.write_bytes(content)
    assert main(["run", "--arch", "mlp", "--size", "tiny", "--out", str(out), "--resume"]) == 2
    assert str(out) in one_line_error(capsys)
    assert out.read_bytes() == content


def test_existing_results_need_resume_or_overwrite(first_run, capsys):
    before = first_run.read_bytes()
    assert main([*RUN, "--out", str(first_run)]) == 2
    assert "--resume" in one_line_error(capsys) and first_run.read_bytes() == before


def test_console_script_bad_input_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "archbench", "run", "--arch", "nosuch"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "valid: " in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---- report -----------------------------------------------------------------------------------


def test_report_json_and_csv_rows(first_run, tmp_path, capsys):
    assert main(["report", str(first_run), str(first_run), "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 * len(CELLS)
    for row in rows:
        assert set(results.FLAT_COLUMNS) <= row.keys()
        assert row["source"] == str(first_run) and row["backend"] and row["device_kind"]
        assert row["status"] == "ok" and row["devices"] == 1 and row["step_time_s"] > 0
    assert {r["cell_id"] for r in rows} == CELLS

    csv_path = tmp_path / "rows.csv"
    assert main(["report", str(first_run), "--csv", str(csv_path), "--table"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["arch", "size", "mode"] and len(table) == 2 + len(CELLS)
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",")[: len(results.FLAT_COLUMNS)] == results.FLAT_COLUMNS
    assert len(lines) == 1 + len(CELLS)


def test_report_refuses_to_write_over_its_input(first_run, capsys):
    before = first_run.read_bytes()
    assert main(["report", str(first_run), "--json", str(first_run)]) == 2
    assert "input" in one_line_error(capsys) and first_run.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (None, "no such results file"),
        ("", "empty"),
        ('{"benchmarks": [', "not JSON"),
        ('{"benchmarks": []}', "not an archbench results file"),
        ('{"archbench": {"schema": 99}, "benchmarks": []}', "newer"),
        ('{"archbench": {"schema": 1}, "benchmarks": {}}', "corrupt"),
    ],
    ids=["missing", "empty", "truncated", "foreign", "newer-schema", "corrupt"],
)
def test_report_names_the_bad_file(content, expect, first_run, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    assert main(["report", str(first_run), str(bad), "--json", "-"]) == 2
    err = one_line_error(capsys)
    assert str(bad) in err and expect in err
    assert capsys.readouterr().out == ""


def test_seq_len_applies_per_size_not_per_architecture():
    """mlp's `small` takes images and its `mnist1d` size a sequence: only the latter varies."""
    mixed = cells.select(arch="mlp,lstm", size="small", mode="infer", seq_len="64")
    assert {(r.arch, r.seq_len) for r in mixed} == {("mlp", None), ("lstm", 64)}
    (one,) = cells.select(arch="mlp", size="mnist1d", mode="infer", seq_len="64")
    assert one.seq_len == 64
