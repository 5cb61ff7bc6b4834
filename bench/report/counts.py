"""The report's "Two FLOP counts" section: XLA's count of each cell beside its jaxpr's.

A row per cell that recorded jax.experimental.roofline's count (archbench.engine.jaxpr_cost):
XLA's FLOPs of the compiled step, the model FLOPs MFU counts where they differ, the jaxpr's
FLOPs and their ratio, the jaxpr's unfused bytes against XLA's (what fusion saves), and the
bytes one device sends by each count, with the reason a count is partial or missing. Results
files older than the count have no such rows, and no section.
"""

from __future__ import annotations

from archbench import units
from archbench.report.axes import _label
from archbench.report.tables import Cell, Table, failure_cell, num

NOTE = (
    "Each cell's FLOPs as XLA counts its compiled step (cost analysis, all devices together; "
    "recurrent models unrolled) beside the count of the step's jaxpr by "
    "jax.experimental.roofline's rules, before XLA optimises or fuses anything (every scan's "
    "body counted once per trip). XLA / jaxpr over 1 means XLA counts more. Bytes: the jaxpr's "
    "operands and results of every operation unfused, over XLA's bytes accessed after fusion "
    "(for recurrent models XLA's bytes are of the unrolled program before fusion). Sent per "
    "device: the collectives of one device's program under the cell's mesh (jaxpr: jax's "
    "ring model of a dp or fsdp step; XLA: the result bytes of the collectives it compiled "
    "in). docs/performance.md, “Two FLOP counts”, explains the families where the counts "
    "differ by more than 5%."
)


def _flops(x) -> Cell:
    return num(units.count(x), units.plain(x))


def _ratio(a, b, title: str) -> Cell:
    return num(units.ratio(a / b) if a is not None and b else "", title)


def counted_rows(rows: list[dict]) -> list[dict]:
    """The rows that carry a jaxpr count or the reason for its absence."""
    return [r for r in rows if r.get("jaxpr_flops") is not None or r.get("jaxpr_reason")]


def counts_table(rows: list[dict]) -> Table | None:
    """One row per counted cell; None when no cell was counted."""
    picked = counted_rows(rows)
    if not picked:
        return None
    out = []
    for r in sorted(picked, key=lambda r: (str(r.get("run")), _label(r))):
        head = [Cell(str(r.get("run", ""))), Cell(_label(r))]
        if r.get("status") not in ("ok", "nonfinite", "compiled"):
            out.append([*head, failure_cell(r, 9)])
            continue
        xla, jaxpr, model = r.get("flops_per_step"), r.get("jaxpr_flops"), None
        if r.get("model_flops_per_step") not in (None, xla):
            model = r["model_flops_per_step"]
        out.append(
            [
                *head,
                _flops(xla),
                _flops(model),
                _flops(jaxpr),
                _ratio(xla, jaxpr, "XLA's FLOPs over the jaxpr's"),
                num(units.nbytes(r.get("jaxpr_unfused_bytes"))),
                num(units.nbytes(r.get("bytes_per_step"))),
                _ratio(r.get("jaxpr_unfused_bytes"), r.get("bytes_per_step"), "unfused / XLA"),
                num(units.nbytes(r.get("jaxpr_comm_bytes"))),
                num(units.nbytes(r.get("collective_bytes"))),
                Cell(r.get("jaxpr_reason") or "", f"uncounted: {r.get('jaxpr_uncounted')}"),
            ]
        )
    columns = ["run", "cell", "XLA FLOPs", "model FLOPs", "jaxpr FLOPs", "XLA / jaxpr"]
    columns += ["jaxpr bytes", "XLA bytes", "unfused / XLA", "sent (jaxpr)", "sent (XLA)"]
    return Table([*columns, "jaxpr count note"], out, cls="counts")
