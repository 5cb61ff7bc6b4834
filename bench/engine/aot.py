"""Compile only: does a cell fit a device, without running it (or even allocating it)?

The cell's state and batch are jax.ShapeDtypeStructs with the strategy's shardings, so the
step is lowered and compiled for any model size: a 7B-parameter train step compiles on a
24 GiB host. The record has the compile times, FLOPs, per-device memory from XLA's memory
analysis and the collectives, status "compiled", and, given a device's memory, whether the
step's per-device footprint (compiled_bytes) fits it.
"""

from __future__ import annotations

import math
import re

import jax

from archbench.engine import roofline
from archbench.engine.cell import Cell, batch_shards, with_unit_batch
from archbench.engine.outcome import RESULT_KEYS, failure
from archbench.engine.plan import Plan, plan_of
from archbench.engine.program import compile_cell
from archbench.errors import UserError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

# Memory per chip of known accelerators, from their datasheets (bytes).
DEVICE_MEMORY = {
    "h100": 80 * 10**9,  # NVIDIA H100 SXM5 / PCIe datasheet: 80 GB HBM3 / HBM2e
    "h200": 141 * 10**9,  # NVIDIA H200 datasheet: 141 GB HBM3e
    "a100-40gb": 40 * 10**9,  # NVIDIA A100 datasheet: 40 GB HBM2
    "a100-80gb": 80 * 10**9,  # NVIDIA A100 datasheet: 80 GB HBM2e
    "v4": 32 * 2**30,  # Google Cloud TPU v4: 32 GiB HBM per chip
    "v5e": 16 * 2**30,  # Google Cloud TPU v5e: 16 GiB HBM per chip
    "v5p": 95 * 2**30,  # Google Cloud TPU v5p: 95 GiB HBM per chip
    "v6e": 32 * 2**30,  # Google Cloud TPU v6e: 32 GiB HBM per chip
}


def parse_memory(text: str) -> int:
    """'80GiB', '16 GB', '1e9' or a known device name ('h100', 'v5e') -> bytes."""
    key = text.strip().lower()
    if key in DEVICE_MEMORY:
        return DEVICE_MEMORY[key]
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?b|b)?", key)
    size = float(m[1]) * _UNITS[m[2] or ""] if m else 0.0
    if not 0 < size < math.inf:  # 1e309 is a float's infinity
        raise UserError(
            f"--device-memory {text!r}: expected a size such as 80GiB or 16GB, or one of "
            f"{', '.join(DEVICE_MEMORY)}"
        )
    return int(size)


def compile_only(
    cell: Cell | Plan, device_memory: int | None = None, target=None, on_compiled=None
) -> dict:
    """Lower and compile `cell` from abstract arguments; never runs or allocates the model.

    Args:
      cell: what to compile, resolved (archbench.engine.plan.Plan) or a Cell, resolved here
        against `target` (invalid cells raise UserError before anything is compiled).
      device_memory: bytes of one device, to say whether the step fits; None to not say.
      target: the devices to compile for (a topology this host need not have:
        archbench.engine.topology); None: this host's.
      on_compiled: called with the compiled step (jax.stages.Compiled) as soon as it exists,
        e.g. to save its HLO text (archbench.matrix.artifacts).
    Returns:
      A record with RESULT_KEYS: status "compiled" (timing keys None), or "unsupported",
      "oom" or "error" with a one-line message; it never raises for a failing model.
    """
    plan = plan_of(cell, target)
    devices = (jax.devices() if target is None else list(target))[: plan.cell.devices]
    try:
        compiled, _, facts = compile_cell(plan, devices, abstract=True)
        if on_compiled is not None:
            on_compiled(compiled)
    except Exception as exc:
        result = failure(plan, exc)
        if result["status"] == "oom" and device_memory is not None:
            # XLA's TPU compiler refuses a program larger than the device (CompileTimeHbmOom)
            result["device_memory_bytes"], result["fits"] = device_memory, False
        return result
    result = dict.fromkeys(RESULT_KEYS)
    result.update(plan.keys)
    result.update({k: v for k, v in facts.items() if k in result})
    result["status"] = "compiled"
    result["backend"], result["device_kind"] = devices[0].platform, devices[0].device_kind
    # the bounds from the compiler's own per-device counts, on the target's roofs (a TPU
    # topology's datasheet figures; this host's measured ones); nothing ran, so no efficiency
    roofs, sources = roofline.measured_roofs(devices[0], plan.cell.dtype)
    counts = (facts[k] for k in ("device_flops_per_step", "bytes_per_step", "collective_bytes"))
    result.update(roofline.record_keys(*counts, plan.cell.devices, roofs, sources))
    if device_memory is not None:
        result["device_memory_bytes"] = device_memory
        needed = result["compiled_bytes"]
        result["fits"] = None if needed is None else needed <= device_memory
    return result


def largest_batch_that_fits(
    plan: Plan | Cell, device_memory: int, limit: int = 2**16, target=None
) -> int:
    """The largest batch shards * 2**k <= limit whose compiled step fits `device_memory`,
    found by compiling only; the smallest such batch when none fits. `plan`'s batch is
    ignored (a Cell is resolved with the smallest one)."""
    if not isinstance(plan, Plan):
        plan = plan_of(with_unit_batch(plan, always=True), target)
    unit = batch_shards(plan.with_batch(1).cell)
    devices = (jax.devices() if target is None else list(target))[: plan.cell.devices]
    batch = unit
    while batch * 2 <= limit and _fits(plan.with_batch(batch * 2), devices, device_memory):
        batch *= 2
    return batch


def _fits(plan: Plan, devices, device_memory: int) -> bool:
    """Whether the cell's step compiles and needs at most `device_memory` per device (its FLOPs
    go uncounted: the search needs only XLA's buffer assignment)."""
    try:
        _, _, facts = compile_cell(plan, devices, abstract=True, count=False)
    except Exception:  # out of memory, or any other failure: the cell that fails is recorded
        return False
    needed = facts["compiled_bytes"]
    return needed is not None and needed <= device_memory
