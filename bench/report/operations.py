"""The report's "Operations furthest below their roof" section: per profiled cell, the
operations of its step that lose the most time against their own roofline.

`archbench run --profile DIR` writes DIR/<cell_id>/op_roofline.json beside each train or
infer cell's trace (archbench.matrix.op_roofline) and links it in the record
(`op_roofline_file`). This is the one file beside the results the report opens: a few kB of
JSON, read as it is; a file gone since the run is a line saying so, never an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from archbench import units
from archbench.report.tables import Cell, Table, num

SHOWN = 10  # operations a cell lists in the report (the JSON keeps more)
COLUMNS = [
    *("operation", "kind", "share of step", "time", "FLOPs", "bytes", "FLOP/s", "bytes/s"),
    *("bound", "efficiency", "time lost"),
]
NOTE = (
    "Each operation of the step as XLA compiled it (a fusion, a dot, a convolution, a copy), "
    "timed in the cell's profiler trace and set against its own roofline: bound = the larger "
    "of its FLOPs over the device's peak FLOP/s and its bytes over the peak memory bandwidth, "
    "the least time it could take; efficiency = bound / time; time lost = time - bound, the "
    "order of the list. Times, FLOPs and bytes are per step on one device; a share is of the "
    "step in the same trace. FLOPs are matrix "
    "products only (dots, convolutions); bytes are each operation's operands and result "
    "(archbench.engine.hlo_cost says what is counted). On a CPU the peaks are measured (a "
    "matmul, a copy), and operations whose data stay in cache can beat the copy's bandwidth."
)


def roofline_rows(rows: list[dict]) -> list[dict]:
    """The flat rows that link a per-operation roofline file."""
    return [r for r in rows if r.get("op_roofline_file")]


def load(path: str) -> dict | None:
    """The JSON file at `path`, or None when it is gone or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _rate(x, unit: str) -> Cell:
    return num(units.count(x, unit) if x else "")


def operations_table(found: dict, shown: int = SHOWN) -> Table:
    """The `shown` operations that lose the most time, one row each."""
    out = []
    for op in found.get("ops", [])[:shown]:
        calls = f" x{op['calls']}" if op.get("calls", 1) != 1 else ""
        out.append(
            [
                Cell(op["name"] + calls, "calls per step" if calls else ""),
                Cell(op["kind"]),
                num(units.percent(op.get("share"))),
                num(units.seconds(op["time_s"])),
                num(units.count(op["flops"]) if op["flops"] else ""),
                num(units.nbytes(op["bytes"])),
                _rate(op.get("flops_per_s"), "FLOP/s"),
                _rate(op.get("bytes_per_s"), "B/s"),
                num(units.seconds(op["bound_s"]), f"bound by {op.get('bound_by')}"),
                num(units.percent(op.get("efficiency"))),
                num(units.seconds(op["lost_s"])),
            ]
        )
    return Table(list(COLUMNS), out, cls="operations")


def summary(label: str, found: dict) -> str:
    """One line: what the operations add up to against the step, and their FLOPs."""
    ops_time = units.seconds(found.get("ops_time_s"))
    parts = [f"{label}: {found.get('ops_timed', 0)} operations timed over {found.get('steps')}"]
    parts.append(f" steps, {ops_time} a step together")
    if found.get("program_span_s"):
        span = units.seconds(found["program_span_s"])
        parts.append(f", in a program that ran {span} from its first to its last")
    if found.get("step_time_s"):
        parts.append(
            f" (the step timed without the profiler: {units.seconds(found['step_time_s'])})"
        )
    if found.get("xla_flops"):
        share = units.percent(found["product_flops"] / found["xla_flops"])
        parts.append(f"; their matrix products are {share} of XLA's FLOPs for the step")
    lost = units.seconds(found.get("lost_s"))
    return "".join(parts) + f"; {lost} a step below their roofs in all."


def operations_section(rows: list[dict]):
    """The section (render.Section), or None when no cell has a per-operation roofline."""
    from archbench.report.render import Section

    linked = roofline_rows(rows)
    if not linked:
        return None
    several = len({r.get("run") for r in linked}) > 1
    blocks: list = [NOTE]
    for r in linked:
        label = f"{r.get('run')} {r.get('cell_id')}" if several else str(r.get("cell_id"))
        found = load(r["op_roofline_file"])
        if found is None:
            blocks.append(f"{label}: {r['op_roofline_file']} is gone or unreadable.")
            continue
        blocks += [summary(label, found), operations_table(found)]
    return Section("Operations furthest below their roof", "operations", blocks)
