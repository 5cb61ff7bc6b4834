"""Batch "auto": the largest batch of a cell that compiles and runs."""

from __future__ import annotations

import dataclasses
import gc

import jax

from archbench.engine import measure
from archbench.engine.cell import Cell, batch_shards, validate
from archbench.engine.outcome import is_oom
from archbench.errors import UserError


def _try_batch(cell: Cell) -> str:
    """'ok' if `cell` compiles and runs two steps, else 'oom' or 'error'."""
    try:
        prepared = measure.prepare(cell)
        prepared.step()
        jax.block_until_ready(prepared.step())
        return "ok"
    except Exception as exc:
        status = "oom" if is_oom(exc) else "error"
    gc.collect()  # free the failed attempt's buffers (its traceback held them) before the next
    return status


def find_max_batch(cell: Cell, start: int = 1, limit: int = 4096) -> int:
    """The largest global batch devices * 2**k in [start, limit] that compiles and runs.

    From the first candidate >= `start` the batch doubles while it fits; if that first one
    runs out of memory, it halves instead until one fits. A non-memory failure stops the search
    (measuring that batch then reports the error). `cell.batch` is ignored.
    Returns:
      The batch found, or the smallest one tried when none fits.
    """
    unit = batch_shards(dataclasses.replace(cell, batch=1))
    validate(dataclasses.replace(cell, batch=unit))
    batch = unit
    while batch < start:
        batch *= 2
    if batch > limit:
        raise UserError(f"no batch {unit}*2**k in [{start}, {limit}] for {cell.devices} devices")
    first = _try_batch(dataclasses.replace(cell, batch=batch))
    if first == "oom":
        while batch > unit:
            batch //= 2
            if _try_batch(dataclasses.replace(cell, batch=batch)) != "oom":
                break
        return batch
    if first == "error":
        return batch
    while batch * 2 <= limit and _try_batch(dataclasses.replace(cell, batch=batch * 2)) == "ok":
        batch *= 2
    return batch
