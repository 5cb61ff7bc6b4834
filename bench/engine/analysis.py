"""What XLA and the runtime say about a program: FLOPs, bytes, compiled memory, peak memory.

Cost analysis counts a while loop's body once, whatever its trip count: a `lax.scan` over T
steps reports the FLOPs of one step. archbench.engine.measure therefore re-lowers recurrent models fully
unrolled to count every step, and `loop_undercount` flags any loop of matmuls left over.
"""

from __future__ import annotations

import re
import resource
import sys
from collections.abc import Sequence
from typing import Any

import jax


def _as_dict(analysis: Any) -> dict:
    """Cost analysis is a dict in jax 0.10; older versions returned a list with one dict."""
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    return dict(analysis or {})


MATMULS = frozenset({"dot_general", "conv_general_dilated", "ragged_dot_general"})


def _subjaxprs(eqn):
    """The jaxprs inside an equation's parameters (loop bodies, branches, nested calls)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            inner = getattr(item, "jaxpr", item)  # a ClosedJaxpr wraps its Jaxpr
            if hasattr(inner, "eqns"):
                yield inner


def _has_matmul(jaxpr) -> bool:
    return any(
        eqn.primitive.name in MATMULS or any(_has_matmul(s) for s in _subjaxprs(eqn))
        for eqn in jaxpr.eqns
    )


def _rolled(eqn) -> bool:
    if eqn.primitive.name == "while":
        return True
    if eqn.primitive.name == "scan":
        unroll = eqn.params.get("unroll", 1)
        return not (unroll is True or unroll >= eqn.params["length"])
    return False


def loop_undercount(jaxpr) -> bool:
    """Whether `jaxpr` (a step's, from `jitted.trace(...).jaxpr`) has a rolled scan or while loop
    with a matmul or convolution in its body, whose FLOPs XLA's cost analysis counts only once.

    Loops without matmuls (such as the PRNG's) are ignored: their FLOPs are negligible.
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        inner = list(_subjaxprs(eqn))
        if _rolled(eqn) and any(_has_matmul(s) for s in inner):
            return True
        if any(loop_undercount(s) for s in inner):
            return True
    return False


def cost(stage: jax.stages.Lowered | jax.stages.Compiled) -> tuple[float | None, float | None]:
    """(FLOPs, bytes accessed) of one call of a lowered or compiled program, None if unknown.

    A compiled program is analysed after XLA's optimisations (fusion lowers the bytes); a
    lowered one before them, so its bytes count every intermediate and are an upper bound.
    """
    analysis = _as_dict(stage.cost_analysis())
    flops, accessed = analysis.get("flops"), analysis.get("bytes accessed")
    return (
        None if flops is None else float(flops),
        None if accessed is None else float(accessed),
    )


def unpartitioned_flops(lowered: jax.stages.Lowered, step_fn, args) -> float | None:
    """FLOPs of one global step before partitioning: the model's work, as on one device.

    A step lowered for devices this host does not have (a TPU topology's: there is no backend
    here to analyse its lowering) is lowered once more from the same shapes, unsharded, for
    this host's backend; the program before partitioning is the same.
    """
    try:
        return cost(lowered)[0]
    except jax.errors.JaxRuntimeError:
        plain = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
        return cost(step_fn.lower(*plain))[0]


def compiled_memory(compiled: jax.stages.Compiled) -> dict:
    """Per-device buffer sizes of a compiled program (XLA's buffer assignment), in bytes.

    argument_bytes, output_bytes, temp_bytes (scratch), alias_bytes (outputs that reuse a
    donated argument's buffer) and compiled_bytes = argument + output + temp - alias, the
    device memory the program needs while it runs. All None where the backend has no analysis.
    """
    stats = compiled.memory_analysis()
    keys = ("argument_bytes", "output_bytes", "temp_bytes", "alias_bytes", "compiled_bytes")
    if stats is None:
        return dict.fromkeys(keys)
    argument = int(stats.argument_size_in_bytes)
    output = int(stats.output_size_in_bytes)
    temp = int(stats.temp_size_in_bytes)
    alias = int(stats.alias_size_in_bytes)
    return dict(
        zip(keys, (argument, output, temp, alias, argument + output + temp - alias), strict=True)
    )


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f16": 2, "bf16": 2, "s16": 2, "u16": 2}
_DTYPE_BYTES |= {"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
# A result is an array or a tuple of them; TPU layouts nest parentheses in it: {1,0:T(8,128)}.
_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>\((?:[^()]|\([^()]*\))*\)|\S+)\s+(?P<op>"
    + "|".join(COLLECTIVES)
    + r")(?P<start>-start)?\("
)
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")


def _array_bytes(shape_text: str) -> list[int]:
    sizes = []
    for dtype, dims in _ARRAY.findall(shape_text):
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        sizes.append(count * _DTYPE_BYTES.get(dtype, 4))
    return sizes


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """Count and result bytes of each collective in a compiled program's HLO text.

    The bytes are the size of each collective's result on one device (for an asynchronous
    `-start` op, the last array of its tuple: the result, not the operands it carries).
    A collective is counted once per channel: XLA's TPU compiler splits one asynchronous
    collective over several fusions (its start, the fusions that overlap it with compute, its
    done), each holding a copy of the collective with the same `channel_id`.
    Returns:
      {op: {"count": n, "bytes": b}} for every op in COLLECTIVES (zeros when absent).
    """
    found = {op: {"count": 0, "bytes": 0} for op in COLLECTIVES}
    channels = set()
    for m in _COLLECTIVE.finditer(hlo_text):
        end = hlo_text.find("\n", m.end())
        channel = _CHANNEL.search(hlo_text, m.end(), len(hlo_text) if end < 0 else end)
        if channel is not None:
            if (m["op"], channel[1]) in channels:
                continue  # another piece of a collective already counted
            channels.add((m["op"], channel[1]))
        sizes = _array_bytes(m["shape"])
        found[m["op"]]["count"] += 1
        found[m["op"]]["bytes"] += sum(sizes[-1:] if m["start"] else sizes)
    return found


def device_peak_bytes(devices: Sequence[jax.Device]) -> int | None:
    """Largest `peak_bytes_in_use` over this process's `devices`; None where the backend keeps
    no statistics (CPU).

    It is a high-water mark since the process started: the runtime has no way to reset it.
    """
    peaks = []
    for device in devices:
        if device.process_index != jax.process_index():
            continue  # another host's device: only its own process can read its stats
        stats = device.memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def host_peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB
