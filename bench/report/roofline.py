"""The report's roofline: which roof binds each cell, its efficiency, and its bounds elsewhere.

Each cell's record holds its three bounds on the device it ran on (or, compiled only, was
compiled for) and its efficiency = bound / measured step time (archbench.engine.roofline).
`--roofline h100,v5e` projects every measured or compiled cell onto other accelerators: the
same per-device counts (FLOPs, bytes, collective bytes of this run's compiled program) on
their datasheet roofs. A projection is a bound, not a measurement: it has columns and tables
of its own, never a step time's column.

Rows of the section: `entries(rows, names)` gives one flat entry per cell and roof set, with
`basis` "measured" (the record's own roofline, on the device it ran on), "compiled" (compiled
only: bounds, no step time) or "bound, not measured" (a projection); archbench.roofline
returns the same entries as a DataFrame. The jaxpr's own FLOP count and the per-operation
rooflines of profiled cells have sections of their own (counts, operations).
"""

from __future__ import annotations

from archbench import units
from archbench.engine import roofline
from archbench.report.tables import SHORT_DTYPES, Cell, Table, num

MEASURED, COMPILED, PROJECTED = "measured", "compiled", "bound, not measured"
BOUND_KEYS = ("arithmetic_intensity", "compute_bound_s", "memory_bound_s", "comm_bound_s")
BOUND_KEYS += ("roofline_bound_s", "roofline_serial_s", "binding_roof")
ENTRY_KEYS = ("cell_id", "run", "arch", "size", "mode", "batch", "dtype", "devices", "family")


def _has_counts(row: dict) -> bool:
    return row.get("status") in ("ok", "compiled") and row.get("flops_per_step") is not None


def entries(rows: list[dict], names=()) -> list[dict]:
    """One flat entry per cell and roof set: the cell's own (measured, or compiled only) where
    its record has a roofline, then one per accelerator in `names` (a projection)."""
    out = []
    for r in (r for r in rows if _has_counts(r)):
        head = {k: r.get(k) for k in ENTRY_KEYS}
        if r.get("roofline_bound_s") is not None:
            basis = MEASURED if r["status"] == "ok" else COMPILED
            shared = r.get("backend") == "cpu"
            out.append(
                {
                    **head,
                    "accelerator": r.get("device_kind"),
                    "basis": basis,
                    "shared": shared,
                    "device_flops_per_step": roofline.row_counts(r)[0],
                    "peak_flops_per_s": _times(r.get("peak_tflops"), 1e12),
                    "memory_bytes_per_s": r.get("peak_bandwidth_bytes_per_s"),
                    **{k: r.get(k) for k in BOUND_KEYS},
                    "step_time_s": r.get("step_time_s") if basis == MEASURED else None,
                    "roofline_efficiency": r.get("roofline_efficiency"),
                }
            )
        for name in names:
            out.append({**head, **project(r, name)})
    return out


def _times(x, scale):
    return None if x is None else x * scale


def project(row: dict, name: str) -> dict:
    """The bounds of a flat row's step on accelerator `name` (roofline.ACCELERATORS)."""
    roofs = roofline.datasheet_roofs(name, row.get("dtype") or "float32")
    flops, device_bytes, collective, devices = roofline.row_counts(row)
    return {
        "accelerator": name,
        "basis": PROJECTED,
        "shared": False,
        "device_flops_per_step": flops,
        "peak_flops_per_s": roofs.flops_per_s,
        "memory_bytes_per_s": roofs.memory_bytes_per_s,
        **roofline.bounds(flops, device_bytes, collective, devices, roofs),
        "step_time_s": None,
        "roofline_efficiency": None,
    }


def _model(e: dict) -> Cell:
    dtype = SHORT_DTYPES.get(e["dtype"], str(e["dtype"]))
    devices = f" ×{e['devices']}" if (e.get("devices") or 1) > 1 else ""
    return Cell(f"{e['arch']}/{e['size']} {e['mode']} b={e['batch']} {dtype}{devices}")


def _bounds(e: dict) -> list[Cell]:
    intensity = e.get("arithmetic_intensity")
    return [
        num("" if intensity is None else f"{intensity:.3g}", "FLOPs / byte accessed"),
        *(num(units.seconds(e.get(k))) for k in ("compute_bound_s", "memory_bound_s")),
        num(units.seconds(e.get("comm_bound_s"))),
        num(units.seconds(e.get("roofline_bound_s")), "the largest of the three"),
        num(units.seconds(e.get("roofline_serial_s")), "their sum: no overlap at all"),
        Cell(e.get("binding_roof") or ""),
    ]


BOUND_COLUMNS = ["FLOP/B", "compute", "memory", "comm.", "bound", "no overlap", "binds"]


def measured_table(found: list[dict]) -> Table | None:
    """The cells' own rooflines: bounds on the device they ran on, step time, efficiency."""
    mine = [e for e in found if e["basis"] != PROJECTED]
    if not mine:
        return None
    out = []
    for e in mine:
        efficiency = e.get("roofline_efficiency")
        out.append(
            [
                Cell(e["run"] or ""),
                _model(e),
                *_bounds(e),
                num(units.seconds(e.get("step_time_s")), "measured median step time"),
                Cell(
                    units.percent(efficiency) if efficiency is not None else e["basis"],
                    "bound / measured step time",
                    "num" if efficiency is not None and efficiency <= 1 else "fail",
                ),
            ]
        )
    columns = ["run", "cell", *BOUND_COLUMNS, "step time", "efficiency"]
    return Table(columns, out, cls="roofline")


def projection_table(found: list[dict], name: str) -> Table | None:
    """Every cell's bounds on accelerator `name`: bounds, not measurements."""
    mine = [e for e in found if e["basis"] == PROJECTED and e["accelerator"] == name]
    if not mine:
        return None
    out = [[Cell(e["run"] or ""), _model(e), *_bounds(e)] for e in mine]
    columns = ["run", "cell", *BOUND_COLUMNS[:4], f"bound on {name} (not measured)"]
    return Table([*columns, *BOUND_COLUMNS[5:]], out, cls="roofline")


NOTE = (
    "Three lower bounds on a step's time from its compiled program's per-device counts: "
    "compute = FLOPs / peak FLOP/s for the cell's dtype, memory = bytes accessed / memory "
    "bandwidth, communication = collective result bytes / interconnect bandwidth "
    "(bidirectional per chip). The bound is the largest, which “binds”; “no overlap” is their "
    "sum. Efficiency = bound / measured step time (above 100%: the roof or the count is off). "
    "Roofs: datasheets for known accelerators; on this host, the measured matmul peak and "
    "memory pass, which simulated devices share, their interconnect being that memory."
)


def roofline_section(rows: list[dict], labels: list[str], names=()):
    """The Roofline section (archbench.report.render.Section), or None without a cell to show."""
    from archbench.report.render import Section
    from archbench.report.roofline_plot import roofline_figure

    found = entries(rows, names)
    if not found:
        return None
    blocks = [NOTE]
    table = measured_table(found)
    if table is not None:
        blocks.append(table)
    for name in names:
        projected = projection_table(found, name)
        if projected is not None:
            roofs = roofline.datasheet_roofs(name, "bfloat16").name
            blocks += [f"On {name} ({roofs}, datasheet roofs): bounds, not measured.", projected]
    blocks.append(roofline_figure(found))
    return Section("Roofline", "roofline", blocks)
