"""The side-by-side variants check (`python -m archbench.checks.variants`)."""

from __future__ import annotations

import json

import flax.linen as nn
import pytest

from archbench import archs
from archbench.checks import variants

FAST = ["--size", "tiny", "--batch", "2", "--target-s", "0.02", "--min-round-s", "0.002"]


def test_times_every_declared_variant_and_checks_their_outputs(tmp_path, capsys):
    out = tmp_path / "v.json"
    argv = ["--arch", "mamba", "--mode", "infer", "--repeats", "2", *FAST, "--json", str(out)]
    assert variants.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[1]: line for line in lines[3:]}
    assert set(table) == {"default=scan", "assoc"}  # scan is Mamba's default: not timed twice
    assert "same" in table["assoc"]
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assoc = rows["assoc"]
    assert assoc["variant"] == "assoc" and rows["default=scan"]["variant"] is None
    assert len(assoc["ratios"]) == 2  # one paired ratio per A-B-A pass
    assert assoc["ratio"] == pytest.approx(sum(assoc["ratios"]) / 2)  # their median
    assert assoc["median_s"] > 0 and rows["default=scan"]["median_s"] > 0
    assert 0 <= assoc["max_diff"] <= assoc["tolerance"]
    assert rows["default=scan"]["max_diff"] == 0.0
    # The A-A control: the middle of the default's 3 blocks against the two around it.
    (control,) = rows["default=scan"]["ratios"]
    blocks = rows["default=scan"]["blocks_s"]
    assert control == pytest.approx(blocks[1] / ((blocks[0] + blocks[2]) / 2))
    assert rows["default=scan"]["ratio"] == 1.0


def test_a_variant_that_computes_another_function_fails(monkeypatch, capsys):
    # Same parameters, different outputs: tanh instead of ReLU (an MLP compiles in a blink).
    monkeypatch.setitem(archs.get("mlp").variants, "wrong", {"act": nn.tanh})
    argv = ["--arch", "mlp", "--mode", "infer", "--variants", "wrong", "--repeats", "1", *FAST]
    assert variants.main(argv) == 1
    wrong = next(line for line in capsys.readouterr().out.splitlines() if " wrong " in line)
    assert "mismatch" in wrong and "DIFFERENT" in wrong


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--arch", "mamba", "--variants", "fused"], "unknown variant 'fused'"),
        (["--arch", "mamba", "--mode", "generate"], "mode"),
        (["--arch", "nosuch"], "nosuch"),
        (["--arch", "mlp", "--target-s", "nan"], "--target-s"),  # nan passed `<= 0`
        (["--arch", "mlp", "--target-s", "inf"], "--target-s"),
        (["--arch", "mlp", "--min-round-s", "inf"], "--min-round-s"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, expect, capsys):
    assert variants.main(argv) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1
