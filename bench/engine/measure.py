"""Measuring one benchmark cell: compile ahead of time, read XLA's analyses, time steady steps.

Measuring a cell (archbench.engine.cell.Cell):
  1. build the module, its train state (optax.adamw(1e-3) for train) and a synthetic batch;
  2. lower and compile the step ahead of time, timing both (`lower_s`, `compile_s`) with the
     persistent compilation cache off and the step's in-process caches evicted, so neither is
     a cache hit; train mode compiles `train.steps.jit_train_step` itself, infer mode `predict`;
  3. read FLOPs and bytes from XLA's cost analysis (recurrent models re-lowered unrolled, as
     XLA counts a loop body once) and the compiled footprint from its memory analysis;
  4. warm up, calibrate `steps_per_round` so that a round lasts at least `min_round_s`, and
     time rounds of steps, each ending in one `block_until_ready`;
  5. derive step time statistics, samples/s, tokens/s, achieved TFLOP/s and MFU.

pytest-benchmark drives the same pieces: `prepared = prepare(cell)`, `prepared.calibrate()`,
`benchmark.pedantic(prepared.run_round, rounds=R, iterations=1)`, then
`summarize(cell, prepared, round_times_s)`. `measure_cell` does all of it with its own loop.

Several devices and hosts: see archbench.engine.devices.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax

from archbench import archs
from archbench.archs.registry import InputSpec
from archbench.engine import analysis, sharding
from archbench.engine.cell import (
    DTYPES,
    MODES,
    Cell,
    batch_shards,
    build,
    cell_keys,
    from_id,
    input_spec,
    sequence_length,
    validate,
)
from archbench.engine.devices import device_info, scaling_efficiency
from archbench.engine.outcome import RESULT_KEYS, failure, is_oom
from archbench.engine.peaks import peak_tflops
from archbench.train.steps import (
    TrainState,
    create_train_state,
    jit_train_step,
    predict,
    synthetic_batch,
)

__all__ = [
    "DTYPES",
    "MODES",
    "RESULT_KEYS",
    "Cell",
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

OPTIMIZER, LEARNING_RATE = "adamw", 1e-3
MAX_STEPS_PER_ROUND = 100_000

jit_predict = jax.jit(predict)


@dataclass(eq=False)
class Prepared:
    """A compiled cell ready to run: the executable, its placed arguments and compile facts.

    Train steps donate the state, so each step's new state is carried into the next.
    """

    cell: Cell
    compiled: jax.stages.Compiled
    state: TrainState
    inputs: Any  # the batch dict {"x", "y"} for train, its "x" for infer
    devices: list
    facts: dict  # lower_s, compile_s, FLOPs, bytes, memory analysis, sharding
    steps_per_round: int = 1

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


def _state_and_batch(
    cell: Cell, spec: archs.ArchSpec, module, inputs: InputSpec, devices, abstract: bool = False
):
    """The train state and a batch, each created in place with the cell's sharding strategy.

    The state's shardings come from its shapes alone (jax.eval_shape), and `init` is jitted
    with them as out_shardings: under fsdp no device ever holds the whole state. With
    `abstract`, both are jax.ShapeDtypeStructs carrying those shardings: nothing is
    allocated, so a model larger than this host's memory can still be compiled. Parameters
    and data are drawn with the "rbg" PRNG, whose programs compile several times faster than
    threefry's (values do not matter here); the dropout key the train step uses is a
    default-implementation key, as in the fit loop.
    Raises:
      sharding.Unsupported if the strategy has no form for this model.
    """
    tx = optax.adamw(LEARNING_RATE) if cell.mode == "train" else optax.identity()
    placement = sharding.layout(cell.sharding, devices, cell.mesh)

    def init(key):
        state = create_train_state(module, inputs, tx, key)
        return state.replace(dropout_key=jax.random.key(2))

    def make_batch(key):
        return synthetic_batch(inputs, spec.task, spec.num_outputs(cell.size), cell.batch, key)

    key, batch_key = jax.random.key(0, impl="rbg"), jax.random.key(1, impl="rbg")
    shapes = jax.eval_shape(init, key)
    shardings = placement.state(shapes)
    if abstract:
        place = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
        batch_shapes = jax.eval_shape(make_batch, batch_key)
        batch = jax.tree.map(lambda a: place(a, placement.batch), batch_shapes)
        return jax.tree.map(place, shapes, shardings), batch
    state = jax.jit(init, out_shardings=shardings)(key)
    return state, jax.jit(make_batch, out_shardings=placement.batch)(batch_key)


def _collective_facts(compiled) -> dict:
    """The collectives XLA put into the compiled step: totals, and per kind."""
    found = analysis.collectives(compiled.as_text() or "")
    return {
        "collective_count": sum(c["count"] for c in found.values()),
        "collective_bytes": sum(c["bytes"] for c in found.values()),
        "collectives": {op: c for op, c in found.items() if c["count"]},
    }


def _high_water_mark(devices) -> int:
    """The device peak where the backend keeps one, else the process's peak RSS."""
    peak = analysis.device_peak_bytes(devices)
    return analysis.host_peak_rss_bytes() if peak is None else peak


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def _cost_facts(cell: Cell, spec, module, inputs: InputSpec, step_fn, args, lowered, compiled):
    """FLOPs and bytes of one global step (all devices together). A module with an `unroll`
    field (the recurrent families pass it to lax.scan) is lowered again with unroll = sequence
    length, so every time step is counted; that lowering is analysed before XLA's fusion, so
    its bytes are an upper bound ("xla-unrolled-prefusion")."""
    length = sequence_length(inputs)
    if "unroll" in {f.name for f in dataclasses.fields(module)} and length is not None:
        unrolled = build(cell, unroll=length)
        state = args[0].replace(apply_fn=unrolled.apply)
        abstract = (_abstract(state), _abstract(args[1]))
        lowered_u = step_fn.lower(*abstract)
        stage = lowered_u if lowered_u.cost_analysis() is not None else lowered_u.compile()
        flops, accessed = analysis.cost(stage)
        source = "xla-unrolled"
        bytes_source = "xla-unrolled-prefusion" if stage is lowered_u else "xla-unrolled"
        loops = analysis.loop_undercount(step_fn.trace(*abstract).jaxpr)
    else:
        flops, accessed = analysis.cost(compiled)
        if cell.devices > 1:
            # The partitioned executable is one device's program, with the replicated optimizer
            # update repeated on every device. FLOPs: the unpartitioned step's (the model's
            # work, the same count as on one device); bytes: every device's traffic.
            flops = analysis.unpartitioned_flops(lowered, step_fn, args)
            accessed = None if accessed is None else accessed * cell.devices
        source, bytes_source = "xla", "xla"
        loops = analysis.loop_undercount(step_fn.trace(*args).jaxpr)
    return {
        "flops_per_step": flops,
        "bytes_per_step": accessed,
        # A loop of matmuls is left, its body counted once: the FLOPs are too low.
        "flops_source": "xla-loop-undercount" if loops else source,
        "bytes_source": bytes_source,
    }


def prepare(cell: Cell) -> Prepared:
    """Build, place, lower and compile `cell` ahead of time; raises on any failure.

    Returns:
      The Prepared cell; its `facts` hold lower_s, compile_s, the cost and memory analyses.
    """
    devices = jax.devices()[: cell.devices]
    peak_before = _high_water_mark(devices)
    compiled, args, facts = compile_cell(cell, devices)
    return Prepared(
        cell, compiled, args[0], args[1], devices, {**facts, "peak_before": peak_before}
    )


def compile_cell(cell: Cell, devices, abstract: bool = False):
    """Lower and compile `cell`'s step on `devices`, timing both; raises on any failure.

    Args:
      cell: what to compile (validated here).
      devices: the devices of its mesh.
      abstract: compile from jax.ShapeDtypeStructs alone, allocating nothing.
    Returns:
      (the compiled step, its arguments (state, batch or inputs), facts: lower_s, compile_s,
      the cost and memory analyses, the batch sharding and the collectives).
    """
    validate(cell, devices if abstract else None)
    jax.config.update("jax_enable_compilation_cache", False)
    spec = archs.get(cell.arch)
    module = build(cell)
    inputs = input_spec(cell)
    state, batch = _state_and_batch(cell, spec, module, inputs, devices, abstract)
    if cell.mode == "train":
        step_fn, args = jit_train_step, (state, batch)
    else:
        step_fn, args = jit_predict, (state, batch["x"])
    # A cached trace or executable of an earlier cell of the same shapes would make lower_s and
    # compile_s lie: evict this function's caches (not the process's, which other code uses).
    step_fn.clear_cache()
    start = time.perf_counter()
    lowered = step_fn.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    facts = {
        "lower_s": lowered_at - start,
        "compile_s": compiled_at - lowered_at,
        "compile_cache": "disabled",
        **_cost_facts(cell, spec, module, inputs, step_fn, args, lowered, compiled),
        **analysis.compiled_memory(compiled),
        "batch_sharding": str(jax.tree.leaves(args[1])[0].sharding.spec),
        "batch_per_device": cell.batch // batch_shards(cell),
        **_collective_facts(compiled),
    }
    return compiled, args, facts


def time_rounds(
    prepared: Prepared,
    *,
    rounds: int | None = None,
    target_s: float = 2.0,
    min_rounds: int = 5,
    max_rounds: int = 50,
) -> list[float]:
    """Wall time of each round: exactly `rounds` of them, else rounds until `target_s` has
    passed, at least `min_rounds` and at most `max_rounds`."""
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        prepared.run_round()
        times.append(time.perf_counter() - t0)
        if rounds is not None:
            done = len(times) >= rounds
        else:
            done = len(times) >= max_rounds or (
                len(times) >= min_rounds and time.perf_counter() - start >= target_s
            )
        if done:
            return times


def summarize(cell: Cell, prepared: Prepared, round_times_s: list[float]) -> dict:
    """The result of a measured cell (RESULT_KEYS) from the wall times of its rounds.

    Step times are round times / steps_per_round; step_time_s is their median. FLOPs, bytes,
    samples and tokens are global (all devices). MFU = tflops_per_s / (peak_tflops * devices),
    except for a measured CPU peak, which all CPU devices of the host share. Memory analysis
    figures are per device; peak_bytes is the device's high-water mark since the process
    started (peak_bytes_set_by_cell says whether this cell raised it).
    """
    step = np.asarray(round_times_s, dtype=np.float64) / prepared.steps_per_round
    median = float(np.median(step))
    q1, q3 = np.percentile(step, [25, 75])
    facts = dict(prepared.facts)
    peak_before = facts.pop("peak_before")
    tokens = input_spec(cell).tokens_per_example
    flops = facts["flops_per_step"]
    tflops_per_s = flops / median / 1e12 if flops is not None else None
    device = prepared.devices[0]
    peak, peak_source, peak_basis = peak_tflops(device, cell.dtype)
    shared = peak_source == "measured-matmul" and device.platform == "cpu"
    total_peak = None if peak is None else peak * (1 if shared else cell.devices)
    device_peak = analysis.device_peak_bytes(prepared.devices)
    rss = analysis.host_peak_rss_bytes()
    result = {
        **cell_keys(cell),
        "status": "ok",
        "error": None,
        "backend": device.platform,
        "device_kind": device.device_kind,
        "optimizer": OPTIMIZER if cell.mode == "train" else None,
        "step_time_s": median,
        "step_time_iqr_s": float(q3 - q1),
        "step_time_min_s": float(step.min()),
        "rounds": len(step),
        "steps_per_round": prepared.steps_per_round,
        "samples_per_s": cell.batch / median,
        "tokens_per_s": cell.batch * tokens / median if tokens else None,
        "tflops_per_s": tflops_per_s,
        "mfu": tflops_per_s / total_peak if tflops_per_s is not None and total_peak else None,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "peak_basis": peak_basis,
        **facts,
        "peak_bytes": device_peak,
        "host_peak_rss_bytes": rss,
        "peak_bytes_source": "device-memory-stats" if device_peak is not None else "host-rss",
        "peak_bytes_set_by_cell": _high_water_mark(prepared.devices) > peak_before,
        "device_memory_bytes": None,  # what --compile-only --device-memory checks a fit against
        "fits": None,
    }
    return {key: result.get(key) for key in RESULT_KEYS}


def measure_cell(
    cell: Cell,
    *,
    min_round_s: float = 0.05,
    rounds: int | None = None,
    target_s: float = 2.0,
    warmup: int = 2,
) -> dict:
    """Measure `cell`: prepare, warm up and calibrate, time rounds, summarize.

    Args:
      cell: what to measure; invalid cells raise archs.UserError before anything runs.
      min_round_s: a round of steps lasts at least this long.
      rounds: time exactly this many rounds; None times rounds for about `target_s` (5 to 50).
      target_s: wall time to spend in timed rounds when `rounds` is None.
      warmup: untimed rounds first (at least one).
    Returns:
      A flat JSON-serialisable dict with RESULT_KEYS. A model that fails (to build, compile or
      run) gives status "oom" or "error" with a one-line "error"; it never raises.
    """
    validate(cell)
    try:
        prepared = prepare(cell)
        prepared.calibrate(min_round_s, warmup)
        times = time_rounds(prepared, rounds=rounds, target_s=target_s)
        return summarize(cell, prepared, times)
    except Exception as exc:
        return failure(cell, exc)
    finally:
        prepared = None
        gc.collect()
