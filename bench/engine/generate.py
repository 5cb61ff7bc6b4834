"""Measuring a generate cell: prefill a prompt, then decode greedily one token at a time.

A generate cell (archbench.engine.cell.Cell with mode "generate", `prompt_len` P and
`gen_len` G) of a language model with a decode path (archbench.engine.cell.can_decode):
  1. build the model, its parameters and a random prompt (B, P);
  2. make an empty cache for P + G positions: the "cache" collection that
     `init(..., decode=True)` creates for a (B, P + G) input, as zeros (the key/value cache
     of a Transformer, the convolution window and SSM state of Mamba);
  3. lower and compile ahead of time, each timed, two programs that donate the cache, so XLA
     updates it in place: prefill (the prompt into the cache, then the argmax of the last
     position's logits: the first token) and the decode step (one token per sequence in, the
     cache updated at its position, the next greedy token out);
  4. read the decode step's FLOPs and bytes from XLA's cost analysis and its memory analysis;
  5. run generations: an empty cache, the prefill timed up to its token being ready (time to
     first token), then G decode steps each timed up to its token being ready
     (block_until_ready); one untimed warm-up generation, then generations for about
     `target_s` (MIN_ROUNDS to MAX_ROUNDS);
  6. summarise: prefill_s is the median time to first token; decode_token_s the median of all
     decode steps and decode_token_iqr_s their interquartile range; decode_tokens_per_s =
     B / decode_token_s (each step gives every sequence one token); the achieved bandwidth
     bytes_per_token / decode_token_s, and its fraction of the device's memory bandwidth
     (archbench.engine.peaks.peak_bandwidth).

"Per token" means per decode step: one new token for each of the B sequences, which read the
weights once together. The decode step's time and FLOPs also fill the generic step_time_s,
tflops_per_s, flops_per_step and bytes_per_step keys; tokens_per_s is decode_tokens_per_s.

pytest-benchmark drives the same pieces (archbench.engine.run.run_cell with the matrix's
timer): `gen = prepare(plan)`, `gen.run_round()` once untimed,
`benchmark.pedantic(gen.run_round, ...)`, `summarize(gen)`. The high-water mark, the timed
lowering and compiling and the loop of rounds are measuring's (archbench.engine.timing).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from archbench import archs
from archbench.engine import analysis, jaxpr_cost, roofline
from archbench.engine.cell import Cell
from archbench.engine.outcome import RESULT_KEYS, failure
from archbench.engine.peaks import peak_tflops
from archbench.engine.plan import Plan, plan_of
from archbench.engine.timing import (
    combined_cache_outcome,
    high_water_mark,
    lower_and_compile,
    time_rounds,
)
from archbench.train.steps import first_argmax

MIN_ROUNDS = 3  # generations timed at least (each has G decode steps)
MAX_ROUNDS = 50


def cache_shapes(module, batch: int, length: int):
    """The shapes of the cache `module.init(..., decode=True)` creates for (batch, length)
    tokens (from shapes alone; nothing of the model runs)."""
    tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    variables = jax.eval_shape(lambda t: module.init(jax.random.key(0), t, decode=True), tokens)
    return variables["cache"]


def empty_cache(shapes):
    """Zeros of the cache's shapes (jax.ShapeDtypeStructs)."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def cache_bytes(cache) -> int:
    """Bytes of a cache's arrays: keys and values, or convolution window and SSM state; the
    scalar position counters are left out."""
    return sum(a.size * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(cache) if a.ndim)


def greedy_forward(module, params, cache, tokens):
    """Feed tokens (B, T) after those in the cache; the greedy next token (B,) int32 and the
    updated cache."""
    logits, variables = module.apply(
        {"params": params, "cache": cache}, tokens, decode=True, mutable=["cache"]
    )  # (B, T, V)
    # the token jnp.argmax picks (a row without NaN), in a fraction of its time on a CPU
    return first_argmax(logits[:, -1]), variables["cache"]


def greedy_step(module, params, cache, token):
    """One decode step: token (B,) in, the next greedy token (B,) and the cache out."""
    return greedy_forward(module, params, cache, token[:, None])


@dataclass(eq=False)
class Generation:
    """A compiled generate cell: both programs, their arguments, facts and the times so far."""

    plan: Plan
    prefill: jax.stages.Compiled  # (params, cache, prompt) -> (first token, cache)
    decode: jax.stages.Compiled  # (params, cache, token) -> (next token, cache)
    params: dict
    prompt: jax.Array  # (B, P) int32
    reset: object  # () -> an empty cache
    device: jax.Device
    facts: dict
    prefill_times: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    tokens: jax.Array | None = None  # the last generation's tokens (B, 1 + G)
    on_token: object = None  # on_token(done, gen_len) after each decode step (untimed), or None

    @property
    def cell(self) -> Cell:
        return self.plan.cell

    def run_round(self, record: bool = True) -> None:
        """One generation from an empty cache: the prefill, then G decode steps, each timed
        up to its token being ready; `record` keeps the times."""
        cache = jax.block_until_ready(self.reset())
        start = time.perf_counter()
        token, cache = self.prefill(self.params, cache, self.prompt)
        token.block_until_ready()
        prefill_s = time.perf_counter() - start
        out, steps = [token], []
        for _ in range(self.cell.gen_len):
            start = time.perf_counter()
            token, cache = self.decode(self.params, cache, token)
            token.block_until_ready()
            steps.append(time.perf_counter() - start)
            out.append(token)
            if self.on_token is not None:
                self.on_token(len(steps), self.cell.gen_len)
        self.tokens = jnp.stack(out, axis=1)  # (B, 1 + G)
        if record:
            self.prefill_times.append(prefill_s)
            self.step_times.extend(steps)


def _compile(fn, *args) -> tuple[jax.stages.Compiled, float, float, str]:
    _, compiled, lower_s, compile_s, cache = lower_and_compile(jax.jit(fn, donate_argnums=1), *args)
    return compiled, lower_s, compile_s, cache


def prepare(plan: Plan | Cell) -> Generation:
    """Build, lower and compile the prefill and the decode step of a resolved generate cell
    (a Cell is resolved first); raises on failure."""
    plan = plan_of(plan)
    if plan.module is None:
        raise plan.error
    cell, module = plan.cell, plan.module
    device = jax.devices()[0]
    peak_before = high_water_mark([device])
    inputs = plan.size.input
    key, prompt_key = jax.random.key(0, impl="rbg"), jax.random.key(1, impl="rbg")
    params = archs.init_variables(module, inputs, key)["params"]
    prompt = jax.jit(
        lambda k: jax.random.randint(k, (cell.batch, cell.prompt_len), 0, inputs.vocab_size)
    )(prompt_key)
    length = cell.prompt_len + cell.gen_len
    shapes = cache_shapes(module, cell.batch, length)
    reset = jax.jit(partial(empty_cache, shapes))
    cache = reset()
    prefill, prefill_lower_s, prefill_compile_s, prefill_cache = _compile(
        partial(greedy_forward, module), params, cache, prompt
    )
    token = jax.ShapeDtypeStruct((cell.batch,), jnp.int32)
    decode, decode_lower_s, decode_compile_s, decode_cache = _compile(
        partial(greedy_step, module), params, cache, token
    )
    flops, accessed = analysis.cost(decode)
    xla = {"flops_per_step": flops, "bytes_per_step": accessed}
    counted = jaxpr_cost.facts(None, partial(greedy_step, module), (params, cache, token), xla)
    facts = {
        "lower_s": prefill_lower_s + decode_lower_s,
        "compile_s": prefill_compile_s + decode_compile_s,
        "compile_cache": combined_cache_outcome(prefill_cache, decode_cache),
        "prefill_compile_s": prefill_compile_s,
        "decode_compile_s": decode_compile_s,
        "flops_per_token": flops,
        "bytes_per_token": accessed,
        "cache_bytes": cache_bytes(shapes),
        **analysis.compiled_memory(decode),
        **counted,
        "peak_before": peak_before,
    }
    del cache
    return Generation(plan, prefill, decode, params, prompt, reset, device, facts)


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarize(gen: Generation) -> dict:
    """The result of a measured generate cell (RESULT_KEYS), from the times `gen` recorded."""
    cell, facts = gen.cell, dict(gen.facts)
    peak_before = facts.pop("peak_before")
    steps = np.asarray(gen.step_times, dtype=np.float64)
    median = float(np.median(steps))
    q1, q3 = np.percentile(steps, [25, 75])
    flops, accessed = facts["flops_per_token"], facts["bytes_per_token"]
    tflops_per_s = flops / median / 1e12 if flops is not None else None
    peak, peak_source, peak_basis = peak_tflops(gen.device, cell.dtype)
    roofs, sources = roofline.measured_roofs(gen.device, cell.dtype)
    achieved = _ratio(accessed, median)
    device_peak = analysis.device_peak_bytes([gen.device])
    result = {
        **gen.plan.keys,
        "status": "ok",
        "error": None,
        "backend": gen.device.platform,
        "device_kind": gen.device.device_kind,
        "step_time_s": median,
        "step_time_iqr_s": float(q3 - q1),
        "step_time_min_s": float(steps.min()),
        "rounds": len(gen.prefill_times),
        "steps_per_round": cell.gen_len,
        "tokens_per_s": cell.batch / median,
        "tflops_per_s": tflops_per_s,
        "mfu": _ratio(tflops_per_s, peak),
        "peak_tflops": peak,
        "peak_source": peak_source,
        "peak_basis": peak_basis,
        "flops_per_step": flops,
        "model_flops_per_step": flops,  # decoding never rematerialises
        "hfu": _ratio(tflops_per_s, peak),
        "bytes_per_step": accessed,
        "flops_source": "xla",
        "bytes_source": "xla",
        "batch_per_device": cell.batch,
        "peak_bytes": device_peak,
        "host_peak_rss_bytes": analysis.host_peak_rss_bytes(),
        "peak_bytes_source": "device-memory-stats" if device_peak is not None else "host-rss",
        "peak_bytes_set_by_cell": high_water_mark([gen.device]) > peak_before,
        **facts,
        "prefill_s": float(np.median(gen.prefill_times)),
        "decode_token_s": median,
        "decode_token_iqr_s": float(q3 - q1),
        "decode_tokens_per_s": cell.batch / median,
        "bandwidth_bytes_per_s": achieved,
        "bandwidth_fraction": _ratio(achieved, roofs.memory_bytes_per_s),
        # the decode step's roofline (one device, no collectives), against its median time
        **roofline.record_keys(flops, accessed, 0, 1, roofs, sources, median),
    }
    return {key: result.get(key) for key in RESULT_KEYS}


def time_generations(gen: Generation, target_s: float = 2.0, rounds: int | None = None) -> None:
    """Exactly `rounds` generations, else generations until `target_s` has passed
    (MIN_ROUNDS to MAX_ROUNDS); their times go to `gen`."""
    time_rounds(gen, rounds=rounds, target_s=target_s, min_rounds=MIN_ROUNDS, max_rounds=MAX_ROUNDS)


def measure_generate(
    cell: Cell | Plan, *, target_s: float = 2.0, rounds: int | None = None
) -> dict:
    """Measure a generate cell: prepare, one warm-up generation, timed generations, summarize.

    Invalid cells raise archs.UserError before anything runs; a model that fails to build,
    compile or run gives status "oom" or "error" with a one-line "error", never raises.
    """
    plan = plan_of(cell)
    gen = None
    try:
        gen = prepare(plan)
        gen.run_round(record=False)
        time_generations(gen, target_s, rounds)
        return summarize(gen)
    except Exception as exc:
        return failure(plan, exc)
    finally:
        gen = None
        gc.collect()
