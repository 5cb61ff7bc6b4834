"""The report's sharding section: each strategy's cells against the same cell on one device.

A row is a cell that ran on several devices or under a strategy other than dp: its step time,
its scaling efficiency against the same cell (architecture, size, mode, batch, dtype,
sequence length) on one device of the same run, the per-device memory XLA's memory analysis
gives, and the collectives in its compiled program.
"""

from __future__ import annotations

from archbench import units
from archbench.engine import fields
from archbench.engine.devices import scaling_efficiency
from archbench.report.tables import Cell, Table, num

SAME_CELL = ("run", *fields.names(without=("devices", "sharding", "mesh")))


def sharded_rows(rows: list[dict]) -> list[dict]:
    """Cells on several devices or under a strategy other than dp, in a stable order."""
    picked = [r for r in rows if (r.get("devices") or 1) > 1 or (r.get("sharding") or "dp") != "dp"]
    order = {"dp": 0, "fsdp": 1, "tp": 2}
    return sorted(
        picked,
        key=lambda r: (
            *(str(r.get(k)) for k in SAME_CELL),
            r.get("devices") or 1,
            order.get(r.get("sharding"), 9),
            str(r.get("mesh")),
        ),
    )


def one_device_times(rows: list[dict]) -> dict[tuple, float]:
    """The step time of every cell that ran on one device under dp, by SAME_CELL."""
    return {
        tuple(r.get(k) for k in SAME_CELL): r["step_time_s"]
        for r in rows
        if (r.get("devices") or 1) == 1
        and (r.get("sharding") or "dp") == "dp"
        and r.get("status") == "ok"
        and r.get("step_time_s")
    }


def efficiency(row: dict, base: dict[tuple, float]) -> float | None:
    """Strong-scaling efficiency against one device (the global batch is the same)."""
    t1 = base.get(tuple(row.get(k) for k in SAME_CELL))
    if not t1 or row.get("status") != "ok" or not row.get("step_time_s"):
        return None
    return scaling_efficiency(t1, row["step_time_s"], row["devices"] or 1, True)


def _collectives(row: dict) -> Cell:
    found = row.get("collectives") or {}
    text = ", ".join(f"{op} ×{c['count']}" for op, c in found.items())
    return Cell(text or ("none" if row.get("collective_count") == 0 else ""))


def strategy_table(rows: list[dict]) -> Table | None:
    """One row per sharded cell; None when no cell was sharded."""
    picked = sharded_rows(rows)
    if not picked:
        return None
    base = one_device_times(rows)
    out = []
    for r in picked:
        head = [
            Cell(r["run"]),
            Cell(f"{r['arch']}/{r['size']} {r['mode']} b={r['batch']} {r['dtype']}"),
            num(str(r.get("devices") or 1)),
            Cell(r.get("sharding") or "dp"),
            Cell(r.get("mesh") or ""),
        ]
        if r.get("status") != "ok":
            out.append([*head, Cell(f"{r['status']}: {r.get('error') or ''}", cls="bad", span=6)])
            continue
        out.append(
            [
                *head,
                num(units.seconds_spread(r.get("step_time_s"), r.get("step_time_iqr_s"))),
                num(units.percent(efficiency(r, base))),
                num(units.nbytes(r.get("argument_bytes"))),
                num(units.nbytes(r.get("temp_bytes"))),
                num(units.nbytes(r.get("collective_bytes"))),
                _collectives(r),
            ]
        )
    columns = ["run", "cell", "devices", "strategy", "mesh", "step time", "efficiency"]
    columns += ["arguments / device", "temporaries / device", "collective bytes", "collectives"]
    return Table(columns, out, cls="strategies")
