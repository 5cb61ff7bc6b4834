"""A results file written before the house (archbench 0.1.0's layout, jax 0.10.2) still loads.

tests/fixtures/results-v0.1-jax0.10.json was written by `archbench run --arch mlp,gpt --size
tiny --batch 8 --target-s 0.1` at commit 167daca, under the old pins (Python 3.11, jax 0.10.2).
"""

from __future__ import annotations

import json
from pathlib import Path

from archbench.cli.main import main
from archbench.matrix import results
from archbench.report import roofline

OLD = Path(__file__).parent / "fixtures" / "results-v0.1-jax0.10.json"


def test_old_file_flattens_and_reports(tmp_path):
    rows = results.flat_rows([OLD])
    assert sorted(r["cell_id"] for r in rows) == sorted(
        f"{a}-tiny-{m}-b8-float32-d1" for a in ("mlp", "gpt") for m in ("train", "infer")
    )
    assert {r["status"] for r in rows} == {"ok"}
    # archbench then set no XLA option: its rows read as the default set (that set today)
    assert {r["xla_options"] for r in rows} == {"default"}
    html, csv = tmp_path / "r.html", tmp_path / "r.csv"
    argv = ["report", str(OLD), "-o", str(html), "--csv", str(csv), "--roofline", "h100"]
    assert main(argv) == 0
    text = html.read_text()
    assert "gpt" in text and "mlp" in text and "0.10.2" in text
    # no bandwidth recorded: no roofline of its own, but bounds on an H100 from its counts
    found = roofline.entries(rows, ["h100"])
    assert [e["basis"] for e in found] == [roofline.PROJECTED] * len(rows)
    assert all(e["roofline_bound_s"] > 0 and e["step_time_s"] is None for e in found)
    assert 'id="roofline"' in text and "bound on h100 (not measured)" in text
    assert len(csv.read_text().splitlines()) == 1 + len(rows)


def test_old_file_compares_with_a_new_run_and_counts_agree(tmp_path, capsys):
    """The same cells measured now: same parameters and FLOPs as under jax 0.10.2."""
    new = tmp_path / "new.json"
    argv = ["run", "--arch", "mlp,gpt", "--size", "tiny", "--batch", "8", "--mode", "infer"]
    assert main([*argv, "--target-s", "0.1", "--out", str(new)]) == 0
    capsys.readouterr()
    assert main(["compare", str(OLD), str(new)]) == 0
    out = capsys.readouterr().out
    assert "not compared: 2 cells only in BASE, 0 only in NEW" in out
    old = {r["cell_id"]: r for r in results.flat_rows([OLD])}
    for row in results.flat_rows([new]):
        before = old[row["cell_id"]]
        assert row["params"] == before["params"], row["cell_id"]
        assert row["flops_per_step"] == before["flops_per_step"], row["cell_id"]
    assert json.loads(OLD.read_text())["archbench"]["schema"] == results.SCHEMA
