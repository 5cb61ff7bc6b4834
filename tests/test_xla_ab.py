"""Sets of XLA options A-B-A (archbench.checks.xla_ab): each set in a process of its own,
computing on the first set's parameters and batch, outputs compared."""

from __future__ import annotations

import json

import pytest

from archbench.checks import xla_ab
from archbench.engine import xla_options


def test_each_set_runs_in_its_own_process_on_the_same_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    out = tmp_path / "ab.json"
    argv = ["--arch", "mlp", "--size", "tiny", "--mode", "infer", "--batch", "2"]
    argv += ["--sets", "none,cpu-no-ynn", "--repeats", "2", "--target-s", "0.01"]
    assert xla_ab.main([*argv, "--json", str(out)]) == 0
    first, other = json.loads(out.read_text())["rows"]
    assert (first["set"], other["set"]) == ("none", "cpu-no-ynn")
    # what each process had in force: its set's options, then the user's own
    assert first["xla_flags"] == "--xla_cpu_enable_fast_math=false"
    no_ynn = xla_options.SETS["cpu-no-ynn"].options["cpu"][0]
    assert other["xla_flags"] == f"{no_ynn} --xla_cpu_enable_fast_math=false"
    assert other["max_diff"] <= xla_ab.TOLERANCE  # same function, other kernels
    assert len(first["blocks"]) == 3 and len(other["blocks"]) == 2
    b = first["blocks"]
    expected = [other["blocks"][i] / ((b[i] + b[i + 1]) / 2) for i in range(2)]
    assert other["ratios"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--arch", "mlp", "--sets", "default,fast"], "unknown xla_options 'fast'; valid: none"),
        (["--arch", "nope"], "unknown architecture 'nope'"),
        (["--arch", "mlp", "--mode", "generate"], "train and infer only"),
        (["--sets", "none"], "--arch: give one or more"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, says):
    assert xla_ab.main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
