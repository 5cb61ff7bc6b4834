"""The "Speedup" section's tables: each run's step times against the first run's, per family
(geometric means) and per cell in common."""

from __future__ import annotations

from archbench import units
from archbench.report import compare
from archbench.report.tables import Cell, Table, num


def family_table(runs, comparisons) -> Table:
    """Geometric-mean speedup per family of each run against the first."""
    families = list(
        dict.fromkeys(f for cmp in comparisons for f in compare.family_geomeans(cmp.pairs))
    )
    families = [*sorted(f for f in families if f != "all"), "all"]
    rows = []
    for f in families:
        row = [Cell(f)]
        for cmp in comparisons:
            g, n = compare.family_geomeans(cmp.pairs).get(f, (None, 0))
            row.append(num(f"{units.ratio(g)} ({n})" if g else "", f"{n} cells in common"))
        rows.append(row)
    cols = ["family", *(f"{run.label} vs {runs[0].label}" for run in runs[1:])]
    return Table(cols, rows, cls="speedup")


def cell_table(comparison, label: str) -> Table:
    """Per cell in common: both step times, speedup and throughput ratio."""
    rows = []
    for p in comparison.pairs:
        rows.append(
            [
                Cell(compare.describe_key(p.key)),
                num(units.seconds_spread(p.base.get("step_time_s"), p.base.get("step_time_iqr_s"))),
                num(units.seconds_spread(p.new.get("step_time_s"), p.new.get("step_time_iqr_s"))),
                num(units.ratio(p.speedup)),
                num(units.ratio(p.throughput_ratio)),
                Cell(p.status_note(), cls="fail" if p.status_note() else ""),
            ]
        )
    cols = ["cell", "base step", f"{label} step", "speedup", "throughput", "note"]
    return Table(cols, rows, cls="speedup")
