"""Several processes, one matrix: `archbench run --coordinator ...` on localhost CPU processes,
peers that never join or die, the options' errors, and `--split` shards merged by the report.

Each process of a job simulates 2 CPU devices (XLA_FLAGS), so two processes make a 4-device
mesh. Every process is given the same command line, --out included: process 0 alone writes
it, the others compute their shards and stay quiet.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from archbench.cli import processes
from archbench.cli.main import main
from archbench.engine.measure import Cell, prepare
from archbench.matrix import cells, results
from tests import xla_flags

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "results-v0.1-jax0.10.json"
CELL = ["--arch", "mlp", "--size", "tiny", "--mode", "train", "--batch", "8", "--devices", "4"]
CELL_ID = "mlp-tiny-train-b8-float32-d4"
SAME_EVERYWHERE = ("params", "flops_per_step", "batch_per_device", "batch_sharding", "devices")

# One data-parallel train step of the cell above, three times, through the engine itself:
# argv = port, processes, process id, devices; process 0 prints the metrics as JSON.
STEPS = """
import json, sys
import jax
from archbench.cli import processes
from archbench.engine.measure import Cell, prepare
port, n, i, devices = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
processes.initialize(processes.Job(f"127.0.0.1:{port}", n, i, 60))
prepared = prepare(Cell("mlp", "tiny", "train", 8, "float32", devices=devices))
steps = []
for _ in range(3):
    metrics = prepared.step()  # replicated: every process holds a copy of each value
    steps.append({k: float(v.addressable_data(0)) for k, v in metrics.items()})
if jax.process_index() == 0:
    print(json.dumps(steps))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(tmp_path, devices_per_process: int) -> dict:
    env = {k: v for k, v in os.environ.items() if "_proxy" not in k.lower()}  # JAX warns on them
    env.update(
        XLA_FLAGS=xla_flags.with_devices(devices_per_process),
        JAX_PLATFORMS="cpu",
        TMPDIR=str(tmp_path),  # where a native log of an abort goes
    )
    return env


def start(argv: list[str], tmp_path, devices_per_process: int = 2, **kwargs):
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=tmp_path,
        env=environment(tmp_path, devices_per_process),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def finish(procs, timeout: float = 120) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each process; kills them all past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            done.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return done


def job(port: int, n: int = 2) -> list[str]:
    return ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n)]


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("archbench: error: "), err
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    assert not any(line[:1] in "IWEF" and line[1:5].isdigit() for line in lines), err  # absl
    return lines[-1]


def extra_info(path) -> dict:
    return {
        r["extra_info"]["cell_id"]: r["extra_info"]
        for r in results.load_results(path)["benchmarks"]
    }


# ---- two processes, one 4-device cell ---------------------------------------------------------


def test_two_processes_measure_one_four_device_cell(tmp_path):
    work, ref = tmp_path / "job", tmp_path / "ref"
    work.mkdir()
    ref.mkdir()
    port = free_port()
    run = ["-m", "archbench", "run", *CELL, "--target-s", "0.1", "--out", "results.json"]
    procs = [start([*run, *job(port), "--process-id", str(i)], work) for i in (0, 1)]
    (code0, _, err0), (code1, out1, err1) = finish(procs)
    assert (code0, code1) == (0, 0), err0 + err1
    assert "1 cell(s) in results.json: 1 ok" in err0
    assert out1 == "" and err1 == ""  # process 1 computes and stays quiet
    # one results file and nothing else (no .benchmarks/: pytest-benchmark's storage folder)
    assert sorted(p.name for p in work.iterdir()) == ["results.json"]

    doc = results.load_results(work / "results.json")
    machine = doc["machine_info"]
    assert (machine["process_count"], machine["local_device_count"]) == (2, 2)
    assert machine["device_count"] == 4
    cell = extra_info(work / "results.json")[CELL_ID]
    assert cell["status"] == "ok" and cell["devices"] == 4

    # the same cell on one process with four devices: the same model, step and sharding
    [(code, _, err)] = finish([start([*run[:-1], "ref.json"], ref, devices_per_process=4)])
    assert code == 0, err
    single = extra_info(ref / "ref.json")[CELL_ID]
    assert results.load_results(ref / "ref.json")["machine_info"]["process_count"] == 1
    assert {k: cell[k] for k in SAME_EVERYWHERE} == {k: single[k] for k in SAME_EVERYWHERE}


def test_two_process_steps_equal_one_device(tmp_path):
    """Three data-parallel train steps over 2 processes x 2 devices: the same losses, accuracy
    and gradient norms as on one device (the batch split four ways, gradients all-reduced)."""
    port = free_port()
    procs = [start(["-c", STEPS, str(port), "2", str(i), "4"], tmp_path) for i in (0, 1)]
    (code0, out0, err0), (code1, _, err1) = finish(procs)
    assert (code0, code1) == (0, 0), err0 + err1
    spread = json.loads(out0.strip().splitlines()[-1])  # after gloo's notes, on stdout

    prepared = prepare(Cell("mlp", "tiny", "train", 8, "float32", devices=1))
    alone = [{k: float(v) for k, v in prepared.step().items()} for _ in range(3)]
    assert alone[2]["loss"] < alone[0]["loss"]  # the steps did train
    for got, want in zip(spread, alone, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


# ---- peers that fail ----------------------------------------------------------------------


def test_peer_that_never_joins_is_one_line_and_leaves_results_alone(tmp_path):
    out = tmp_path / "results.json"
    out.write_bytes(FIXTURE.read_bytes())
    argv = ["-m", "archbench", "run", *CELL, "--out", str(out), "--resume"]
    argv += [*job(free_port()), "--process-id", "0", "--distributed-timeout", "5"]
    started = time.monotonic()
    [(code, stdout, err)] = finish([start(argv, tmp_path)], timeout=60)
    elapsed = time.monotonic() - started
    assert code == 2, err
    line = one_line_error(err)
    assert len(err.strip().splitlines()) == 1, err
    assert "did not join within --distributed-timeout 5 s" in line
    assert elapsed < 30, elapsed
    assert stdout == ""
    assert out.read_bytes() == FIXTURE.read_bytes()
    log = Path(line.rpartition("native log: ")[2])
    assert log.parent == tmp_path and "DEADLINE_EXCEEDED" in log.read_text()


def test_peer_that_dies_stops_the_others_in_one_line(tmp_path):
    """Process 1 is killed after process 0 has written its first cell: process 0 ends within
    seconds, exit status 2 and one line, and its results file keeps the finished cells."""
    port = free_port()
    run = ["-m", "archbench", "run", "--arch", "mlp,lenet5", "--size", "tiny", "--devices", "4"]
    run += ["--batch", "8", "--target-s", "1", "--out", "results.json", *job(port)]
    run += ["--distributed-timeout", "20"]
    first = start([*run, "--process-id", "0"], tmp_path)
    second = start([*run, "--process-id", "1"], tmp_path, start_new_session=True)
    out = tmp_path / "results.json"
    try:
        deadline = time.monotonic() + 90
        while not out.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        assert out.exists(), "no cell finished"
        os.killpg(second.pid, signal.SIGKILL)  # the supervisor and its worker, at once
        killed = time.monotonic()
        [(code, _, err)] = finish([first], timeout=60)
        elapsed = time.monotonic() - killed
    finally:
        finish([second], timeout=5)
    assert code == 2, err
    assert "a peer process is gone" in one_line_error(err) or "aborted" in err
    assert elapsed < 40, elapsed
    rows = extra_info(out)
    assert rows and all(r["status"] == "ok" for r in rows.values()), rows
    assert not results.load_results(out)["archbench"]["complete"]


def test_mismatched_command_lines_end_in_one_line_each(tmp_path):
    """Processes given different --arch run different collectives, and gloo aborts; its own
    report ("terminate called ... collective mismatch") reached the terminal before archbench's
    line. Each process ends in exit status 2 and archbench's lines alone; one names the cause."""
    run = ["-m", "archbench", "run", "--size", "tiny", "--mode", "train", "--batch", "8"]
    run += ["--devices", "4", "--target-s", "0.1", "--out", "results.json", *job(free_port())]
    run += ["--distributed-timeout", "10"]
    procs = [
        start([*run, "--arch", arch, "--process-id", str(i)], tmp_path)
        for i, arch in enumerate(("mlp", "lenet5"))
    ]
    done = finish(procs, timeout=180)
    for code, stdout, err in done:
        assert code == 2, err
        one_line_error(err)
        assert all(line.startswith("archbench") for line in err.strip().splitlines()), err
        assert stdout == "" and "gloo" not in err.lower(), err
    assert any("the processes ran different collectives" in err for _, _, err in done), done


# ---- the options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
        (["--coordinator", "h:99999", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
        (["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "2"], "below"),
        (["--coordinator", "h:1234", "--num-processes", "0", "--process-id", "0"], ">= 1"),
        (["--coordinator", "h:1234", "--num-processes", "2"], "also need --process-id"),
        (["--distributed", "auto", "--process-id", "0"], "drop --process-id"),
        (["--distributed", "slurm"], "only value is 'auto'"),
        (["--distributed-timeout", "5"], "applies to a multi-process run"),
        (["--distributed", "auto", "--distributed-timeout", "-1"], "positive number"),
        (["--distributed", "auto", "--batch", "auto"], "--batch auto"),
        (["--split", "3/2"], "--split '3/2': K must be 1..N"),
        (["--split", "x"], "--split 'x': expected K/N"),
        (["--split", "0/2"], "K must be 1..N"),
        (["--split", "5/9"], "shard 5 is empty"),
    ],
)
def test_bad_scale_out_options_are_one_line_and_exit_2(argv, expect, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["run", "--arch", "mlp", "--size", "tiny", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("archbench"), err
    assert expect in err, err
    assert not out.exists()


def test_parse_gives_the_job():
    assert processes.parse() is None
    explicit = processes.parse(" node-1.cluster:1234", "4", "3", None, "7.5")
    assert explicit == processes.Job("node-1.cluster:1234", 4, 3, 8)
    assert processes.parse("[::1]:80", 1, 0).coordinator == "[::1]:80"
    auto = processes.parse(distributed=processes.AUTO)
    assert auto.auto and auto.timeout_s == processes.DEFAULT_TIMEOUT_S


# ---- split and merge ----------------------------------------------------------------------


def test_split_shards_cover_the_matrix_and_merge(tmp_path, capsys):
    filters = {"arch": "mlp,lenet5", "size": "tiny", "mode": "train,infer", "batch": "8"}
    every = [r.id for r in cells.select(**filters)]
    shards = [[r.id for r in cells.select(**filters, split=f"{k}/2")] for k in (1, 2)]
    assert len(every) == 4 and sorted(shards[0] + shards[1]) == sorted(every)
    # dealt by cost (cells.shards), each shard in select()'s order
    assert shards == [[c.id for c in s] for s in cells.shards(cells.select(**filters), 2)]
    assert all(s == [i for i in every if i in s] for s in shards)

    # compiled only: the shards and their merge are the point, not step times
    base = ["run", *(f"--{k}={v}" for k, v in filters.items()), "--compile-only"]
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    for k, path in enumerate(files, 1):
        assert main([*base, "--split", f"{k}/2", "--out", str(path)]) == 0
    ids = [set(extra_info(path)) for path in files]
    assert ids == [set(s) for s in shards] and not ids[0] & ids[1]

    capsys.readouterr()
    assert main(["report", *map(str, files), "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["cell_id"] for r in rows) == sorted(every)
