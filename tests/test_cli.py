import json
import subprocess
import sys

import pytest

from archbench import archs
from archbench.cli.main import main


def test_list_json_has_one_row_per_arch_and_size(capsys):
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["arch"], r["size"]) for r in rows} == set(archs.cells())
    for r in rows:
        assert {"arch", "family", "size", "params", "input", "task", "canonical"} <= r.keys()
        assert isinstance(r["params"], int) and r["params"] > 0
    lenet = next(r for r in rows if r["arch"] == "lenet5" and r["size"] == "base")
    assert lenet["params"] == 61_706 and lenet["canonical"] == "LeNet-5"


def test_list_table_and_pattern(capsys):
    assert main(["list", "lenet*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["arch", "family", "size", "params"]
    assert all(line.startswith("lenet5") for line in out[2:]) and len(out) == 2 + len(
        archs.get("lenet5").sizes
    )
    assert any("61,706" in line for line in out)


@pytest.mark.parametrize(
    "argv", [["list", "nosuch*"], ["list", "--bogus"], ["frobnicate"], []], ids=str
)
def test_bad_arguments_give_one_line_and_status_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("archbench") and len(err.splitlines()) == 1, err


def test_console_script_exit_status():
    proc = subprocess.run(
        [sys.executable, "-m", "archbench", "list", "nosuch"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "valid:" in proc.stderr


def test_closed_pipe_is_not_a_traceback():
    """`archbench list --json | true`: the reader is gone before the output is written.
    (Only the MLP's sizes: counting every size's parameters takes seconds and shows no more.)"""
    proc = subprocess.Popen(
        [sys.executable, "-m", "archbench", "list", "--json", "mlp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait() == 141
    assert "Traceback" not in err and "BrokenPipe" not in err
