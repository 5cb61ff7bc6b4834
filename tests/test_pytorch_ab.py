"""The archbench side of the PyTorch comparison (archbench.checks.pytorch_ab), against a
stand-in for the PyTorch process: the tests install no PyTorch. The stand-in answers the
driver's requests as bench/checks/pytorch_server.py does, with the parameter count and
step time the test gives it, and logs the requests it got."""

from __future__ import annotations

import json
import sys

import pytest

import archbench
from archbench.checks import pytorch_ab

STAND_IN = """#!{python}
import json, os, sys
for line in sys.stdin:
    request = json.loads(line)
    with open(os.environ["STAND_IN_LOG"], "a") as log:
        log.write(line)
    if request["op"] == "prepare":
        answer = {{"params": int(os.environ["STAND_IN_PARAMS"]), "steps_per_round": 1,
                  "torch": "stand-in", "threads": 1}}
    else:
        answer = {{"step_s": float(os.environ["STAND_IN_STEP_S"])}}
    print(json.dumps(answer), flush=True)
"""
ARGV = ["--arch", "mlp", "--size", "tiny", "--mode", "infer", "--batch", "2", "--repeats", "2"]
ARGV += ["--target-s", "0.01"]


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    python = tmp_path / "python"
    python.write_text(STAND_IN.format(python=sys.executable))
    python.chmod(0o755)
    monkeypatch.setenv("STAND_IN_LOG", str(tmp_path / "requests.jsonl"))
    monkeypatch.setenv("STAND_IN_STEP_S", "0.002")
    return python


def requests(tmp_path) -> list[dict]:
    return [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]


def test_blocks_alternate_and_each_ratio_pairs_the_blocks_around_it(
    stand_in, tmp_path, monkeypatch
):
    monkeypatch.setenv("STAND_IN_PARAMS", str(archbench.param_count("mlp", "tiny")))
    out = tmp_path / "ab.json"
    assert pytorch_ab.main(["--torch-python", str(stand_in), *ARGV, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    mine = row["blocks_archbench_s"]
    assert len(mine) == 3 and row["blocks_pytorch_s"] == [0.002, 0.002]
    pairs = [(mine[0] + mine[1]) / 2 / 0.002, (mine[1] + mine[2]) / 2 / 0.002]
    assert row["ratio_min"] == pytest.approx(min(pairs))
    assert row["ratio_max"] == pytest.approx(max(pairs))
    # the twin is described by the archbench module's own fields and input
    prepare, *blocks = requests(tmp_path)
    assert prepare["op"] == "prepare" and [b["op"] for b in blocks] == ["block", "block"]
    mlp = archbench.get("mlp")
    assert prepare["fields"]["hidden"] == list(mlp.build("tiny").hidden)
    assert prepare["input"] == {"kind": "image", "shape": [28, 28, 1], "vocab_size": None}
    assert (prepare["mode"], prepare["batch"], prepare["task"]) == ("infer", 2, mlp.task)


def test_counts_that_differ_fail_the_cell_untimed(stand_in, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STAND_IN_PARAMS", str(archbench.param_count("mlp", "tiny") + 1))
    assert pytorch_ab.main(["--torch-python", str(stand_in), *ARGV]) == 1
    assert "params differ" in capsys.readouterr().out
    assert [r["op"] for r in requests(tmp_path)] == ["prepare"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--torch-python", "/nonexistent/python"], "not an executable file"),
        (["--arch", "transformer"], "no PyTorch twin of 'transformer'; the twins: gpt"),
        (["--mode", "generate"], "unknown mode 'generate'"),
    ],
)
def test_bad_input_is_one_line(stand_in, capsys, argv, says):
    assert pytorch_ab.main(["--torch-python", str(stand_in), *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
