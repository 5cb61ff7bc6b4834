"""The CLI under a hostile user (issue 16): kill -9 mid-write and mid-epoch, two writers on one
output, a full disk or a folder it may not write, hand-edited and torn files, absurd arguments.

Cases already covered elsewhere are not repeated here: a run killed mid-cell
(test_matrix_cli.test_killed_run_keeps_finished_cells), truncated, empty, missing, foreign and
newer-schema results for `report` (test_matrix_cli.test_report_names_the_bad_file), foreign
--out files (test_matrix_cli.test_foreign_out_file_is_named_and_left_byte_identical), most bad
filters (test_matrix_cli.test_bad_run_input_is_one_line_and_exit_2), and a fit stopped right
after a checkpoint (test_fit.test_resume_equals_an_unbroken_run).
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

from archbench.archs import UserError
from archbench.cli.main import main
from archbench.matrix import results, session
from archbench.report import curves
from archbench.train import data as data_module
from archbench.train import recipes
from archbench.train.checkpoint import Checkpoints
from archbench.train.loop import MetricsLog
from tests.test_compare import make_row, write_results
from tests.test_fit import _synthetic, toy_recipe

ROOT = Path(__file__).resolve().parents[1]
RUN = ["run", "--arch", "mlp", "--size", "tiny", "--mode", "infer", "--batch", "4,8"]
RUN += ["--target-s", "0.05"]
CELLS = ["mlp-tiny-infer-b4-float32-d1", "mlp-tiny-infer-b8-float32-d1"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("archbench"), err
    assert "Traceback" not in err
    return err


def cell_ids(path) -> list[str]:
    return [session.row_key(r) for r in results.load_results(path)["benchmarks"]]


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 180) -> None:
    """Until `path` exists; fails (not hangs) if the process ends first or time runs out."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"the process ended first (status {proc.returncode})"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


# ---- kill -9 and two writers ------------------------------------------------------------------

# `archbench run` that hangs inside the second rewrite of its results file, after writing the
# temporary file and before os.replace: killed there, it is killed mid-write.
HANG_IN_SECOND_WRITE = """
import os, sys, time
from pathlib import Path
real_fsync, calls = os.fsync, []
def fsync(fd):
    calls.append(fd)
    if len(calls) == 2:
        Path(sys.argv[1]).touch()
        time.sleep(600)
    real_fsync(fd)
os.fsync = fsync
from archbench.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_run_killed_mid_write_keeps_its_file_and_locks_out_a_second_run(tmp_path, capsys):
    out = tmp_path / "res ü.json"
    hung = tmp_path / "hung"
    proc = subprocess.Popen(
        [sys.executable, "-c", HANG_IN_SECOND_WRITE, str(hung), *RUN, "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(hung, proc)
        # A second run on the same --out while the first writes: refused, naming it.
        before = out.read_bytes()
        assert main([*RUN, "--out", str(out), "--resume"]) == 2
        err = one_line_error(capsys)
        assert str(out) in err and f"pid {proc.pid}" in err, err
        assert out.read_bytes() == before
    finally:
        kill(proc)
    # The file is the last complete rewrite: valid, the first cell only; the torn rewrite is a
    # temporary file that no reader takes for results.
    assert cell_ids(out) == CELLS[:1]
    assert not results.load_results(out)["archbench"]["complete"]
    assert [p.suffix for p in results.leftover_tmp_files(out)] == [".tmp"]
    # The kernel dropped the killed run's lock: --resume runs the one cell in flight, removes
    # the temporary file, and leaves no lock behind.
    assert main([*RUN, "--out", str(out), "--resume"]) == 0
    assert cell_ids(out) == CELLS and results.load_results(out)["archbench"]["complete"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hung", out.name]


# `archbench train` of a toy recipe (tests/test_fit.py) that hangs in the middle of epoch 2.
HANG_IN_EPOCH_2 = """
import sys, time
from pathlib import Path
from archbench.train import data, feed, recipes
from tests.test_fit import _synthetic, toy_recipe
data.load = lambda name, split, data_dir=None: _synthetic(data, 96 if split == "train" else 40,
                                                          split == "test")
recipes.RECIPES["toy-mlp"] = toy_recipe(epochs=3)
real_next, taken = feed.EpochFeed.__next__, []
def next_batch(self):
    taken.append(1)
    if len(taken) == 6 + 5:  # epoch 2, after 4 steps logged
        Path(sys.argv[1]).touch()
        time.sleep(600)
    return real_next(self)
feed.EpochFeed.__next__ = next_batch
from archbench.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture
def toy_train(monkeypatch):
    """`archbench train toy-mlp`: 3 epochs of 6 steps on tiny synthetic data."""

    def load(name, split, *, data_dir=None):
        return _synthetic(data_module, 96 if split == "train" else 40, split == "test")

    monkeypatch.setattr(data_module, "load", load)
    monkeypatch.setitem(recipes.RECIPES, "toy-mlp", toy_recipe(epochs=3))


def test_train_killed_mid_epoch_resumes_and_locks_out_a_second_train(tmp_path, toy_train, capsys):
    run = tmp_path / "run ü"
    hung = tmp_path / "hung"
    argv = ["train", "toy-mlp", "--out", str(run), "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-c", HANG_IN_EPOCH_2, str(hung), *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(hung, proc)
        assert main([*argv, "--resume"]) == 2
        err = one_line_error(capsys)
        assert str(run) in err and f"pid {proc.pid}" in err, err
    finally:
        kill(proc)
    with Checkpoints(run / "checkpoints") as ckpt:
        assert ckpt.latest_epoch() == 1
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 6, 6, 6, 8]  # epoch 1 (a window, train, test), epoch 2's first window
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"kind": "step", "ste')  # as if killed in the middle of a line
    (run / "checkpoints" / "2.orbax-checkpoint-tmp").mkdir()  # as if killed mid-save
    assert main([*argv, "--resume"]) == 0
    capsys.readouterr()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [4, 6, 6, 6, 8, 12, 12, 12, 16, 18, 18, 18]
    with Checkpoints(run / "checkpoints") as ckpt:
        assert ckpt.latest_epoch() == 3
    assert not (run / ".lock").exists()


def test_torn_or_corrupt_metrics_lines(tmp_path):
    """A last line torn by a kill: dropped on resume, skipped by the report. A corrupt line in
    the middle: a one-line error naming the file and line, in both."""
    good = [json.dumps({"kind": "step", "step": s, "split": "train", "loss": 1.0}) for s in (1, 2)]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join([*good, '{"kind": "st']))
    MetricsLog(metrics, keep_through_step=2).close()
    assert metrics.read_text().splitlines() == good
    assert len(curves.load_training_run(tmp_path).records) == 2
    metrics.write_text("\n".join([good[0], "{oops", good[1]]) + "\n")
    with pytest.raises(UserError, match=f"{metrics}:2: not a JSON line"):
        MetricsLog(metrics, keep_through_step=2)
    with pytest.raises(UserError, match=f"{metrics}:2: not a JSON line"):
        curves.load_training_run(tmp_path)
    metrics.write_text("[1, 2]\n")
    with pytest.raises(UserError, match=f"{metrics}:1: not a metrics record"):
        MetricsLog(metrics, keep_through_step=2)


# ---- a full disk, a folder it may not write ---------------------------------------------------


class FailingOs:
    """`os` for archbench.matrix.results whose fsync fails from the `fail_at`-th call on, as a
    full disk (ENOSPC) or a folder it may not write (EACCES) would; as root, a read-only
    folder would not stop the write."""

    def __init__(self, code: int, fail_at: int):
        self.code, self.fail_at, self.calls = code, fail_at, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def fsync(self, fd):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise OSError(self.code, os.strerror(self.code))
        os.fsync(fd)


@pytest.mark.parametrize(
    ("code", "fail_at"), [(errno.ENOSPC, 2), (errno.EACCES, 1)], ids=["ENOSPC", "EACCES"]
)
def test_results_that_cannot_be_written_stop_the_run_in_one_line(
    code, fail_at, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "results.json"
    monkeypatch.setattr(results, "os", FailingOs(code, fail_at))
    assert main([*RUN, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in err and err.startswith("archbench: error: ")
    assert f"{out}: cannot write it ({os.strerror(code)})" in err and "matrix stopped" in err
    monkeypatch.undo()
    if fail_at == 1:  # nothing was written
        assert "not written" in err and not out.exists()
    else:  # the cell before stays, intact, and --resume goes on from it
        assert "left as it was" in err and "--resume" in err
        assert cell_ids(out) == CELLS[:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == (["results.json"] if fail_at > 1 else [])


def test_report_outputs_that_cannot_be_written(tmp_path, monkeypatch, capsys):
    good = write_results(tmp_path / "good.json", [make_row("mlp")])
    monkeypatch.setattr(results, "os", FailingOs(errno.ENOSPC, 1))
    for option, name in (("--csv", "rows ü.csv"), ("--json", "rows.json"), ("-o", "r é.html")):
        target = tmp_path / name
        assert main(["report", good, option, str(target)]) == 2
        err = one_line_error(capsys)
        assert f"{target}: cannot write it (No space left on device)" in err
        assert not target.exists()
    monkeypatch.undo()

    def no_space(self, *args, **kwargs):  # the first plot beside --md, as a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", no_space)
    assert main(["report", good, "--md", str(tmp_path / "r.md")]) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path / 'r_files'}" in err and "No space left on device" in err


def test_training_files_that_cannot_be_written(tmp_path, toy_train, monkeypatch, capsys):
    """metrics.jsonl (the file object fails) and a checkpoint (orbax's error, as tensorstore
    words it): one line naming the file, exit 2; resume goes on from the last checkpoint."""
    real_write = MetricsLog.write

    def write(self, record):
        if record["step"] == 8:  # the first line of epoch 2

            class Full:
                def write(self, text):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                close = flush = lambda self: None

            self._file = Full()
        real_write(self, record)

    monkeypatch.setattr(MetricsLog, "write", write)
    argv = ["train", "toy-mlp", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert f"{tmp_path / 'run' / 'metrics.jsonl'}: No space left on device" in err
    monkeypatch.setattr(MetricsLog, "write", real_write)

    def failing_save(self, step, *args, **kwargs):  # as tensorstore words a full disk
        raise ValueError(
            f'RESOURCE_EXHAUSTED: Error writing local file "{self.directory}/{step}": No space '
            "left on device [os_error_code='28']"
        )

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    assert main([*argv, "--resume"]) == 2  # epoch 1's checkpoint: epoch 2 is saved first
    said, err = capsys.readouterr().err.strip().splitlines()  # what resume does, then the error
    assert said.startswith("archbench: resuming toy-mlp from its checkpoint of epoch 1")
    assert err.startswith("archbench: error:") and "Traceback" not in err
    assert f"{tmp_path / 'run' / 'checkpoints' / '2'}: No space left on device" in err


# ---- hand-edited, torn and foreign results files ----------------------------------------------

EDITS = {
    "extra_info-list": (lambda r: r.__setitem__("extra_info", [1, 2]), "'extra_info' is list"),
    "params-text": (lambda r: r.__setitem__("params", "mlp"), "'params' is str"),
    "stats-text": (lambda r: r.__setitem__("stats", "fast"), "'stats' is str"),
    "time-text": (
        lambda r: r["extra_info"].__setitem__("step_time_s", "slow"),
        "'step_time_s' is 'slow', not a number",
    ),
    "status-number": (lambda r: r["extra_info"].__setitem__("status", 3), "'status' is 3"),
    "median-text": (lambda r: r["stats"].__setitem__("median", "1s"), "stats 'median'"),
}


@pytest.mark.parametrize("edit", EDITS, ids=str)
def test_hand_edited_results_are_one_line_naming_file_and_cell(edit, tmp_path, capsys):
    change, expect = EDITS[edit]
    good = write_results(tmp_path / "good.json", [make_row("mlp")])
    doc = json.loads(Path(good).read_text())
    change(doc["benchmarks"][0])
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(doc))
    before = bad.read_bytes()
    for argv in (
        ["report", str(bad), "--json", "-"],
        ["compare", good, str(bad)],
        [*RUN, "--out", str(bad), "--resume"],
    ):
        assert main(argv) == 2, argv
        err = one_line_error(capsys)
        assert f"{bad}: corrupt cell benchmarks[0] (" in err and expect in err, (argv, err)
    assert bad.read_bytes() == before


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ('{"archbench": {"schema": 1}, "benchmarks": [{"na', "not JSON (Unterminated string"),
        ('{"archbench": {"schema": 99}, "benchmarks": []}', "results schema 99 is newer"),
        (None, "is a directory"),
    ],
    ids=["truncated", "newer-schema", "directory"],
)
def test_bad_results_for_compare_and_resume(content, expect, tmp_path, capsys):
    """`report` has these (test_matrix_cli); `compare` and `run --resume` name them too, with
    the line and column of a JSON error."""
    good = write_results(tmp_path / "good.json", [make_row("mlp")])
    bad = tmp_path / "bad.json"
    if content is None:
        bad.mkdir()
    else:
        bad.write_text(content)
    for argv in (
        ["report", str(bad), "--json", "-"],
        ["compare", str(bad), good],
        [*RUN, "--out", str(bad), "--resume"],
    ):
        assert main(argv) == 2, argv
        err = one_line_error(capsys)
        assert str(bad) in err and expect in err, (argv, err)
        if content and '{"na' in content:
            assert "line 1 column" in err


# ---- absurd arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["run", "--arch", "gpt", "--seq-len", "0"], "--seq-len '0': not a positive integer"),
        (["run", "--devices", "1000"], "--devices 1000: only "),
        (["run", "--dtype", "float16"], "unknown dtype 'float16'; valid: float32"),
        (["run", "--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["run", "--target-s", "nan"], "--target-s nan: must be a positive number of seconds"),
        (["run", "--target-s", "-1"], "--target-s -1.0: must be a positive number of seconds"),
        (["train", "toy-mlp", "--devices", "1000"], "--devices must be 1.."),
        (["train", "toy-mlp", "--epochs", "-3"], "at least 1"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_absurd_arguments_are_one_line(argv, expect, tmp_path, toy_train, capsys):
    out = tmp_path / "out"
    if argv[0] == "run":
        argv = [*argv, "--size", "tiny", "--out", str(out)]
    else:
        argv = [*argv, "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    assert expect in one_line_error(capsys)
    assert not out.exists()


def test_a_billion_batch_is_an_oom_cell_not_a_crash(tmp_path, capsys):
    """Its inputs alone are 3.1 TB: the allocation fails at once and the cell is recorded as
    oom, as any cell too big for its device (no up-front check: a device's memory, not the
    host's, is what limits a batch, and one absurd batch must not cost a sweep its other
    cells); the paths have spaces and non-ASCII letters."""
    out = tmp_path / "dir with spaces ü" / "rés ults.json"
    assert main([*RUN, "--batch", "1000000000", "--out", str(out)]) == 1
    (row,) = results.flat_rows([out])
    assert row["status"] == "oom" and "Out of memory" in row["error"], row["error"]
    assert "(oom)" in capsys.readouterr().err
    assert main(["report", str(out), "--csv", str(out.parent / "rows ü.csv")]) == 0
    assert (out.parent / "rows ü.csv").read_text().count("\n") == 2
