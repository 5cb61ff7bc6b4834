"""The report's tables: built once from flat rows, rendered as HTML and as Markdown.

A table is a list of columns (optionally under group headers such as "train" and "infer")
and rows of cells; a cell may span several columns, e.g. a failed cell's status and message
across all of its mode's metrics.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from archbench import units
from archbench.engine import xla_options
from archbench.matrix.results import columns as flat_columns
from archbench.report import compare

MODES = ("train", "infer")
VARIANT_KEYS = ("variant", "remat", "xla_options")  # each a row of its own in the main table


@dataclass
class Cell:
    """One table cell: its text, a tooltip, a CSS class (num, fail, best, na) and a span."""

    text: str = ""
    title: str = ""
    cls: str = ""
    span: int = 1
    dot: str = ""  # a colour: a swatch before the text (the run's colour in the plots)


@dataclass
class Table:
    """Columns under optional groups [(label, span)], rows of cells, and a CSS class."""

    columns: list[str]
    rows: list[list[Cell]]
    groups: list[tuple[str, int]] = field(default_factory=list)
    cls: str = ""
    row_classes: list[str] = field(default_factory=list)


def num(text: str, title: str = "") -> Cell:
    return Cell(text, title, "num")


# ---- rendering --------------------------------------------------------------------------------


def to_html(table: Table) -> str:
    esc = html.escape
    starts, i = set(), 0  # first column of every group after the first gets a rule
    for _, span in table.groups:
        starts.add(i)
        i += span
    starts.discard(0)
    out = [f'<div class="scroll"><table class="{esc(table.cls)}"><thead>']
    if table.groups:
        out.append("<tr>")
        for j, (label, span) in enumerate(table.groups):
            cls = " ".join(c for c in ("group" if label else "", "gstart" if j else "") if c)
            out.append(
                f'<th colspan="{span}"' + (f' class="{cls}"' if cls else "") + f">{esc(label)}</th>"
            )
        out.append("</tr>")
    heads = [
        f'<th class="gstart">{esc(c)}</th>' if j in starts else f"<th>{esc(c)}</th>"
        for j, c in enumerate(table.columns)
    ]
    out.append("<tr>" + "".join(heads) + "</tr></thead><tbody>")
    for i, row in enumerate(table.rows):
        tds, col = [], 0
        for c in row:
            cls = " ".join(x for x in (c.cls, "gstart" if col in starts else "") if x)
            col += c.span
            attrs = f' class="{cls}"' if cls else ""
            attrs += f' colspan="{c.span}"' if c.span > 1 else ""
            attrs += f' title="{esc(c.title)}"' if c.title else ""
            dot = f'<i class="dot" style="background:{esc(c.dot)}"></i>' if c.dot else ""
            tds.append(f"<td{attrs}>{dot}{esc(c.text)}</td>")
        row_cls = table.row_classes[i] if i < len(table.row_classes) else ""
        out.append((f'<tr class="{row_cls}">' if row_cls else "<tr>") + "".join(tds) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def to_markdown(table: Table) -> str:
    """A pipe table; grouped columns are named 'group column', spans fill their first column."""
    names = []
    if table.groups:
        i = 0
        for label, span in table.groups:
            for c in table.columns[i : i + span]:
                names.append(f"{label} {c}".strip())
            i += span
    else:
        names = list(table.columns)
    lines = ["| " + " | ".join(map(_md_escape, names)) + " |"]
    lines.append(
        "|" + "|".join("---:" if _numeric(table, j) else "---" for j in range(len(names))) + "|"
    )
    for row in table.rows:
        texts = []
        for c in row:
            text = _md_escape(c.text)
            texts.append(f"**{text}**" if c.cls == "famrow" and text else text)
            texts.extend([""] * (c.span - 1))
        lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines)


def _numeric(table: Table, j: int) -> bool:
    """Whether column j holds numbers in every row where it is a cell of its own."""
    seen = False
    for row in table.rows:
        i = 0
        for c in row:
            if i == j and c.span == 1 and c.text:
                if c.cls not in ("num", "best"):
                    return False
                seen = True
            i += c.span
    return seen


# ---- which cell stands for an (arch, size) in the main table ----------------------------------


def headline_rows(rows: list[dict]) -> list[dict]:
    """Per run, architecture and size, the cells of one configuration (both modes).

    The configuration is the fewest devices (dp where it ran, else one strategy), the run's
    most common dtype and sequence length, and the largest batch that ran (the largest measured
    when none did).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    rows = [r for r in rows if r["mode"] in MODES]  # generate cells have a section of their own
    for r in rows:
        groups[(r["run"], r["arch"], r["size"], *map(r.get, VARIANT_KEYS))].append(r)
    dtype_count = Counter((r["run"], r["dtype"]) for r in rows)
    out = []
    for group in groups.values():
        devices = min(r["devices"] or 1 for r in group)
        group = [r for r in group if (r["devices"] or 1) == devices]
        strategies = {r.get("sharding") or "dp" for r in group}
        strategy = "dp" if "dp" in strategies else min(strategies)
        group = [r for r in group if (r.get("sharding") or "dp") == strategy]
        run = group[0]["run"]
        dtype = max(
            sorted({r["dtype"] for r in group}, key=str), key=lambda d: dtype_count[(run, d)]
        )
        group = [r for r in group if r["dtype"] == dtype]
        seq_count = Counter(r["seq_len"] for r in group)
        seq = max(seq_count, key=lambda s: (seq_count[s], -(s or 0)))
        group = [r for r in group if r["seq_len"] == seq]
        ran = [r["batch"] or 0 for r in group if r["status"] == "ok"]
        batch = max(ran or [r["batch"] or 0 for r in group])
        out.extend(r for r in group if (r["batch"] or 0) == batch)
    return out


def _sort_key(r: dict):
    return (r.get("family") or "", r["arch"], units.size_rank(r["size"]))


SHORT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}


def config_text(r: dict) -> str:
    """'b=32 fp32', plus devices and sequence length where they apply."""
    parts = [f"b={r['batch']}", SHORT_DTYPES.get(r["dtype"], str(r["dtype"]))]
    if (r.get("devices") or 1) > 1:
        parts.append(f"×{r['devices']} dev")
    if (r.get("sharding") or "dp") != "dp":
        parts.append(str(r["sharding"]))
    if r.get("seq_len"):
        parts.append(f"T={r['seq_len']}")
    parts += [str(r["variant"])] if r.get("variant") else []
    parts += [f"remat {r['remat']}"] if r.get("remat") else []
    return " ".join(parts) + xla_options.label(r.get("xla_options"))


# ---- the tables -------------------------------------------------------------------------------


def _tflops(r):
    return num(f"{r['tflops_per_s']:.3g}" if r.get("tflops_per_s") is not None else "")


def _flops(r):  # executed (XLA's count), and the model's (MFU's) where they differ: remat, MoE
    done, model = r.get("flops_per_step"), r.get("model_flops_per_step")
    extra = f" (model {units.count(model)})" if model not in (None, done) else ""
    return num(units.count(done) + extra, "executed FLOPs (XLA's count); model: MFU's")


def _samples(r):
    tokens = r.get("tokens_per_s")
    return num(
        units.count(r.get("samples_per_s")), f"{units.count(tokens)} tokens/s" if tokens else ""
    )


# (column, the flat key it shows, its cell); a column no headline cell has data for is left out.
METRICS = [
    (
        "step time",
        "step_time_s",
        lambda r: num(
            units.seconds_spread(r.get("step_time_s"), r.get("step_time_iqr_s")), "median ± IQR"
        ),
    ),
    ("samples/s", "samples_per_s", _samples),
    ("TFLOP/s", "tflops_per_s", _tflops),
    ("MFU", "mfu", lambda r: num(units.percent(r.get("mfu")), "model FLOPs utilisation")),
    ("FLOPs/step", "flops_per_step", _flops),
    (
        "compiled",
        "compiled_bytes",
        lambda r: num(
            units.nbytes(r.get("compiled_bytes")), "compiled footprint (XLA memory analysis)"
        ),
    ),
    ("peak", "peak_bytes", lambda r: num(units.nbytes(r.get("peak_bytes")), "device peak memory")),
    ("compile", "compile_s", lambda r: _compile_time(r)),
]


def _compile_time(r: dict) -> Cell:
    """The step's compile time; a `*` where it was loaded from JAX's compilation cache."""
    cached = r.get("compile_cache") == "hit"
    lower = f"lower {units.seconds(r.get('lower_s'))}"
    return num(
        units.seconds(r.get("compile_s")) + ("*" if cached else ""),
        lower + ("; * loaded from JAX's compilation cache" if cached else ""),
    )


def failure_cell(r: dict, span: int) -> Cell:
    err = (r.get("error") or "").strip()
    first = err.splitlines()[0] if err else ""
    text = f"{r['status']}: {first[:120]}" if first else str(r["status"])
    return Cell(text, err, "fail", span)


def present_metrics(rows: list[dict]) -> tuple[list, list[str]]:
    """The METRICS some row has a value for, and the names of those none has."""
    shown = [
        m for m in METRICS if any(r.get(m[1]) is not None for r in rows if r["status"] == "ok")
    ]
    if not shown:  # nothing ran: one column for the failures to span
        return METRICS[:1], []
    return shown, [m[0] for m in METRICS if m not in shown]


def main_table(rows: list[dict], colors: dict[str, str] | None = None) -> tuple[Table, list[str]]:
    """One row per architecture and size (and run), train and infer side by side.

    Returns the table and the metric columns left out for want of data in any run.
    """
    several_runs = len({r["run"] for r in rows}) > 1
    headline = sorted(headline_rows(rows), key=_sort_key)
    modes = [m for m in MODES if any(r["mode"] == m for r in headline)]
    metrics, missing = present_metrics(headline)
    by_cell: dict[tuple, dict] = {}
    for r in headline:
        variant = tuple(map(r.get, VARIANT_KEYS))  # rows of their own
        key = (r.get("family") or "", r["arch"], r["size"], r["run_index"], variant)
        by_cell.setdefault(key, {})[r["mode"]] = r
    times: dict[tuple, list[float]] = defaultdict(list)  # to mark the fastest of several runs
    for (_, arch, size, _, variant), cell in by_cell.items():
        for mode, r in cell.items():
            if r["status"] == "ok" and r.get("step_time_s"):
                times[(arch, size, variant, mode)].append(r["step_time_s"])
    best = {k: min(v) for k, v in times.items() if len(v) > 1}
    # Active parameters (those one token uses) get a column when some model has fewer than
    # all its parameters active (a Mixture of Experts); results before the key have none.
    sparse = any(r.get("active_params") not in (None, r.get("params")) for r in headline)
    lead = ["architecture", "params", *(["active params"] if sparse else [])]
    lead += [*(["run"] if several_runs else []), "config"]
    width = len(lead) + len(metrics) * len(modes)
    out_rows, row_cls, family, arch_size = [], [], None, None
    for (fam, arch, size, _, variant), cell in by_cell.items():
        if fam != family:
            family = fam
            out_rows.append([Cell(fam, cls="famrow", span=width)])
            row_cls.append("famrow")
        any_row = next(iter(cell.values()))
        run = any_row["run"]
        params = next((r["params"] for r in cell.values() if r.get("params")), None)
        out_row = [Cell(f"{arch}/{size}"), num(units.count(params), units.plain(params))]
        if sparse:
            active = next(
                (r["active_params"] for r in cell.values() if r.get("active_params")), None
            )
            out_row.append(num(units.count(active), units.plain(active)))
        out_row += [Cell(run, run, "run", dot=(colors or {}).get(run, ""))] if several_runs else []
        out_row.append(Cell(config_text(any_row)))
        for mode in modes:
            r = cell.get(mode)
            if r is None:
                out_row.append(Cell("not measured", "", "na", len(metrics)))
            elif r["status"] != "ok":
                out_row.append(failure_cell(r, len(metrics)))
            else:
                cells = [fn(r) for _, _, fn in metrics]
                if several_runs and r["step_time_s"] == best.get((arch, size, variant, mode)):
                    cells[0].cls, cells[0].title = "best", "fastest run; median ± IQR"
                out_row.extend(cells)
        out_rows.append(out_row)
        row_cls.append("first" if several_runs and (arch, size) != arch_size else "")
        arch_size = (arch, size)
    columns = lead + [m[0] for m in metrics] * len(modes)
    groups = [("", len(lead))] + [(m, len(metrics)) for m in modes]
    return Table(columns, out_rows, groups, "main", row_cls), missing


def full_table(rows: list[dict]) -> Table:
    """Every key of every flat row, unabridged: the numbers behind everything else."""
    cols = [
        "run",
        *flat_columns(
            [{k: v for k, v in r.items() if k not in ("run", "run_index")} for r in rows]
        ),
    ]
    out = []
    for r in rows:
        out.append(
            [
                Cell(
                    units.plain(r.get(c)),
                    repr(r.get(c)) if isinstance(r.get(c), float) else "",
                    "num"
                    if isinstance(r.get(c), int | float) and not isinstance(r.get(c), bool)
                    else "",
                )
                for c in cols
            ]
        )
    return Table(cols, out, cls="full")


def environment_table(runs) -> Table:
    """One column per run: where and with what it was measured."""
    fields = list(dict.fromkeys(k for run in runs for k in run.env))
    rows = [[Cell(f), *(Cell(str(run.env.get(f, ""))) for run in runs)] for f in fields]
    return Table(["", *(run.label for run in runs)], rows, cls="env")


def failed_table(rows: list[dict]) -> Table:
    """Failed cells with their whole error message."""
    out = [
        [
            Cell(r["run"]),
            Cell(compare.describe_key(compare.cell_key(r))),
            Cell(r["status"], cls="bad"),
            Cell(r.get("error") or "", cls="bad"),
        ]
        for r in rows
    ]
    return Table(["run", "cell", "status", "error"], out, cls="failed")
