"""Implementation variants as a matrix axis (`--variant`): Mamba's two selective scans."""

from __future__ import annotations

import json

import pytest

import archbench
from archbench.archs import UserError
from archbench.cli.main import main
from archbench.engine.cell import Cell, build, from_id
from archbench.matrix import cells


def test_variants_apply_to_the_families_that_declare_them():
    requests = cells.select(arch="mamba,mlp", size="tiny", mode="train", variant="assoc,scan")
    got = sorted((r.arch, r.variant) for r in requests)
    assert got == [("mamba", "assoc"), ("mamba", "scan"), ("mlp", None)]
    for r in requests:
        assert from_id(r.id) == r  # the id carries the variant, and reads back
    assert {r.id for r in requests} >= {"mamba-tiny-train-b32-float32-d1-vassoc"}
    assert build(Cell("mamba", "tiny", "train", 8, "float32", variant="assoc")).scan == "assoc"
    assert build(Cell("mamba", "tiny", "train", 8, "float32")).scan == "scan"


@pytest.mark.parametrize(
    ("variant", "arch", "expect"),
    [("bogus", "mamba", "unknown variant 'bogus'"), ("assoc", "mlp", "none of the selected")],
)
def test_bad_variant_is_a_one_line_error(variant, arch, expect):
    with pytest.raises(UserError, match=expect):
        cells.select(arch=arch, size="tiny", variant=variant)
    with pytest.raises(UserError, match="variant"):
        archbench.measure(arch, "tiny", batch=4, variant="fused")


def test_run_times_each_variant_as_its_own_cell_and_reports_them(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["run", "--arch", "mamba", "--size", "tiny", "--mode", "infer", "--batch", "4"]
    argv += ["--variant", "scan,assoc", "--target-s", "0.2", "--out", str(out)]
    assert main(argv) == 0
    rows = {r["extra_info"]["variant"]: r for r in json.loads(out.read_text())["benchmarks"]}
    assert set(rows) == {"scan", "assoc"}
    scan, assoc = rows["scan"]["extra_info"], rows["assoc"]["extra_info"]
    assert scan["status"] == assoc["status"] == "ok"
    assert scan["params"] == assoc["params"]  # the same model, computed two ways
    assert all(r["stats"]["median"] > 0 for r in rows.values())  # each one timed
    capsys.readouterr()
    assert main(["report", str(out), "--table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "variant" in lines[0].split()
    assert {line.split()[6] for line in lines[2:]} == {"scan", "assoc"}
    md = tmp_path / "r.md"
    assert main(["report", str(out), "--md", str(md)]) == 0
    text = md.read_text()  # the main table: one row per variant, side by side
    assert "b=4 fp32 scan" in text and "b=4 fp32 assoc" in text


def test_report_series_keep_variants_apart():
    """A sweep (here over the batch) of two variants is two lines, not one line whose points
    mix them; the sharding table's one-device baseline is per variant too."""
    from archbench.report import plots, strategies

    rows = [
        {"run": "r", "arch": "mamba", "size": "tiny", "mode": "train", "batch": b,
         "dtype": "float32", "devices": 1, "seq_len": None, "sharding": "dp", "variant": v,
         "status": "ok", "step_time_s": t}
        for v, t in (("scan", 1.0), ("assoc", 2.0)) for b in (8, 16)
    ]  # fmt: skip
    series = plots._series(rows, "batch", "step_time_s")
    assert sorted(pts[0]["variant"] for pts in series.values()) == ["assoc", "scan"]
    assert all(len({p["variant"] for p in pts}) == 1 for pts in series.values())
    base = strategies.one_device_times([r for r in rows if r["batch"] == 8])
    assert sorted(base.values()) == [1.0, 2.0]
