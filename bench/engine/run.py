"""Running one requested cell, the one ladder every front end climbs: `archbench.measure`,
the matrix's measured cells and its compile-only ones (archbench.matrix.session).

`run_cell` resolves the cell once (archbench.engine.plan), resolves batch "auto", branches to
generation or to compiling only, records a failing model as a status, and returns the record.
How it runs is the caller's: a `timer` (the matrix passes pytest-benchmark's pedantic), an
`agree` (several processes acting on process 0's clock), `on_compiled` (HLO files) and
`profile` (a trace after the record is summarised).
"""

from __future__ import annotations

import gc
import math
import time

from archbench.engine import aot, autobatch, generate, measure, xla_options
from archbench.engine.cell import Cell, with_unit_batch
from archbench.engine.fields import AUTO
from archbench.engine.outcome import failure
from archbench.engine.plan import Plan, resolve
from archbench.errors import Unsupported, UserError

MIN_ROUNDS = 5  # enough for a median and an interquartile range
MAX_ROUNDS = 1000  # a cap only: calibrated rounds last >= 50 ms, so target_s decides


def plan_rounds(round_s: float, target_s: float) -> int:
    """Rounds of about `round_s` each that fill about `target_s` (MIN_ROUNDS to MAX_ROUNDS)."""
    return min(max(math.ceil(target_s / max(round_s, 1e-9)), MIN_ROUNDS), MAX_ROUNDS)


def _same(x):
    return x


def run_cell(
    request: Cell,
    *,
    target_s: float = 2.0,
    compile_only: bool = False,
    device_memory: int | None = None,
    target=None,
    timer=None,
    agree=None,
    on_compiled=None,
    profile=None,
    progress=None,
) -> dict:
    """Measure (or compile only) one requested cell; its record (outcome.RESULT_KEYS).

    Args:
      request: the cell; batch may be "auto": the largest that compiles and runs (measured),
        or that fits `device_memory` (compiled only; the smallest batch when none is given).
      target_s: seconds of timed rounds.
      compile_only: compile from shapes alone (aot.compile_only) instead of running.
      device_memory: bytes of one device, to say whether a compiled step fits.
      target: the devices to compile for (a TPU topology's); None: this host's.
      timer: `timer(run_round, rounds, steps_per_round) -> round times` runs the timed rounds
        (steps_per_round None for generations, which keep their own times); None: the
        engine's own loop (timing.time_rounds) after calibrating with two warm-up rounds.
      agree: maps a measured time to the one every process acts on (distributed.agreed).
      on_compiled: `on_compiled(cell, compiled, program) -> path or None` as soon as each
        program is compiled; program is "" for the step, "decode" or "prefill" for generation.
      profile: `profile(cell, step, steps=None) -> dict` after the record is summarised.
      progress: `progress(text)`, told how far a long generation has got (at most once a
        second, between decode steps, outside their timed windows); None: nothing said.
    Returns:
      The record: status "ok" (or "compiled"), or "unsupported", "oom" or "error" with a
      one-line "error"; it never raises for a failing model.
    Raises:
      UserError for a cell that cannot be measured (before anything runs).
    """
    auto = request.batch == AUTO
    cell = with_unit_batch(request)
    if auto and cell.mode == "generate" and not compile_only:
        raise UserError("batch 'auto' is for train and infer; give generate a batch size")
    plan = resolve(cell, target if compile_only else None)
    if compile_only:
        record = _compile(plan, auto, device_memory, target, on_compiled)
    elif cell.mode == "generate":
        record = _generate(plan, target_s, timer, agree or _same, on_compiled, profile, progress)
    else:
        record = _measure(plan, auto, target_s, timer, agree, on_compiled, profile)
    if auto:
        record["batch_request"] = AUTO
    record.update(xla_options.in_force())
    return record


def _compile(plan: Plan, auto: bool, device_memory, target, on_compiled) -> dict:
    if plan.cell.mode == "generate":  # two programs and a cache: measured only
        return failure(plan, Unsupported("--compile-only does not compile generate"))
    if auto and device_memory is not None:
        plan = plan.with_batch(aot.largest_batch_that_fits(plan, device_memory, target=target))
    files = {}
    hook = None
    if on_compiled is not None:

        def hook(compiled):
            files["hlo_file"] = on_compiled(plan.cell, compiled, "")

    record = aot.compile_only(plan, device_memory, target, on_compiled=hook)
    record.update(files)
    gc.collect()
    return record


def _measure(plan: Plan, auto: bool, target_s, timer, agree, on_compiled, profile) -> dict:
    prepared, files = None, {}
    try:
        if auto:
            plan = plan.with_batch(autobatch.find_max_batch(plan))
        prepared = measure.prepare(plan)
        if on_compiled is not None:
            files["hlo_file"] = on_compiled(plan.cell, prepared.compiled, "")
        if timer is None:
            prepared.calibrate(warmup=2, agree=agree)
            round_times = measure.time_rounds(prepared, target_s=target_s)
        else:
            # a warm-up round; rounds of >= 50 ms, process 0's round times deciding for all
            prepared.calibrate(warmup=1, agree=agree)
            start = time.perf_counter()
            prepared.run_round()  # the second warm-up round, timed to plan the rounds
            elapsed = time.perf_counter() - start
            rounds = plan_rounds(elapsed if agree is None else agree(elapsed), target_s)
            round_times = timer(prepared.run_round, rounds, prepared.steps_per_round)
        record = measure.summarize(plan, prepared, round_times)
        if profile is not None:
            files.update(profile(plan.cell, prepared.step))
    except Exception as exc:
        record = failure(plan, exc)
    finally:
        prepared = None
        gc.collect()  # free this cell's buffers before the next one compiles
    record.update({k: v for k, v in files.items() if v is not None})
    return record


def _every_second(progress):
    """An on_token callback that passes "decode i/G" on to `progress` at most once a second."""
    said = [time.perf_counter()]

    def on_token(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - said[0] >= 1.0 or done == total:
            said[0] = now
            progress(f"decode {done:,}/{total:,} tokens")

    return on_token


def _generate(plan: Plan, target_s, timer, agree, on_compiled, profile, progress=None) -> dict:
    """Generations: the timer (pytest-benchmark's stats per generation) or the engine's loop
    runs them; the record comes from the generation's own timers."""
    gen, files = None, {}
    try:
        gen = generate.prepare(plan)
        if progress is not None:
            gen.on_token = _every_second(progress)
        if on_compiled is not None:
            files["hlo_file"] = on_compiled(plan.cell, gen.decode, "decode")
            files["prefill_hlo_file"] = on_compiled(plan.cell, gen.prefill, "prefill")
        start = time.perf_counter()
        gen.run_round(record=False)  # the warm-up generation, timed to plan the rounds
        if timer is None:
            generate.time_generations(gen, target_s)
        else:
            rounds = plan_rounds(agree(time.perf_counter() - start), target_s)
            rounds = min(max(rounds, generate.MIN_ROUNDS), generate.MAX_ROUNDS)
            timer(gen.run_round, rounds, None)
        record = generate.summarize(gen)
        if profile is not None:  # one more generation, untimed and unrecorded
            files.update(profile(plan.cell, lambda: gen.run_round(False), 1))
    except Exception as exc:
        record = failure(plan, exc)
    finally:
        gen = None
        gc.collect()
    record.update({k: v for k, v in files.items() if v is not None})
    return record
