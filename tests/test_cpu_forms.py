"""archbench.checks.cpu_forms: the measurements behind archs/_matmul.py and first_argmax."""

from __future__ import annotations

import json

from archbench.checks import cpu_forms


def test_small_run_reports_each_form_and_the_slow_dots(tmp_path, capsys):
    out = tmp_path / "forms.json"
    argv = ["--tokens", "64", "--conv-batch", "2", "--repeats", "1", "--json", str(out)]
    assert cpu_forms.main(argv) == 0
    tables = json.loads(out.read_text())
    forms = {row["contracting"]: row for row in tables["dot_forms"]}
    assert set(forms) == {"0 and 0", "0 and 1", "1 and 1", "1 and 0"}
    assert all(row["ms"] > 0 for row in forms.values())
    slow = [row["slow-form dots"] for row in tables["model_gradients"]]
    # 3-D inputs put the plain product's weight gradients in the slow form; _matmul does not
    assert slow[1] > 0 and slow[2] == 0, slow
    assert {row["agree"] for row in tables["argmax"]} == {"yes"}
    convs = tables["convolutions"]  # each first convolution as nn.Conv and as im2col, agreeing
    assert [(row["impl"], row["agree"]) for row in convs] == [("xla", "yes"), ("im2col", "yes")] * 3
    assert all(row["forward ms"] > 0 and row["gradient ms"] > 0 for row in convs)
    assert "dot_forms" in capsys.readouterr().out


def test_bad_sizes_are_one_line(capsys):
    assert cpu_forms.main(["--tokens", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "multiple of 32" in err
