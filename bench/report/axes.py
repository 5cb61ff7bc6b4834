"""The report's axis sections: cells that differ in one field only, side by side.

A field of archbench.engine.fields that names `compare` keys (the optimizer: step time, state
bytes per parameter, memory) gets a section of its own: a row per cell that ran with a value
of that field other than none, each compared key with its ratio to the same cell (every other
field equal, same run) at the field's default. A new axis with such keys gets its section
without a line here.
"""

from __future__ import annotations

from archbench import units
from archbench.engine import fields, xla_options
from archbench.report.tables import SHORT_DTYPES, Cell, Table, failure_cell, num


def _label(r: dict, field: fields.Field | None = None) -> str:
    text = f"{r['arch']}/{r['size']} {r['mode']} b={r['batch']}"
    text += f" {SHORT_DTYPES.get(r['dtype'], r['dtype'])}"
    if (r.get("devices") or 1) > 1:
        text += f" ×{r['devices']} dev {r.get('sharding') or 'dp'}"
    text += f" T={r['seq_len']}" if r.get("seq_len") else ""
    text += f" {r['variant']}" if r.get("variant") else ""
    if field is not None and field.name == "xla_options":  # the section's own column says it
        return text
    return text + xla_options.label(r.get("xla_options"))


def _show(key: str, value) -> Cell:
    """A value in the unit its key names: seconds, bytes, a fraction, else a count."""
    if key.endswith("_s"):
        return num(units.seconds(value))
    if key.endswith("_bytes"):
        return num(units.nbytes(value))
    if key in ("mfu", "hfu"):
        return num(units.percent(value))
    return num(units.count(value) if value is None or value >= 1000 else f"{value:.3g}")


def axis_table(field: fields.Field, rows: list[dict]) -> Table | None:
    """One row per cell with a value of `field`, each of its `compare` keys beside its ratio
    to the same cell at the field's default; None when no cell has a value."""
    same = ("run", *fields.names(without=(field.name,)))
    key = lambda r: tuple(r.get(k) for k in same)  # noqa: E731
    default = field.default
    picked = [r for r in rows if r.get(field.name) is not None]
    if not {r.get(field.name) for r in picked} - {default}:
        return None  # only the default: nothing to compare
    base = {key(r): r for r in picked if r.get(field.name) == default and r.get("status") == "ok"}
    order = {v: i for i, v in enumerate(field.choices or ())}
    picked.sort(key=lambda r: (*map(str, key(r)), order.get(r[field.name], 99)))
    out = []
    for r in picked:
        head = [Cell(r["run"]), Cell(_label(r, field)), Cell(str(r[field.name]))]
        if r.get("status") != "ok":
            out.append([*head, failure_cell(r, 2 * len(field.compare))])
            continue
        b = base.get(key(r), {})
        cells = []
        for k in field.compare:
            mine, theirs = r.get(k), b.get(k)
            cells.append(_show(k, mine))
            ok = mine is not None and theirs
            cells.append(num(units.ratio(mine / theirs) if ok else "", f"{k} over {default}"))
        out.append([*head, *cells])
    columns = ["run", "cell", field.name]
    for k in field.compare:
        columns += [k.replace("_", " "), f"vs {default}"]
    return Table(columns, out, cls=field.name)


def axis_sections() -> list[fields.Field]:
    """The fields that have a section of their own."""
    return [f for f in fields.FIELDS if f.compare]
