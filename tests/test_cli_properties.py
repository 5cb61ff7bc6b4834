"""Property-based tests of the command line: generated `run`, `report`, `compare` and `train`
command lines, hostile values included (empty, negative, non-finite, huge, unicode, a path that
is a file, a directory or missing). Whatever the line, archbench exits 0, 1 or 2, prints no
traceback, and leaves a results file that existed before valid, and unchanged unless the
command was meant to add to it. Every example is cheap: tiny sizes, `--target-s 0.01`,
`--epochs 1`, or options that fail before anything runs."""

import contextlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from archbench.cli.main import main
from archbench.matrix import results

TRACEBACK = "Traceback (most recent call last)"
HOSTILE = [
    "",
    " ",
    "-1",
    "0",
    "-0.5",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "99999999999999999999999",
    "ü",
    "名前,",
    ",",
    "mlp,,",
    "--",
    "a" * 300,
]
PATHS = ["RESULTS", "DIR", "MISSING", "GARBAGE", "DIR/new.json", "GARBAGE/x.json", "ü.json"]
SETTINGS = settings(
    # a bounded run in CI (about 200 examples were tried by hand: ARCHBENCH_CLI_EXAMPLES=250)
    max_examples=int(os.environ.get("ARCHBENCH_CLI_EXAMPLES", 12)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


def value(*good):
    """A good value two times in three, else a hostile one."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(HOSTILE))


def path():
    return st.sampled_from(PATHS)


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    """A results file of one tiny cell, copied into each example's folder."""
    folder = tmp_path_factory.mktemp("cli-seed")
    argv = ["run", "--arch", "mlp", "--size", "tiny", "--mode", "infer", "--batch", "2"]
    assert main([*argv, "--target-s", "0.01", "--out", str(folder / "r.json")]) == 0
    return folder / "r.json"


def options(draw, table: dict) -> list[str]:
    """Some of `table`'s options (flag -> strategy of its value, None for a switch)."""
    argv = []
    for flag in draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=4)):
        strategy = table[flag]
        argv += [flag] if strategy is None else [flag, draw(strategy)]
    return argv


RUN = {
    "--mode": value("train", "infer", "generate", "train,infer"),
    "--batch": value("2", "auto", "1,2"),
    "--dtype": value("float32", "bfloat16", "float8"),
    "--devices": value("1", "2", "64"),
    "--seq-len": value("8", "4,8"),
    "--prompt-len": value("4"),
    "--gen-len": value("2"),
    "--sharding": value("dp", "fsdp", "tp", "nosuch"),
    "--mesh": value("data=1", "data=2,model=2", "model"),
    "--variant": value("scan", "xla", "nosuch"),
    "--remat": value("none", "full"),
    "--split": value("1/2", "2/2", "3/2", "0/0", "1/0"),
    "--device-memory": value("80GiB", "h100", "-5GiB", "0"),
    "--resume": None,
    "--overwrite": None,
    "--compile-only": None,
    "--plugin": path(),
    "--dump-hlo": path(),
    "--profile": path(),
}


@st.composite
def run_lines(draw):
    arch = draw(value("mlp", "nosuch", "mlp,lenet5"))
    size = draw(st.sampled_from(["tiny", "tiny", "small", "", "名前", "-1"]))
    argv = ["run", "--arch", arch, "--size", size, "--target-s", draw(value("0.01"))]
    argv += options(draw, RUN)
    if draw(st.booleans()):
        argv += ["--out", draw(path())]
    return argv


REPORT = {
    "--table": None,
    "--csv": st.sampled_from(["-", *PATHS]),
    "--json": st.sampled_from(["-", *PATHS]),
    "-o": path(),
    "--md": path(),
    "--runs": path(),
}


@st.composite
def report_lines(draw):
    files = draw(st.lists(path(), min_size=0, max_size=3))
    return ["report", *files, *options(draw, REPORT)]


@st.composite
def compare_lines(draw):
    files = draw(st.lists(path(), min_size=0, max_size=3))
    extra = ["--threshold", draw(value("5"))] if draw(st.booleans()) else []
    return ["compare", *files, *extra]


TRAIN = {
    "--epochs": st.sampled_from(["1", "", "0", "-1", "nan", "1.5", "ü"]),  # never many
    "--seed": value("1", "-7", str(2**70)),
    "--out": path(),
    "--resume": None,
    "--check": None,
    "--devices": value("1", "3", "64"),
    "--sharding": value("dp", "fsdp", "tp", "nosuch"),
    "--mesh": value("data=1", "model"),
    "--data-dir": path(),
    "--json": None,
    "--list": None,
}


@st.composite
def train_lines(draw):
    recipe = draw(value("mlp-mnist1d", "nosuch"))
    argv = ["train", recipe, *options(draw, TRAIN), "--no-progress"]
    if "--epochs" not in argv:  # never a whole recipe: one epoch at most
        argv += ["--epochs", "1"]
    return argv


def materialise(argv: list[str], folder: Path, seed: Path) -> list[str]:
    """The placeholders made real in a fresh folder: a results file, a directory, a file
    that is not JSON, a missing path."""
    shutil.copy(seed, folder / "RESULTS")
    (folder / "DIR").mkdir()
    (folder / "GARBAGE").write_text("not json {")
    names = {"RESULTS", "DIR", "MISSING", "GARBAGE"}
    return [str(folder / a) if a.split("/")[0] in names or a == "ü.json" else a for a in argv]


def meant_to_write(argv: list[str]) -> bool:
    return argv[0] == "run" and ("--resume" in argv or "--overwrite" in argv)


LIMIT_S = 120  # a command this slow is running a real benchmark: a hostile value got through


def too_long(signum, frame):
    raise TimeoutError(f"still running after {LIMIT_S} s")


def check(argv, seed, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        real = materialise(argv, folder, seed)
        before = (folder / "RESULTS").read_bytes()
        capsys.readouterr()
        signal.signal(signal.SIGALRM, too_long)
        signal.alarm(LIMIT_S)
        try:
            with contextlib.chdir(folder):  # its default outputs (results/, runs/) land here
                status = main(real)
        except SystemExit as e:  # argparse's own exits
            status = e.code
        finally:
            signal.alarm(0)
        out = capsys.readouterr()
        event(f"{argv[0]} exit {status}")
        assert status in (0, 1, 2), (argv, status, out.err[-2000:])
        assert TRACEBACK not in out.out + out.err, (argv, out.err[-3000:])
        after = folder / "RESULTS"
        if meant_to_write(argv) and after.is_file():
            results.load_results(after)  # still valid
        else:
            assert after.read_bytes() == before, argv
            json.loads(before)


@settings(SETTINGS, max_examples=SETTINGS.max_examples * 2 // 3)  # a valid line measures
@given(argv=run_lines())
def test_run_lines(argv, seed, capsys):
    check(argv, seed, capsys)


@SETTINGS
@given(argv=report_lines())
def test_report_lines(argv, seed, capsys):
    check(argv, seed, capsys)


@SETTINGS
@given(argv=compare_lines())
def test_compare_lines(argv, seed, capsys):
    check(argv, seed, capsys)


@settings(SETTINGS, max_examples=SETTINGS.max_examples * 2 // 3)
@given(argv=train_lines())
def test_train_lines(argv, seed, capsys):
    check(argv, seed, capsys)
