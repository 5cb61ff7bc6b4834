"""The measurement core: result keys, failures, validation, batch search, peaks, devices.

No assertion here is about speed: timings on a shared machine are noise. Budgets are tiny.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from archbench import archs
from archbench.archs.inputs import InputSpec
from archbench.archs.registry import ArchSpec, Size
from archbench.checks import harness as check_harness
from archbench.engine import autobatch, measure, peaks
from archbench.engine.measure import Cell
from tests import xla_flags

ROOT = Path(__file__).resolve().parents[1]
FAST = {"target_s": 0.2, "min_round_s": 0.01, "warmup": 1}


@pytest.fixture(scope="module", params=["train", "infer"])
def tiny_result(request):
    cell = Cell("mlp", "tiny", request.param, 8, "float32")
    return cell, measure.measure_cell(cell, **FAST)


def test_measured_cell_has_every_key_with_sane_values(tiny_result):
    cell, r = tiny_result
    assert tuple(r) == measure.RESULT_KEYS
    json.dumps(r)  # flat and serialisable
    assert r["status"] == "ok" and r["error"] is None
    assert (r["cell_id"], r["arch"], r["mode"], r["batch"]) == (cell.id, "mlp", cell.mode, 8)
    assert r["params"] == archs.param_count("mlp", "tiny")
    assert r["family"] == "MLP" and r["task"] == "classify" and r["input"] == "image 28x28x1"
    assert r["optimizer"] == ("adamw" if cell.mode == "train" else None)
    for key in ("step_time_s", "step_time_iqr_s", "step_time_min_s", "lower_s", "compile_s"):
        assert isinstance(r[key], float) and r[key] >= 0, key
    assert r["step_time_min_s"] <= r["step_time_s"]
    assert 5 <= r["rounds"] <= 50 and r["steps_per_round"] >= 1
    assert r["samples_per_s"] == pytest.approx(8 / r["step_time_s"])
    assert r["tokens_per_s"] is None and r["tokens_per_example"] is None  # images
    assert r["flops_per_step"] > 0 and r["bytes_per_step"] > 0 and r["flops_source"] == "xla"
    assert r["tflops_per_s"] == pytest.approx(r["flops_per_step"] / r["step_time_s"] / 1e12)
    assert r["peak_source"] == "measured-matmul" and r["peak_tflops"] > 0  # CPU: no datasheet
    assert r["mfu"] == pytest.approx(r["tflops_per_s"] / r["peak_tflops"])
    assert r["compile_cache"] in ("miss", "hit")  # the test run's cache (tests/conftest.py)
    memory = r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] - r["alias_bytes"]
    assert r["compiled_bytes"] == memory > 0
    if cell.mode == "train":  # the donated state aliases the new one
        assert r["alias_bytes"] > 0
    assert r["peak_bytes"] is None and r["peak_bytes_source"] == "host-rss"
    assert r["host_peak_rss_bytes"] > 0 and isinstance(r["peak_bytes_set_by_cell"], bool)
    assert r["batch_sharding"] == "P('data',)" and r["batch_per_device"] == 8


COMPILE_TWICE = textwrap.dedent(
    """
    import jax
    from archbench.engine.cell import Cell
    from archbench.engine.program import compile_cell

    cell = Cell("mlp", "tiny", "infer", 8, "float32")
    print(*(compile_cell(cell, jax.devices()[:1])[2]["compile_cache"] for _ in range(2)))
    """
)


def test_compile_cache_says_whether_the_step_was_compiled_or_loaded(tmp_path):
    # Without JAX's persistent cache compile_s is XLA's compile; with it, the second process
    # of the same step loads it, and the record says so.
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", COMPILE_TWICE], env=env, capture_output=True, text=True
    )
    off = run(env)
    assert off.returncode == 0, off.stderr[-2000:]
    assert off.stdout.split() == ["disabled", "disabled"]
    cached = {
        **env,
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    on = run(cached)
    assert on.returncode == 0, on.stderr[-2000:]
    assert on.stdout.split() == ["miss", "hit"]


def test_summarize_turns_round_times_into_step_statistics(lstm_infer):
    cell, prepared = lstm_infer
    prepared.steps_per_round = 2
    r = measure.summarize(cell, prepared, [0.4, 0.2, 0.6, 0.8, 1.0])  # steps 0.1 .. 0.5 s
    assert tuple(r) == measure.RESULT_KEYS
    assert r["step_time_s"] == pytest.approx(0.3)
    assert r["step_time_iqr_s"] == pytest.approx(0.2)
    assert r["step_time_min_s"] == pytest.approx(0.1)
    assert r["rounds"] == 5 and r["steps_per_round"] == 2
    assert r["seq_len"] == 8 and r["tokens_per_example"] == 8 and r["input"] == "sequence 8x28"
    assert r["tokens_per_s"] == pytest.approx(16 * 8 / 0.3)
    assert r["flops_source"] == "xla-unrolled"


def test_prepared_run_round_runs_steps_per_round_train_steps():
    prepared = measure.prepare(Cell("mlp", "tiny", "train", 4, "float32"))
    assert prepared.calibrate(min_round_s=0.0, warmup=2) == 1
    prepared.steps_per_round = 3
    prepared.run_round()
    assert int(prepared.state.step) == 2 + 1 + 3  # warm-up, calibration, round


# ---- failures ---------------------------------------------------------------------------------


class Broken(nn.Module):
    """A model that raises when called."""

    message: str = "boom"
    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train=False):
        raise RuntimeError(self.message)


@pytest.fixture
def broken(monkeypatch):
    def register(message):
        size = Size({"message": message}, InputSpec("image", (4, 4, 1)))
        spec = ArchSpec("broken", "Broken", Broken, "classify", {"tiny": size, "small": size})
        monkeypatch.setitem(archs.registry._REGISTRY, "broken", spec)

    return register


@pytest.mark.parametrize(
    "message, status",
    [
        ("shape mismatch\nsecond line", "error"),
        ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 17179869184 bytes.", "oom"),
    ],
)
def test_failing_model_gives_a_status_not_an_exception(broken, message, status):
    broken(message)
    r = measure.measure_cell(Cell("broken", "tiny", "train", 2, "float32"), **FAST)
    assert tuple(r) == measure.RESULT_KEYS
    assert r["status"] == status
    assert r["error"].startswith("RuntimeError: ") and "\n" not in r["error"]
    assert r["step_time_s"] is None and r["arch"] == "broken" and r["params"] is None


@pytest.mark.parametrize(
    "exc, oom",
    [
        (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1.5GiB on device"), True),
        (RuntimeError("INTERNAL: Failed to allocate: resource exhausted"), True),
        (RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory"), True),
        (MemoryError(), True),
        (ValueError("INVALID_ARGUMENT: shapes (3,) and (4,)"), False),
    ],
)
def test_oom_is_classified_from_the_exception(exc, oom):
    assert measure.is_oom(exc) is oom


# ---- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell, words",
    [
        (Cell("nope", "tiny", "train", 8, "float32"), ["architecture", "mlp"]),
        (Cell("mlp", "huge", "train", 8, "float32"), ["size", "tiny", "small"]),
        (Cell("mlp", "tiny", "eval", 8, "float32"), ["mode", "train", "infer"]),
        (Cell("mlp", "tiny", "train", 8, "float64"), ["dtype", "float32", "bfloat16"]),
        (Cell("mlp", "tiny", "train", 0, "float32"), ["batch", "positive"]),
        (Cell("mlp", "tiny", "train", -4, "float32"), ["batch", "positive"]),
        (Cell("mlp", "tiny", "train", 8, "float32", devices=0), ["devices"]),
        (Cell("mlp", "tiny", "train", 8, "float32", devices=10_000), ["devices", "XLA_FLAGS"]),
        (Cell("mlp", "tiny", "train", 8, "float32", seq_len=16), ["seq_len", "image"]),
        (Cell("lstm", "tiny", "train", 8, "float32", seq_len=0), ["seq_len", "positive"]),
    ],
)
def test_validate_rejects_bad_cells_in_one_line(cell, words):
    with pytest.raises(archs.UserError) as info:
        measure.validate(cell)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    with pytest.raises(archs.UserError):  # measure_cell raises user errors before measuring
        measure.measure_cell(cell)


def test_validate_rejects_a_batch_that_devices_do_not_divide(monkeypatch):
    monkeypatch.setattr(jax, "devices", lambda *a: ["d0", "d1", "d2", "d3"])
    with pytest.raises(archs.UserError, match="not divisible by the 4 batch shards"):
        measure.validate(Cell("mlp", "tiny", "train", 6, "float32", devices=4))


def test_cell_id_is_stable_and_parses_back():
    cell = Cell("lstm", "small", "infer", 32, "bfloat16", devices=2, seq_len=256)
    assert cell.id == "lstm-small-infer-b32-bfloat16-d2-t256"
    assert Cell("mlp", "small", "train", 32, "float32").id == "mlp-small-train-b32-float32-d1"
    assert measure.from_id(cell.id) == cell
    assert measure.from_id("mlp-small-train-b32-float32") == Cell(
        "mlp", "small", "train", 32, "float32"
    )
    for bad in ("mlp-small-train", "mlp-small-train-32-float32", "mlp-small-train-b32-float32-q1"):
        with pytest.raises(archs.UserError, match="expected ARCH-SIZE-MODE"):
            measure.from_id(bad)


# ---- batch search, scaling, peaks, machine ----------------------------------------------------


class _FakePrepared:
    def step(self):
        return jnp.zeros(())


@pytest.mark.parametrize(
    "fails_at, failure, start, limit, expected",
    [
        (128, "RESOURCE_EXHAUSTED: out of memory", 1, 4096, 64),
        (128, "RESOURCE_EXHAUSTED: out of memory", 512, 4096, 64),  # backs off
        (128, "RESOURCE_EXHAUSTED: out of memory", 1, 16, 16),
        (8, "INVALID_ARGUMENT: broken", 1, 4096, 4),  # stops at a non-memory error
        (8, "INVALID_ARGUMENT: broken", 32, 4096, 32),
    ],
)
def test_find_max_batch_doubles_and_backs_off(
    monkeypatch, fails_at, failure, start, limit, expected
):
    def fake_prepare(plan):
        if plan.cell.batch >= fails_at:
            raise RuntimeError(failure)
        return _FakePrepared()

    monkeypatch.setattr(measure, "prepare", fake_prepare)
    cell = Cell("mlp", "tiny", "train", 1, "float32")
    assert autobatch.find_max_batch(cell, start=start, limit=limit) == expected


def test_scaling_efficiency_strong_and_weak():
    assert measure.scaling_efficiency(1.0, 0.25, 4, same_global_batch=True) == pytest.approx(1.0)
    assert measure.scaling_efficiency(1.0, 0.5, 4, same_global_batch=True) == pytest.approx(0.5)
    assert measure.scaling_efficiency(1.0, 1.25, 4, same_global_batch=False) == pytest.approx(0.8)


@pytest.mark.parametrize(
    "kind, name",
    [
        ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM5"),
        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
        ("NVIDIA H200", "NVIDIA H200 SXM"),
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100"),
        ("TPU v4", "TPU v4"),
        ("TPU v5 lite", "TPU v5e"),
        ("TPU v5", "TPU v5p"),
        ("TPU v6 lite", "TPU v6e"),
        ("TPU v4 lite", None),
        ("cpu", None),
    ],
)
def test_datasheet_lookup_by_device_kind(kind, name):
    sheet = peaks.datasheet_for(kind)
    assert (sheet.name if sheet else None) == name


def test_datasheet_float32_peak_follows_matmul_precision():
    h100 = peaks.datasheet_for("NVIDIA H100 80GB HBM3")
    assert peaks.datasheet_peak(h100, "bfloat16")[0] == 989.4
    assert peaks.datasheet_peak(h100, "float32")[0] == 494.7  # TF32 by default
    with jax.default_matmul_precision("highest"):
        assert peaks.datasheet_peak(h100, "float32")[0] == 66.9
    assert peaks.datasheet_peak(peaks.datasheet_for("TPU v5 lite"), "float32")[0] == 197.0


def test_measured_peaks_are_kept_for_the_next_process_with_the_same_options(tmp_path, monkeypatch):
    """A figure measured once is read back by a process with the same key, and only then."""
    kept = tmp_path / "peaks.json"
    monkeypatch.setenv(peaks.PEAKS_FILE, str(kept))
    device = jax.devices()[0]
    calls = []

    def measure():
        calls.append(1)
        return 1.5, "measured here"

    assert peaks._shared("matmul float32", device, measure) == (1.5, "measured here")
    figure, basis = peaks._shared("matmul float32", device, measure)  # as a later process
    assert (figure, len(calls)) == (1.5, 1) and "earlier process" in basis
    # other XLA options compile other kernels: measured again, and both kept
    monkeypatch.setenv(
        "XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_fast_math=true"
    )
    assert peaks._shared("matmul float32", device, measure)[1] == "measured here"
    assert len(calls) == 2 and len(json.loads(kept.read_text())) == 2
    # a process pinned to fewer CPUs runs XLA on fewer threads: measured again
    monkeypatch.setattr(peaks.xla_options, "cpus", lambda: 1_000)
    assert peaks._shared("matmul float32", device, measure)[1] == "measured here"
    monkeypatch.undo()  # the options and the file as they were, then the damaged-file cases
    monkeypatch.setenv(peaks.PEAKS_FILE, str(kept))
    kept.write_text("not json")  # a damaged file is measured over, never an error
    assert peaks._shared("matmul float32", device, measure)[1] == "measured here"
    monkeypatch.setenv(peaks.PEAKS_FILE, str(tmp_path / "gone" / "peaks.json"))
    assert peaks._shared("matmul float32", device, measure) == (1.5, "measured here")
    monkeypatch.delenv(peaks.PEAKS_FILE)  # no file: every process measures
    assert peaks._shared("matmul float32", device, measure)[1] == "measured here"
    assert len(calls) == 6


def test_device_info_describes_the_machine():
    info = measure.device_info()
    assert info["backend"] == jax.default_backend() and info["device_count"] >= 1
    assert info["process_count"] == 1 and info["jax"] == jax.__version__
    assert {"jaxlib", "flax", "optax", "cpu", "device_kind"} <= set(info)


def test_check_harness_rejects_bad_cells(capsys):
    assert check_harness.main(["--cells", "mlp-tiny-eval-b8-float32"]) == 2
    assert check_harness.main(["--cells", "mlp-tiny"]) == 2
    assert capsys.readouterr().err.count("check_harness: error:") == 2


@pytest.mark.parametrize(
    "argv",
    [["--tolerance", "nan"], ["--tolerance", "inf"], ["--target-s", "nan"], ["--target-s", "inf"],
     ["--target-s", "0"], ["--repeats", "0"]],
)  # fmt: skip
def test_check_harness_refuses_non_finite_and_empty_budgets(argv, capsys):
    """--tolerance nan failed every cell ("outside nan%") and inf would pass any; a budget of
    nan, inf or 0 seconds, or no repeats, was taken too: each is a one-line error now."""
    assert check_harness.main(["--cells", "mlp-tiny-infer-b8-float32", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("check_harness: error: ") and err.count("\n") == 1, err
    assert argv[0] in err


# ---- several devices --------------------------------------------------------------------------

MULTI_DEVICE = textwrap.dedent(
    """
    import json, jax, numpy as np
    from archbench.engine.measure import Cell, prepare, summarize, time_rounds
    one, eight = (Cell("mlp", "tiny", "train", 32, "float32", devices=d) for d in (1, 8))
    p1, p8 = prepare(one), prepare(eight)
    x = p8.inputs["x"]
    m1, m8 = p1.step(), p8.step()  # one step each from the same state and batch
    # Adam's first update is about lr * sign(g): gradients near 0 summed in another order may
    # move a weight differently, by a small fraction of lr = 1e-3.
    out = {
        "devices": len(jax.devices()),
        "shard_devices": sorted(s.device.id for s in x.addressable_shards),
        "shard_shapes": sorted({s.data.shape for s in x.addressable_shards}),
        "params_replicated": all(
            p.sharding.is_fully_replicated for p in jax.tree.leaves(p8.state.params)),
        "metrics": {k: [float(m1[k]), float(m8[k])] for k in m1},
        "params_close": all(np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(
            jax.tree.leaves(p1.state.params), jax.tree.leaves(p8.state.params))),
    }
    for cell, prepared in ((one, p1), (eight, p8)):  # measure_cell's steps on these cells
        prepared.calibrate(min_round_s=0.005, warmup=1)
        times = time_rounds(prepared, rounds=5)
        out.setdefault("results", []).append(summarize(cell, prepared, times))
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_data_parallel_step_matches_one_device_on_eight_cpu_devices():
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags.with_devices(8),
    }
    proc = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    assert out["shard_devices"] == list(range(8)) and out["shard_shapes"] == [[4, 28, 28, 1]]
    assert out["params_replicated"] and out["params_close"]
    for name, (single, parallel) in out["metrics"].items():
        assert parallel == pytest.approx(single, rel=1e-5, abs=1e-6), name
    r1, r8 = out["results"]
    assert r1["status"] == r8["status"] == "ok", (r1["error"], r8["error"])
    assert r8["devices"] == 8 and r8["batch_per_device"] == 4
    assert r8["flops_per_step"] == pytest.approx(r1["flops_per_step"], rel=0.01)  # global count
    assert math.isfinite(measure.scaling_efficiency(r1["step_time_s"], r8["step_time_s"], 8, True))
