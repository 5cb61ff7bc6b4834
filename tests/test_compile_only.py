"""--compile-only: cells compiled from shapes alone, their per-device memory, and the fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from archbench import units
from archbench.archs import UserError
from archbench.cli.main import main
from archbench.engine import aot
from archbench.engine.cell import Cell
from archbench.matrix import results
from tests import xla_flags

GPT_BASE_FSDP = """
import json
from archbench import archs
from archbench.engine.aot import compile_only
from archbench.engine.cell import Cell
cell = Cell("gpt", "base", "train", 8, "float32", 8, seq_len=128, sharding="fsdp")
r = compile_only(cell, 80 * 2**30)
keys = ("status", "error", "argument_bytes", "fits", "collectives")
print(json.dumps({**{k: r[k] for k in keys}, "params": archs.param_count("gpt", "base")}))
"""


@pytest.mark.slow
def test_gpt_base_fsdp_on_eight_devices_compiles_with_an_eighth_of_the_state_per_device():
    """GPT-2 base (124M) train under fsdp on 8 simulated devices, compiled without running:
    each device's arguments are about one eighth of the parameters and Adam's two moments,
    and the activations stay split by batch: the step all-reduces at most the gradients
    (without the constraint, XLA all-reduced activations too: 584 MB against 498 MB)."""
    env = {**os.environ, "XLA_FLAGS": xla_flags.with_devices(8)}
    proc = subprocess.run(
        [sys.executable, "-c", GPT_BASE_FSDP], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["status"] == "compiled", r["error"]
    expected = r["params"] * 3 * 4 / 8  # params + Adam mu + nu, float32, over 8 devices
    assert r["argument_bytes"] == pytest.approx(expected, rel=0.15)
    assert r["fits"] is True
    assert r["collectives"]["all-reduce"]["bytes"] <= r["params"] * 4  # float32 gradients


@pytest.mark.parametrize(
    ("text", "value"),
    [("80GiB", 80 * 2**30), ("16 GB", 16 * 10**9), ("1e9", 10**9), ("512MiB", 2**29),
     ("h100", 80 * 10**9), ("V5E", 16 * 2**30)],
)  # fmt: skip
def test_device_memory_sizes_and_names(text, value):
    assert aot.parse_memory(text) == value


@pytest.mark.parametrize("text", ["80 parsecs", "-1GB", "0", "h900", "1e309", "1e400GiB"])
def test_bad_device_memory_is_a_one_line_error(text):  # 1e309 is a float's infinity
    with pytest.raises(UserError, match="--device-memory"):
        aot.parse_memory(text)


def test_device_memory_without_compile_only_is_a_one_line_error(tmp_path, capsys):
    argv = ["run", "--arch", "mlp", "--size", "tiny", "--device-memory", "80GiB"]
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    assert "add --compile-only" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_run_compile_only_records_memory_and_fit_and_resumes(tmp_path, capsys):
    out = tmp_path / "aot.json"
    argv = ["run", "--arch", "mlp", "--size", "small", "--mode", "train", "--batch", "8"]
    argv += ["--compile-only", "--out", str(out)]
    assert main([*argv, "--device-memory", "1MiB"]) == 0
    (row,) = results.flat_rows([out])
    assert row["status"] == "compiled" and row["step_time_s"] is None
    assert row["argument_bytes"] > 669_706 * 3 * 4  # params and two Adam moments, float32
    assert row["compiled_bytes"] > 2**20 and row["fits"] is False
    # its roofline on this host's roofs, from the compiled step's counts; nothing ran
    assert row["roofline_bound_s"] == max(row[f"{k}_bound_s"] for k in ("compute", "memory"))
    assert row["binding_roof"] in ("compute", "memory") and row["comm_bound_s"] == 0
    assert row["roofline_efficiency"] is None and row["peak_source"] == "measured-matmul"
    err = capsys.readouterr().err
    # the cell's own progress line says it does not fit, not only the final count
    (line,) = [x for x in err.splitlines() if x.startswith("archbench 1/1 ")]
    assert "compiled" in line and f"does not fit {units.nbytes(2**20)}" in line, err
    assert "1 compiled only (0 of 1 fit the device memory)" in err
    assert main([*argv, "--resume"]) == 0  # a compiled cell is done: nothing runs again
    assert "already in" in capsys.readouterr().err


def test_batch_auto_compile_only_finds_the_largest_batch_that_fits(tmp_path, capsys):
    cell = Cell("mlp", "small", "infer", 1, "float32")
    memory = aot.compile_only(Cell("mlp", "small", "infer", 64, "float32"))["compiled_bytes"]
    batch = aot.largest_batch_that_fits(cell, memory, limit=1024)
    assert batch == 64  # compiled bytes grow with the batch: 64 is the last that fits
    out = tmp_path / "auto.json"
    argv = ["run", "--arch", "mlp", "--size", "small", "--mode", "infer", "--batch", "auto"]
    assert main([*argv, "--compile-only", "--device-memory", str(memory), "--out", str(out)]) == 0
    (row,) = results.flat_rows([out])
    assert row["batch"] == 64 and row["fits"] is True and row["batch_request"] == "auto"
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("archbench 1/1 ")]
    assert f"fits {units.nbytes(memory)}" in line and "not" not in line, line
