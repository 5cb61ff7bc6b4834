"""Measuring one benchmark cell: compile ahead of time, read XLA's analyses, time steady steps.

Measuring a cell (archbench.engine.cell.Cell):
  1. build the module, its train state (optax.adamw(1e-3) for train) and a synthetic batch;
  2. lower and compile the step ahead of time, timing both (`lower_s`, `compile_s`) with the
     persistent compilation cache off and the step's in-process caches evicted, so neither is
     a cache hit; train mode compiles `train.steps.jit_train_step` itself, infer mode `predict`;
  3. read FLOPs and bytes from XLA's cost analysis (recurrent models re-lowered unrolled, as
     XLA counts a loop body once) and the compiled footprint from its memory analysis
     (steps 1 to 3: archbench.engine.program);
  4. warm up, calibrate `steps_per_round` so that a round lasts at least `min_round_s`, and
     time rounds of steps, each ending in one `block_until_ready`;
  5. derive step time statistics, samples/s, tokens/s, achieved TFLOP/s and MFU.

Each piece takes the resolved cell (archbench.engine.plan.Plan; a Cell is resolved first).
pytest-benchmark drives the same pieces (archbench.engine.run.run_cell with a timer):
`prepared = prepare(plan)`, `prepared.calibrate()`,
`benchmark.pedantic(prepared.run_round, rounds=R, iterations=1)`, then
`summarize(plan, prepared, round_times_s)`. `measure_cell` does all of it with its own loop.

Several devices and hosts: see archbench.engine.devices.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from archbench.engine import analysis, roofline
from archbench.engine.cell import (
    DTYPES,
    MODES,
    Cell,
    batch_shards,
    from_id,
    input_spec,
    validate,
)
from archbench.engine.devices import device_info, scaling_efficiency
from archbench.engine.outcome import RESULT_KEYS, failure, is_oom
from archbench.engine.peaks import peak_tflops
from archbench.engine.plan import Plan, plan_of
from archbench.engine.program import compile_cell
from archbench.engine.timing import high_water_mark, time_rounds
from archbench.train.steps import TrainState

__all__ = [
    "DTYPES",
    "MODES",
    "RESULT_KEYS",
    "Cell",
    "Plan",
    "Prepared",
    "batch_shards",
    "device_info",
    "from_id",
    "input_spec",
    "is_oom",
    "measure_cell",
    "prepare",
    "scaling_efficiency",
    "summarize",
    "time_rounds",
    "validate",
]

MAX_STEPS_PER_ROUND = 100_000


@dataclass(eq=False)
class Prepared:
    """A compiled cell ready to run: the executable, its placed arguments and compile facts.

    Train steps donate the state, so each step's new state is carried into the next.
    """

    plan: Plan
    compiled: jax.stages.Compiled
    state: TrainState
    inputs: Any  # the batch dict {"x", "y"} for train, its "x" for infer
    devices: list
    facts: dict  # lower_s, compile_s, FLOPs, bytes, memory analysis, sharding
    steps_per_round: int = 1

    @property
    def cell(self) -> Cell:
        return self.plan.cell

    def step(self):
        """One step; returns its metrics (train) or logits (infer)."""
        if self.cell.mode == "train":
            self.state, metrics = self.compiled(self.state, self.inputs)
            return metrics
        return self.compiled(self.state, self.inputs)

    def run_round(self) -> None:
        """`steps_per_round` steps, then one block_until_ready.

        It blocks on the last step's output only: a device runs executions in dispatch order
        and all outputs of one execution become ready together.
        """
        out = None
        for _ in range(self.steps_per_round):
            out = self.step()
        jax.block_until_ready(out)

    def calibrate(self, min_round_s: float = 0.05, warmup: int = 2, agree=None) -> int:
        """Warm up (at least one round), then grow `steps_per_round` until one round lasts
        `min_round_s`, so timer resolution and dispatch jitter are negligible. Returns it.

        `agree` maps each measured round time to the one every process acts on (several
        processes must run the same steps: archbench.engine.distributed.agreed); None: as is.
        """
        self.steps_per_round = 1
        for _ in range(max(1, warmup)):
            self.run_round()
        while self.steps_per_round < MAX_STEPS_PER_ROUND:
            start = time.perf_counter()
            self.run_round()
            elapsed = time.perf_counter() - start
            if agree is not None:
                elapsed = agree(elapsed)
            if elapsed >= min_round_s:
                break
            grow = min(100.0, 1.2 * min_round_s / max(elapsed, 1e-9))
            steps = max(2 * self.steps_per_round, math.ceil(grow * self.steps_per_round))
            self.steps_per_round = min(MAX_STEPS_PER_ROUND, steps)
        return self.steps_per_round


def prepare(plan: Plan | Cell) -> Prepared:
    """Build, place, lower and compile a resolved cell ahead of time; raises on any failure.

    Returns:
      The Prepared cell; its `facts` hold lower_s, compile_s, the cost and memory analyses.
    """
    plan = plan_of(plan)
    devices = jax.devices()[: plan.cell.devices]
    peak_before = high_water_mark(devices)
    compiled, args, facts = compile_cell(plan, devices)
    return Prepared(
        plan, compiled, args[0], args[1], devices, {**facts, "peak_before": peak_before}
    )


def _finiteness(prepared: Prepared) -> dict:
    """One more step, after the timed ones: a model whose outputs (infer) or loss (train) are
    NaN or infinite is timed all the same, but its status says so ("nonfinite"), since a
    step time of garbage is no benchmark of the model."""
    out = prepared.step()
    values = out["loss"] if isinstance(out, dict) and "loss" in out else out
    bad = [a for a in jax.tree.leaves(values) if not bool(np.isfinite(np.asarray(a)).all())]
    if not bad:
        return {"status": "ok", "error": None}
    what = "the loss" if values is not out else "the outputs"
    return {"status": "nonfinite", "error": f"{what} of a step are not finite (NaN or inf)"}


def summarize(plan: Plan | Cell, prepared: Prepared, round_times_s: list[float]) -> dict:
    """The result of a measured cell (RESULT_KEYS) from the wall times of its rounds.

    Step times are round times / steps_per_round; step_time_s is their median. FLOPs, bytes,
    samples and tokens are global (all devices). tflops_per_s and HFU (hardware FLOPs
    utilisation) count the executed FLOPs (flops_per_step), recomputation included; MFU counts
    the model's (model_flops_per_step, the step without rematerialisation), as PaLM
    (Chowdhery et al. 2022, appendix B) and MaxText do, so recomputing activations never
    raises it. Either = FLOPs / step_time_s / (peak_tflops * devices), except for a measured
    CPU peak, which all CPU devices of the host share. Memory analysis
    figures are per device; peak_bytes is the device's high-water mark since the process
    started (peak_bytes_set_by_cell says whether this cell raised it).
    """
    if not isinstance(plan, Plan):  # a Cell: the one prepared holds, resolved already
        plan = prepared.plan if prepared.plan.cell == plan else plan_of(plan)
    cell = plan.cell
    step = np.asarray(round_times_s, dtype=np.float64) / prepared.steps_per_round
    median = float(np.median(step))
    q1, q3 = np.percentile(step, [25, 75])
    facts = dict(prepared.facts)
    peak_before = facts.pop("peak_before")
    tokens = plan.inputs.tokens_per_example
    device = prepared.devices[0]
    device_peak = analysis.device_peak_bytes(prepared.devices)
    rss = analysis.host_peak_rss_bytes()
    result = {
        **plan.keys,
        **_finiteness(prepared),  # status "ok", or "nonfinite" and what was not
        "backend": device.platform,
        "device_kind": device.device_kind,
        "step_time_s": median,
        "step_time_iqr_s": float(q3 - q1),
        "step_time_min_s": float(step.min()),
        "rounds": len(step),
        "steps_per_round": prepared.steps_per_round,
        "samples_per_s": cell.batch / median,
        "tokens_per_s": cell.batch * tokens / median if tokens else None,
        **_utilisation(cell, device, median, facts),
        **facts,
        "peak_bytes": device_peak,
        "host_peak_rss_bytes": rss,
        "peak_bytes_source": "device-memory-stats" if device_peak is not None else "host-rss",
        "peak_bytes_set_by_cell": high_water_mark(prepared.devices) > peak_before,
        "device_memory_bytes": None,  # what --compile-only --device-memory checks a fit against
        "fits": None,
    }
    roofs, sources = roofline.measured_roofs(device, cell.dtype)
    result.update(
        roofline.record_keys(
            facts["device_flops_per_step"],
            facts["bytes_per_step"],
            facts["collective_bytes"],
            cell.devices,
            roofs,
            sources,
            median,
        )
    )
    return {key: result.get(key) for key in RESULT_KEYS}


def _utilisation(cell: Cell, device, step_time_s: float, facts: dict) -> dict:
    """Achieved TFLOP/s, MFU and HFU of a step taking `step_time_s`, and the peak they are
    measured against (summarize says which FLOPs each counts)."""
    flops, model_flops = facts["flops_per_step"], facts["model_flops_per_step"]
    tflops_per_s = flops / step_time_s / 1e12 if flops is not None else None
    model_tflops_per_s = model_flops / step_time_s / 1e12 if model_flops is not None else None
    peak, peak_source, peak_basis = peak_tflops(device, cell.dtype)
    shared = peak_source == "measured-matmul" and device.platform == "cpu"
    total_peak = None if peak is None else peak * (1 if shared else cell.devices)

    def share(tflops):
        return tflops / total_peak if tflops is not None and total_peak else None

    return {
        "tflops_per_s": tflops_per_s,
        "mfu": share(model_tflops_per_s),
        "hfu": share(tflops_per_s),
        "peak_tflops": peak,
        "peak_source": peak_source,
        "peak_basis": peak_basis,
    }


def measure_cell(
    cell: Cell | Plan,
    *,
    min_round_s: float = 0.05,
    rounds: int | None = None,
    target_s: float = 2.0,
    warmup: int = 2,
) -> dict:
    """Measure a cell: prepare, warm up and calibrate, time rounds, summarize.

    Args:
      cell: what to measure, a Cell (invalid ones raise archs.UserError before anything runs)
        or a resolved one (archbench.engine.plan.Plan).
      min_round_s: a round of steps lasts at least this long.
      rounds: time exactly this many rounds; None times rounds for about `target_s` (5 to 50).
      target_s: wall time to spend in timed rounds when `rounds` is None.
      warmup: untimed rounds first (at least one).
    Returns:
      A flat JSON-serialisable dict with RESULT_KEYS. A model that fails (to build, compile or
      run) gives status "oom" or "error" with a one-line "error"; it never raises.
    """
    plan = plan_of(cell)
    prepared = None
    try:
        prepared = prepare(plan)
        prepared.calibrate(min_round_s, warmup)
        times = time_rounds(prepared, rounds=rounds, target_s=target_s)
        return summarize(plan, prepared, times)
    except Exception as exc:
        return failure(plan, exc)
    finally:
        prepared = None
        gc.collect()
