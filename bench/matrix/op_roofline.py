"""Each operation of a profiled step against its own roofline, written beside the trace.

`archbench run --profile DIR` traces a few steps of each train or infer cell
(archbench.matrix.artifacts). This module joins that trace with the cell's compiled program:
- time: the trace's events that carry an `hlo_op` argument, from the step's program (their
  `hlo_module` argument) on one device: on a GPU or TPU its "XLA Ops" line where the trace
  has one (else every kernel of the op on that device), on the CPU the thunks XLA's runtime
  records. Each operation's time is its events' durations summed, divided by the steps traced;
- work: the operation's FLOPs and bytes from the optimized HLO (archbench.engine.hlo_cost,
  which says what is counted and what is not);
- the roof: bound = max(FLOPs / peak FLOP/s, bytes / peak bandwidth), the least time the
  operation could take on this device (archbench.engine.peaks: a datasheet, or on a CPU a
  measured matmul and copy), its efficiency = bound / time, and the time lost = time - bound.

DIR/<cell_id>/op_roofline.json holds the operations that lose the most time (TOP of them),
with totals over all: what the operations' times add up to against the step time, how much
of it the operations holding a product take (product_time_s), and the time of `hlo_op`
events the program does not name (0 unless the join is off). The record
links it as `op_roofline_file`; the report lists it ("Operations furthest below their roof").
Loops, calls and conditionals are left out where their bodies' operations are timed.
Generate cells (a prefill and decode steps, two programs) are not analysed.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from pathlib import Path

import jax

from archbench.engine import hlo_cost, peaks
from archbench.matrix import results

TOP = 20
FILE_NAME = "op_roofline.json"


def _threads(events: list[dict]) -> tuple[dict, dict]:
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") != "M":
            continue
        name = (e.get("args") or {}).get("name", "")
        if e.get("name") == "process_name":
            procs[e.get("pid")] = name
        elif e.get("name") == "thread_name":
            threads[(e.get("pid"), e.get("tid"))] = name
    return procs, threads


def op_events(trace: dict, module: str) -> list[dict]:
    """The events of one device that time the operations of program `module`."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    procs, threads = _threads(events)
    ops = [e for e in events if e.get("ph") == "X" and (e.get("args") or {}).get("hlo_op")]
    mine = [e for e in ops if str(e["args"].get("hlo_module")).split("(")[0] == module]
    ops = mine or ops
    device_pids = sorted(
        {e.get("pid") for e in ops if procs.get(e.get("pid"), "").startswith("/device:")},
        key=lambda pid: _natural(procs[pid]),
    )
    if device_pids:  # an accelerator: its first device, its "XLA Ops" line if it has one
        ops = [e for e in ops if e.get("pid") == device_pids[0]]
        line = [e for e in ops if threads.get((e.get("pid"), e.get("tid"))) == "XLA Ops"]
        return line or ops
    ordinals = {str(e["args"].get("device_ordinal", "")) for e in ops}
    first = min(ordinals, key=_natural, default="")
    return [e for e in ops if str(e["args"].get("device_ordinal", "")) == first]


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _span_per_run(events: list[dict]) -> float | None:
    """Mean time from a run's first operation's start to its last one's end, in seconds: the
    program on the device, dispatch around it left out; None without run ids."""
    runs = defaultdict(list)
    for e in events:
        run = e["args"].get("run_id")
        if run is None:
            return None
        runs[run].append(e)
    if not runs:
        return None
    spans = [max(e["ts"] + e["dur"] for e in es) - min(e["ts"] for e in es) for es in runs.values()]
    return sum(spans) / len(spans) * 1e-6


def module_name(hlo_text: str) -> str:
    m = re.match(r"\s*HloModule\s+([^\s,]+)", hlo_text)
    return m.group(1) if m else ""


def load_trace(path: str | Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _containers_with_timed_bodies(ops: dict, timed: dict) -> set[str]:
    """Loops, calls and conditionals some operation inside of which has its own time."""
    timed_comps = {ops[n].computation for n in timed}
    inside = {o.name: set(o.called) for o in ops.values() if o.kind in hlo_cost.CONTAINERS}
    by_comp = defaultdict(list)
    for o in ops.values():
        if o.kind in hlo_cost.CONTAINERS:
            by_comp[o.computation].append(o.name)
    for name in inside:  # a container's bodies, and the bodies of the containers in them
        todo = list(inside[name])
        while todo:
            comp = todo.pop()
            for nested in by_comp.get(comp, []):
                new = inside[nested] - inside[name]
                inside[name] |= new
                todo += new
    return {n for n, comps in inside.items() if comps & timed_comps}


def _row(op: hlo_cost.Op, time_s: float, peak_flops, bandwidth, step_s) -> dict:
    flops, nbytes = op.flops * op.calls, op.bytes * op.calls
    compute_s = flops / peak_flops if peak_flops else 0.0
    memory_s = nbytes / bandwidth if bandwidth else 0.0
    bound = max(compute_s, memory_s)
    return {
        "name": op.name,
        "kind": op.kind,
        "calls": op.calls,
        "time_s": time_s,
        "share": time_s / step_s if step_s else None,
        "flops": flops,
        "bytes": nbytes,
        "flops_per_s": flops / time_s if time_s > 0 else None,
        "bytes_per_s": nbytes / time_s if time_s > 0 else None,
        "bound_s": bound,
        "bound_by": "compute" if compute_s > memory_s else "memory",
        "efficiency": bound / time_s if time_s > 0 else None,
        "lost_s": time_s - bound,
        "trip_unknown": op.trip_unknown,
    }


def analyse(
    hlo_text: str, trace: dict, *, steps: int, peak_flops, bandwidth, step_time_s, top=TOP
) -> dict:
    """Every timed operation of the program against its roof; the `top` that lose the most
    time per step, and totals. Times, FLOPs and bytes are per step (one device's share).

    An operation's share is of the step in the same trace (its program's first operation to
    its last, per run), else of `step_time_s` (the record's, timed without the profiler:
    on a loaded machine the traced steps may run slower or faster than those).

    Raises:
      ValueError when the trace has no operation of the program.
    """
    ops = hlo_cost.operations(hlo_text)
    module = module_name(hlo_text)
    events = op_events(trace, module)
    if not events:
        raise ValueError(f"the trace has no operation events of {module or 'the program'}")
    time: dict[str, float] = defaultdict(float)
    for e in events:
        time[e["args"]["hlo_op"]] += e["dur"] * 1e-6 / steps
    timed = {n: t for n, t in time.items() if n in ops}
    for name in _containers_with_timed_bodies(ops, timed):
        timed.pop(name, None)
    span = _span_per_run(events)
    traced_step = span or step_time_s  # the step in the same trace, where it says which
    rows = [_row(ops[n], t, peak_flops, bandwidth, traced_step) for n, t in timed.items()]
    rows.sort(key=lambda r: r["lost_s"], reverse=True)
    ops_time = sum(timed.values())
    return {
        "program": module,
        "steps": steps,
        "step_time_s": step_time_s,
        "ops_time_s": ops_time,
        "ops_share": ops_time / step_time_s if step_time_s else None,
        "program_span_s": span,
        "unmatched_time_s": sum(t for n, t in time.items() if n not in ops),
        "ops_timed": len(rows),
        "lost_s": sum(max(r["lost_s"], 0.0) for r in rows),
        "product_flops": sum(r["flops"] for r in rows),
        # the operations holding a matrix product or convolution, against all the rest
        # (elementwise and reduction fusions, copies, transposes)
        "product_time_s": sum(r["time_s"] for r in rows if r["flops"]),
        "peak_flops_per_s": peak_flops,
        "peak_bandwidth_bytes_per_s": bandwidth,
        "ops": rows[:top],
    }


def _per_device(flops, devices):
    """XLA's FLOPs of the whole step (the record's) as one device's share, to set beside the
    operations' (all of them, elementwise ones included, where products are all we count)."""
    return flops / devices if flops and devices else flops


def write(
    profile_dir: str | Path, hlo_text: str, trace_path: str | Path, record: dict, steps: int
) -> dict:
    """Analyse a profiled cell and write DIR/<cell_id>/op_roofline.json beside its trace.

    Returns:
      {"op_roofline_file": its absolute path}, or {"op_roofline_error": one line} when the
      trace or the program cannot be read: the cell's timings and trace stand.
    """
    try:
        trace = load_trace(trace_path)  # first: a bad trace costs no bandwidth measurement
        bandwidth, bandwidth_source, _ = peaks.peak_bandwidth(jax.local_devices()[0])
        peak = record.get("peak_tflops")
        found = analyse(
            hlo_text,
            trace,
            steps=steps,
            peak_flops=peak * 1e12 if peak else None,
            bandwidth=bandwidth,
            step_time_s=record.get("step_time_s"),
        )
        found = {
            "cell_id": record.get("cell_id"),
            "device_kind": record.get("device_kind"),
            "trace": str(trace_path),
            "peak_source": record.get("peak_source"),
            "bandwidth_source": bandwidth_source,
            **found,
            "xla_flops": _per_device(record.get("flops_per_step"), record.get("devices")),
        }
        path = Path(profile_dir).absolute() / FILE_NAME
        results.write_atomic(path, json.dumps(found, indent=1) + "\n")
    except (OSError, ValueError, KeyError, TypeError, results.WriteError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        return {"op_roofline_error": f"{type(e).__name__}: {first}"[:300]}
    return {"op_roofline_file": str(path)}
