"""Speedups between two runs (two accelerators, two commits): `archbench compare BASE NEW`.

A cell is matched by (arch, size, mode, batch, dtype, devices, seq_len). Speedup is
base_time / new_time, so > 1 means NEW is faster; the throughput ratio is NEW over BASE.
A cell regresses when NEW is slower by more than the threshold AND by more than the two
runs' spread together (new - base > base_iqr + new_iqr), so noise alone does not fail a
comparison; a cell that ran in BASE and failed in NEW regresses too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from archbench import archs, units
from archbench.engine import xla_options
from archbench.matrix.results import CELL_KEYS, flat_rows
from archbench.text import text_table

CELL_KEY = CELL_KEYS


def cell_key(row: dict) -> tuple:
    """The identity of a cell: what must match for two measurements to be compared."""
    return tuple(row.get(k) for k in CELL_KEY)


def describe_key(key: tuple) -> str:
    """'lstm/small train b=32 float32 ×1 T=128', leaving out what is unset."""
    d = dict(zip(CELL_KEY, key, strict=True))
    parts = [f"{d['arch']}/{d['size']}", str(d["mode"]), f"b={d['batch']}", str(d["dtype"])]
    parts.append(f"×{d['devices']} dev")
    if d["seq_len"] is not None:
        parts.append(f"T={d['seq_len']}")
    if d["sharding"] not in (None, "dp") or "," in (d["mesh"] or ""):
        parts.append(f"{d['sharding']} {d['mesh']}")
    if d.get("variant"):
        parts.append(f"variant {d['variant']}")
    if d.get("remat"):
        parts.append(f"remat {d['remat']}")
    return " ".join(parts) + xla_options.label(d.get("xla_options"))


def _ok(row: dict) -> bool:
    return row.get("status") == "ok" and (row.get("step_time_s") or 0) > 0


@dataclass(frozen=True)
class Pair:
    """One cell measured in both runs."""

    key: tuple
    base: dict
    new: dict

    @property
    def family(self) -> str:
        return self.base.get("family") or self.new.get("family") or self.key[0]

    @property
    def both_ok(self) -> bool:
        return _ok(self.base) and _ok(self.new)

    @property
    def speedup(self) -> float | None:
        """base_time / new_time: 2.0 means NEW takes half the time."""
        return self.base["step_time_s"] / self.new["step_time_s"] if self.both_ok else None

    @property
    def throughput_ratio(self) -> float | None:
        """NEW samples/s over BASE samples/s."""
        b, n = self.base.get("samples_per_s"), self.new.get("samples_per_s")
        return n / b if self.both_ok and b and n else None

    @property
    def spread_s(self) -> float:
        """The two runs' spread together: base IQR + new IQR (0 where unknown)."""
        return (self.base.get("step_time_iqr_s") or 0.0) + (self.new.get("step_time_iqr_s") or 0.0)

    def regressed(self, threshold_pct: float) -> bool:
        """Slower by more than threshold_pct and by more than the spread, or newly failing."""
        if _ok(self.base) and not _ok(self.new):
            return True
        if not self.both_ok:
            return False
        base_t, new_t = self.base["step_time_s"], self.new["step_time_s"]
        slower_pct = 100.0 * (new_t / base_t - 1.0)
        return slower_pct > threshold_pct and new_t - base_t > self.spread_s

    def status_note(self) -> str:
        """'' when both ran; otherwise what failed where, e.g. 'NEW oom: out of memory'."""
        notes = []
        for side, row in (("BASE", self.base), ("NEW", self.new)):
            if not _ok(row):
                err = (row.get("error") or "").splitlines()
                notes.append(f"{side} {row.get('status')}" + (f": {err[0][:80]}" if err else ""))
        return "; ".join(notes)


def index_rows(rows: list[dict]) -> dict[tuple, dict]:
    """Cells by key; a cell measured twice in one file keeps its last measurement."""
    return {cell_key(r): r for r in rows}


def pair_cells(base_rows: list[dict], new_rows: list[dict]) -> list[Pair]:
    """Cells present in both, in BASE order."""
    base, new = index_rows(base_rows), index_rows(new_rows)
    return [Pair(k, base[k], new[k]) for k in base if k in new]


def family_geomeans(pairs: list[Pair]) -> dict[str, tuple[float | None, int]]:
    """Geometric-mean speedup and cell count per family, plus 'all' over every cell."""
    by_family: dict[str, list[float]] = defaultdict(list)
    for p in pairs:
        if p.speedup is not None:
            by_family[p.family].append(p.speedup)
    out = {f: (units.geomean(v), len(v)) for f, v in sorted(by_family.items())}
    every = [s for v in by_family.values() for s in v]
    out["all"] = (units.geomean(every), len(every))
    return out


def regressions(pairs: list[Pair], threshold_pct: float) -> list[Pair]:
    return [p for p in pairs if p.regressed(threshold_pct)]


@dataclass(frozen=True)
class Comparison:
    """Two runs' rows matched cell by cell."""

    base_path: str
    new_path: str
    pairs: list[Pair]
    only_base: int
    only_new: int


def match_rows(base_rows, new_rows, base_path="BASE", new_path="NEW") -> Comparison:
    """Match two runs' rows cell by cell (possibly none)."""
    base_keys, new_keys = set(index_rows(base_rows)), set(index_rows(new_rows))
    return Comparison(
        base_path,
        new_path,
        pair_cells(base_rows, new_rows),
        len(base_keys - new_keys),
        len(new_keys - base_keys),
    )


def compare_rows(base_rows, new_rows, base_path="BASE", new_path="NEW") -> Comparison:
    """Match two runs' rows; no cell in common is a UserError naming both files."""
    cmp = match_rows(base_rows, new_rows, base_path, new_path)
    if not cmp.pairs:
        raise archs.UserError(
            f"{base_path} and {new_path} have no cell in common (a cell is {', '.join(CELL_KEY)})"
        )
    return cmp


def compare_files(base: str, new: str) -> Comparison:
    """Load two results files (bad files raise UserError naming them) and match their cells."""
    return compare_rows(flat_rows([base]), flat_rows([new]), base, new)


# ---- text output ------------------------------------------------------------------------------


def format_comparison(cmp: Comparison, threshold_pct: float | None = None) -> str:
    """The per-cell table, the per-family geometric means and, with a threshold, the verdict."""
    header = ["cell", "base step", "new step", "speedup", "throughput", "note"]
    rows = []
    for p in cmp.pairs:
        note = p.status_note()
        if threshold_pct is not None and p.regressed(threshold_pct):
            note = ("REGRESSED " + note).strip()
        rows.append(
            [
                describe_key(p.key),
                units.seconds_spread(p.base.get("step_time_s"), p.base.get("step_time_iqr_s")),
                units.seconds_spread(p.new.get("step_time_s"), p.new.get("step_time_iqr_s")),
                units.ratio(p.speedup),
                units.ratio(p.throughput_ratio),
                note,
            ]
        )
    out = [
        f"BASE {cmp.base_path}",
        f"NEW  {cmp.new_path}",
        "speedup = base step time / new step time (> 1: NEW is faster)",
        "",
        text_table(header, rows, right={1, 2, 3, 4}),
        "",
    ]
    means = family_geomeans(cmp.pairs)
    failed = sum(not p.both_ok for p in cmp.pairs)
    if means["all"][1]:
        out.append("geometric-mean speedup per family:")
        fam_rows = [[f, units.ratio(g), str(n)] for f, (g, n) in means.items()]
        out.append(text_table(["family", "speedup", "cells"], fam_rows, right={1, 2}))
        if failed:
            out.append(f"({failed} cell(s) that failed in BASE or NEW left out: see the notes)")
    else:  # every cell in common failed on one side: no speedup to average
        out.append(f"no speedup: none of the {len(cmp.pairs)} cell(s) in common ran in both")
    if cmp.only_base or cmp.only_new:
        out.append(
            f"\nnot compared: {cmp.only_base} cells only in BASE, {cmp.only_new} only in NEW"
        )
    if threshold_pct is not None:
        bad = regressions(cmp.pairs, threshold_pct)
        out.append("")
        if bad:
            out.append(
                f"{len(bad)} cell(s) regressed by more than {threshold_pct:g}% beyond the "
                "runs' spread (base IQR + new IQR):"
            )
            out.extend(f"  {describe_key(p.key)}  {_regression_reason(p)}" for p in bad)
        else:
            out.append(f"no cell regressed by more than {threshold_pct:g}% beyond the spread")
    return "\n".join(out)


def _regression_reason(p: Pair) -> str:
    if not p.both_ok:
        return p.status_note()
    b, n = p.base["step_time_s"], p.new["step_time_s"]
    return (
        f"{units.seconds(b)} -> {units.seconds(n)} (+{100 * (n / b - 1):.1f}%, "
        f"spread {units.seconds(p.spread_s) or '0'})"
    )
