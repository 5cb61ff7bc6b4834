"""Batch "auto": the largest batch of a cell that compiles and runs."""

from __future__ import annotations

import gc

import jax

from archbench.engine import measure
from archbench.engine.cell import Cell, batch_shards, with_unit_batch
from archbench.engine.outcome import is_oom
from archbench.engine.plan import Plan, plan_of
from archbench.errors import UserError


def _try_batch(plan: Plan) -> str:
    """'ok' if `plan` compiles and runs two steps, else 'oom' or 'error'."""
    try:
        prepared = measure.prepare(plan)
        prepared.step()
        jax.block_until_ready(prepared.step())
        return "ok"
    except Exception as exc:
        status = "oom" if is_oom(exc) else "error"
    gc.collect()  # free the failed attempt's buffers (its traceback held them) before the next
    return status


def find_max_batch(plan: Plan | Cell, start: int = 1, limit: int = 4096) -> int:
    """The largest global batch devices * 2**k in [start, limit] that compiles and runs.

    From the first candidate >= `start` the batch doubles while it fits; if that first one
    runs out of memory, it halves instead until one fits. A non-memory failure stops the search
    (measuring that batch then reports the error). The plan's batch is ignored (a Cell is
    resolved, and so validated, with the smallest batch its strategy splits).
    Returns:
      The batch found, or the smallest one tried when none fits.
    """
    if not isinstance(plan, Plan):
        plan = plan_of(with_unit_batch(plan, always=True))
    unit = batch_shards(plan.with_batch(1).cell)
    batch = unit
    while batch < start:
        batch *= 2
    if batch > limit:
        raise UserError(
            f"no batch {unit}*2**k in [{start}, {limit}] for {plan.cell.devices} devices"
        )
    first = _try_batch(plan.with_batch(batch))
    if first == "oom":
        while batch > unit:
            batch //= 2
            if _try_batch(plan.with_batch(batch)) != "oom":
                break
        return batch
    if first == "error":
        return batch
    while batch * 2 <= limit and _try_batch(plan.with_batch(batch * 2)) == "ok":
        batch *= 2
    return batch
