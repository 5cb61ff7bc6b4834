"""The report's rematerialisation section: train cells run with `--remat`, against none.

A row per train cell that has a remat policy (archbench.archs._remat): its step time and
temporary memory (XLA's memory analysis: the activations a backward pass keeps are
temporaries), each with its ratio to the same cell without rematerialisation (policy "none",
else the same cell run without --remat), the model's FLOPs (the step without recomputation,
what MFU counts) and the executed ones (with it, what HFU counts), MFU and HFU.
"""

from __future__ import annotations

from archbench import units
from archbench.engine import fields
from archbench.report.tables import SHORT_DTYPES, Cell, Table, failure_cell, num

# What makes two cells the same cell but for their remat policy.
SAME_CELL = ("run", *fields.names(without=("remat",)))
ORDER = {"none": 0, "dots": 1, "full": 2}  # most memory kept first


def _key(r: dict) -> tuple:
    return tuple(r.get(k) for k in SAME_CELL)


def remat_rows(rows: list[dict]) -> list[dict]:
    """The train cells with a remat policy, grouped by cell, "none" first."""
    picked = [r for r in rows if r.get("remat") and r.get("mode") == "train"]
    return sorted(
        picked,
        key=lambda r: (*(str(v) for v in _key(r)), ORDER.get(r["remat"], 9), str(r["remat"])),
    )


def _baselines(rows: list[dict]) -> dict[tuple, dict]:
    """Per cell, the row without rematerialisation: policy "none", else no policy at all."""
    base: dict[tuple, dict] = {}
    for r in rows:
        plain = r.get("mode") == "train" and r.get("remat") in (None, "none")
        if plain and (r.get("remat") == "none" or _key(r) not in base):
            base[_key(r)] = r
    return base


def _over(r: dict, base: dict | None, key: str) -> Cell:
    mine, theirs = r.get(key), (base or {}).get(key)
    if not mine or not theirs:
        return num("")
    return num(units.ratio(mine / theirs), f"{key} over remat none")


def _flops(x: float | None) -> Cell:
    return num(units.count(x), units.plain(x))


def remat_table(rows: list[dict]) -> Table | None:
    """One row per train cell with a remat policy; None when there is none."""
    picked = remat_rows(rows)
    if not picked:
        return None
    base = _baselines(rows)
    out = []
    for r in picked:
        label = f"{r['arch']}/{r['size']} b={r['batch']} {SHORT_DTYPES.get(r['dtype'], r['dtype'])}"
        if (r.get("devices") or 1) > 1:
            label += f" ×{r['devices']} dev {r.get('sharding') or 'dp'}"
        label += f" T={r['seq_len']}" if r.get("seq_len") else ""
        label += f" {r['variant']}" if r.get("variant") else ""
        head = [Cell(r["run"]), Cell(label), Cell(str(r["remat"]))]
        if r.get("status") not in ("ok", "compiled"):
            out.append([*head, failure_cell(r, 8)])
            continue
        b = base.get(_key(r))
        out.append(
            [
                *head,
                num(units.seconds_spread(r.get("step_time_s"), r.get("step_time_iqr_s"))),
                _over(r, b, "step_time_s"),
                num(units.nbytes(r.get("temp_bytes"))),
                _over(r, b, "temp_bytes"),
                _flops(r.get("model_flops_per_step")),
                _flops(r.get("flops_per_step")),
                num(units.percent(r.get("mfu")), "model FLOPs / step time / peak"),
                num(units.percent(r.get("hfu")), "executed FLOPs / step time / peak"),
            ]
        )
    columns = ["run", "cell", "remat", "step time", "vs none", "temporaries", "vs none"]
    columns += ["model FLOPs", "executed FLOPs", "MFU", "HFU"]
    return Table(columns, out, cls="remat")


NOTE = (
    "Train cells run with --remat: each block's activations are recomputed in the backward "
    "pass instead of kept, by policy: none (all kept), dots (matmul results kept, the rest "
    "recomputed), full (only the block's inputs kept). Step time and temporaries (XLA's "
    "memory analysis, per device) with their ratio to the same cell under remat none. Model "
    "FLOPs are the step's without recomputation, executed FLOPs with it (XLA's cost analysis "
    "of each compiled step); MFU counts model FLOPs, HFU executed ones, both against the "
    "device's peak."
)
