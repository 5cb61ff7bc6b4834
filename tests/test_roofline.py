"""The roofline: three lower bounds on a step's time, and their projection onto accelerators
it did not run on (archbench.engine.roofline, archbench.report.roofline)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import archbench
from archbench.cli.main import main
from archbench.engine import analysis, measure, peaks, roofline
from archbench.report import roofline as report_roofline
from tests.test_compare import make_row, write_results


def test_a_large_matmul_is_bound_by_its_flops_over_the_peak():
    """XLA counts 2*M*N*K for a matmul, and on an H100 (ridge ~148 FLOP/B in TF32) a
    2048^3 float32 product (~340 FLOP/B) is compute bound: its bound is FLOPs / peak."""
    m, n, k = 2048, 1024, 4096
    a = jax.ShapeDtypeStruct((m, k), jnp.float32)
    b = jax.ShapeDtypeStruct((k, n), jnp.float32)
    flops, accessed = analysis.cost(jax.jit(jnp.matmul).lower(a, b).compile())
    assert flops == 2 * m * n * k
    assert accessed >= 4 * (m * k + k * n + m * n)  # both operands read, the product written
    roofs = roofline.datasheet_roofs("h100", "float32")
    assert roofs.flops_per_s == 494.7e12  # TF32 dense: float32 at the default precision
    found = roofline.bounds(flops, accessed, 0, 1, roofs)
    assert found["binding_roof"] == "compute"
    assert found["roofline_bound_s"] == pytest.approx(2 * m * n * k / 494.7e12, rel=0.05)
    assert found["memory_bound_s"] == pytest.approx(accessed / 3.35e12)
    assert found["arithmetic_intensity"] == pytest.approx(flops / accessed)
    assert found["roofline_serial_s"] == pytest.approx(
        found["compute_bound_s"] + found["memory_bound_s"]
    )


def test_bounds_of_host_simulated_devices_count_every_device_against_the_host():
    roofs = roofline.Roofs("host", 1e11, 1e10, 1e10, shared=True)
    found = roofline.bounds(1e9, 1e8, 2e8, 4, roofs)  # per device
    assert found["compute_bound_s"] == pytest.approx(4e9 / 1e11)
    assert found["comm_bound_s"] == pytest.approx(8e8 / 1e10)
    assert found["binding_roof"] == "communication"
    chips = roofline.bounds(1e9, 1e8, 1e8, 4, roofline.Roofs("chip", 1e11, 1e10, 1e10))
    assert chips["compute_bound_s"] == pytest.approx(1e9 / 1e11)
    # an unknown roof takes no part, but collectives with no interconnect figure leave it None
    v4 = roofline.bounds(1e9, 1e8, 1e8, 4, roofline.datasheet_roofs("v4", "bfloat16"))
    assert v4["comm_bound_s"] is None and v4["binding_roof"] in ("compute", "memory")


@pytest.mark.parametrize(
    ("kind", "gbps"),
    [("NVIDIA H100 80GB HBM3", 900), ("NVIDIA H100 PCIe", 600), ("NVIDIA H200", 900),
     ("NVIDIA A100-SXM4-40GB", 600), ("TPU v5 lite", 400), ("TPU v5p", 1200),
     ("TPU v6 lite", 800), ("TPU v4", None), ("TPU v4 lite", "absent")],
)  # fmt: skip
def test_interconnect_table_is_bidirectional_per_chip(kind, gbps):
    found = peaks.interconnect_for(kind)
    if gbps == "absent":
        assert found is None
    else:
        assert found.gbps == gbps and found.source


def test_measured_cells_lie_under_their_roofs(lstm_infer):
    """On this CPU's measured roofs, a measured step never beats its bound: efficiency <= 1."""
    cell, prepared = lstm_infer
    records = [measure.summarize(cell, prepared, measure.time_rounds(prepared, rounds=5))]
    records.append(measure.measure_cell(measure.Cell("gpt", "tiny", "train", 8), rounds=5))
    for r in records:
        assert r["status"] == "ok", r["error"]
        assert 0 < r["roofline_bound_s"] <= r["step_time_s"], r["cell_id"]
        assert r["roofline_efficiency"] == pytest.approx(r["roofline_bound_s"] / r["step_time_s"])
        assert r["binding_roof"] in roofline.ROOFS and r["comm_bound_s"] == 0
        assert r["bandwidth_source"] == "measured-copy"
        assert r["interconnect_source"] == "host-memory"
        assert r["peak_bandwidth_bytes_per_s"] == r["interconnect_bytes_per_s"]
        compute = r["device_flops_per_step"] / (r["peak_tflops"] * 1e12)
        assert r["compute_bound_s"] == pytest.approx(compute)


def projected_file(tmp_path):
    rows = [make_row("mlp", flops_per_step=2e9, bytes_per_step=1e8),
            make_row("mlp", mode="infer", flops_per_step=1e11, bytes_per_step=1e8)]  # fmt: skip
    return write_results(tmp_path / "r.json", rows)


def test_projection_is_a_bound_never_a_measured_time(tmp_path):
    frame = archbench.roofline(projected_file(tmp_path), "h100,v5e")
    assert list(frame["accelerator"]) == ["h100", "v5e"] * 2
    assert set(frame["basis"]) == {report_roofline.PROJECTED}
    assert frame["step_time_s"].isna().all() and frame["roofline_efficiency"].isna().all()
    train, infer = frame[frame["accelerator"] == "v5e"].to_dict("records")
    assert train["binding_roof"] == "memory"  # 20 FLOP/B, under v5e's ridge of 240
    assert train["roofline_bound_s"] == pytest.approx(1e8 / 0.819e12)
    assert infer["binding_roof"] == "compute"  # 1,000 FLOP/B: float32 on the bf16 MXU
    assert infer["roofline_bound_s"] == pytest.approx(1e11 / 197e12)


def test_report_draws_the_roofline_and_tables(tmp_path, capsys):
    path, html = projected_file(tmp_path), tmp_path / "r.html"
    assert main(["report", path, "--roofline", "v5e", "--table", "-o", str(html)]) == 0
    out = capsys.readouterr().out
    assert out.count("bound, not measured") == 2
    text = html.read_text()
    assert 'id="roofline"' in text and "bound on v5e (not measured)" in text
    assert '<img alt="Roofline"' in text
    figure = archbench.plot(path, "roofline", roofline="h100")
    assert len([a for a in figure.axes if a.get_visible()]) == 1


@pytest.mark.parametrize("argv", [["--roofline", "h1000"], ["--roofline", ","]])
def test_unknown_accelerator_is_one_line_naming_the_known_ones(tmp_path, capsys, argv):
    path = projected_file(tmp_path)
    assert main(["report", path, *argv, "--table"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert "unknown accelerator" in line and "h100, h100-pcie" in line and "v5e" in line
    with pytest.raises(archbench.UserError, match="the known ones"):
        archbench.roofline(path, "tpu9")
