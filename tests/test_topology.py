"""--target-topology: compile for a TPU slice this host does not have (libtpu, no TPU).

`make test` puts libtpu beside the venv in .libtpu/ (make tpu-compiler); the compile test runs
archbench with it on PYTHONPATH, so no other test process loads libtpu.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from archbench.engine import aot

ROOT = Path(__file__).resolve().parents[1]
LIBTPU = ROOT / ".libtpu"


def archbench(*argv: str, libtpu: bool, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if libtpu and importlib.util.find_spec("libtpu") is None:
        env["PYTHONPATH"] = str(LIBTPU)
    code = "import sys; from archbench.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], env=env, cwd=cwd, capture_output=True, text=True
    )


def have_libtpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None or (LIBTPU / "libtpu").is_dir()


@pytest.mark.skipif(not have_libtpu(), reason="no libtpu: make tpu-compiler")
def test_gpt_small_compiles_for_v5e_2x2_under_dp_and_fsdp(tmp_path):
    """Four TPU v5e devices from a CPU host: per-device memory, fit, collectives and FLOPs.

    Checked against what the strategies imply and against the same cell compiled for this
    host: dp's gradient all-reduce carries every parameter; fsdp splits the state (each
    device's arguments are about a quarter of dp's); the model's FLOPs do not depend on the
    target."""
    out, host = tmp_path / "tpu.json", tmp_path / "host.json"
    common = ["run", "--arch", "gpt", "--size", "small", "--mode", "train", "--batch", "8"]
    proc = archbench(
        *common, "--sharding", "dp,fsdp", "--target-topology", "v5e:2x2", "--out", str(out),
        libtpu=True, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the header names the target, not the host that compiles for it
    (header,) = [x for x in proc.stderr.splitlines() if x.endswith(f" -> {out}")]
    assert header.startswith("archbench: 2 cell(s) "), header
    assert "for v5e:2x2 (4 TPU v5 lite devices), compiled on this cpu host" in header, header
    proc = archbench(*common, "--compile-only", "--out", str(host), libtpu=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        r["extra_info"]["sharding"]: r["extra_info"]
        for r in json.loads(out.read_text())["benchmarks"]
    }
    (here,) = [r["extra_info"] for r in json.loads(host.read_text())["benchmarks"]]
    dp, fsdp = rows["dp"], rows["fsdp"]
    for r in (dp, fsdp):
        assert r["status"] == "compiled", r["error"]
        assert (r["backend"], r["device_kind"], r["devices"]) == ("tpu", "TPU v5 lite", 4)
        assert r["target_topology"] == "v5e:2x2"
        assert r["device_memory_bytes"] == aot.DEVICE_MEMORY["v5e"]  # the chip's, by default
        assert r["fits"] is True
        assert r["flops_per_step"] == pytest.approx(here["flops_per_step"], rel=0.01)
        # the roofline of one chip of the slice, from the TPU compiler's per-chip counts, on
        # v5e's datasheet roofs: every strategy communicates, and nothing ran
        assert r["device_flops_per_step"] >= r["flops_per_step"] / 4
        for roof in ("compute", "memory", "comm"):
            assert r[f"{roof}_bound_s"] > 0, roof
        assert r["comm_bound_s"] == pytest.approx(r["collective_bytes"] / 400e9)
        assert r["bandwidth_source"] == r["interconnect_source"] == r["peak_source"] == "datasheet"
        assert r["compute_bound_s"] == pytest.approx(r["device_flops_per_step"] / 197e12)
        assert r["binding_roof"] and r["roofline_efficiency"] is None
    # parameters and Adam's two moments, float32 (TPU tiles pad small arrays: not at this size)
    state = 3 * 4 * dp["params"]
    assert dp["argument_bytes"] == pytest.approx(state, rel=0.1)
    # a quarter, plus what TPU tiles pad (a (128,) vector split four ways still fills a tile)
    assert fsdp["argument_bytes"] < 0.5 * dp["argument_bytes"]
    # every gradient once; XLA reduces the tied embedding's two parts (gather, head) apart
    assert 4 * dp["params"] <= dp["collectives"]["all-reduce"]["bytes"] <= 1.3 * 4 * dp["params"]
    assert fsdp["collectives"].get("all-gather", {}).get("count", 0) > 0


@pytest.mark.parametrize(
    ("argv", "libtpu", "expect"),
    [
        (["--target-topology", "v5e:2x2"], False, "archbench[tpu]"),
        (["--target-topology", "v5e-2x2"], False, "expected GENERATION:SHAPE"),
        (["--target-topology", "v5e:2x2", "--devices", "8"], True, "only 4 TPU device(s)"),
    ],
)
def test_bad_target_topology_is_one_line_and_exit_2(argv, libtpu, expect, tmp_path):
    if libtpu and not have_libtpu():
        pytest.skip("no libtpu: make tpu-compiler")
    if not libtpu and importlib.util.find_spec("libtpu") is not None:
        pytest.skip("libtpu is installed in this environment")
    out = tmp_path / "r.json"
    proc = archbench(
        "run", "--arch", "mlp", "--size", "tiny", "--out", str(out), *argv,
        libtpu=libtpu, cwd=tmp_path,
    )  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if line.startswith("archbench: error")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(errors) == 1 and expect in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not out.exists()
