"""The report's "Profiles" section: each cell's profiler trace and compiled HLO, linked.

`archbench run --profile DIR --dump-hlo DIR` records where it wrote them (the record's
hlo_file, prefill_hlo_file, profile_dir and perfetto_trace: archbench.matrix.artifacts). The
report reads those paths from the results file only; it links each (file:// for an absolute
path) and says how to open a trace.
"""

from __future__ import annotations

import html
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

LINKED = ("profile_dir", "perfetto_trace", "hlo_file", "prefill_hlo_file")
HEADERS = {
    "profile_dir": "trace (XProf, TensorBoard)",
    "perfetto_trace": "Perfetto trace",
    "hlo_file": "HLO",
    "prefill_hlo_file": "prefill HLO",
}


def href(path: str) -> str:
    """A link to a local file: a file:// URI for an absolute path (spaces and non-ASCII
    characters percent-encoded), else the path, quoted, relative to the report."""
    p = Path(path)
    return p.as_uri() if p.is_absolute() else quote(path)


@dataclass
class LinkTable:
    """A table whose cells are (text, path) links or plain text; renders itself."""

    columns: list[str]
    rows: list[list[tuple[str, str | None]]]

    def to_html(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(c)}</th>" for c in self.columns)
        body = []
        for row in self.rows:
            cells = []
            for text, path in row:
                if path:
                    text = f'<a href="{esc(href(path))}" title="{esc(path)}">{esc(text)}</a>'
                cells.append(f"<td>{text if path else esc(text)}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        return (
            f'<div class="scroll"><table class="profiles"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )

    def to_markdown(self) -> str:
        def cell(text, path):
            for c in "\\|[]<":
                text = text.replace(c, "\\" + c)
            return f"[{text}]({href(path)})" if path else text

        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(cell(t, p) for t, p in row) + " |" for row in self.rows]
        return "\n".join(lines)


def profile_rows(rows: list[dict]) -> list[dict]:
    """The flat rows that carry a trace or an HLO file."""
    return [r for r in rows if any(r.get(k) for k in LINKED)]


def _how_to_open(linked: list[dict]) -> str:
    roots = sorted({str(Path(r["profile_dir"]).parent) for r in linked if r.get("profile_dir")})
    text = (
        "Files written by `archbench run --profile DIR` (a jax.profiler trace of a few steps "
        "after each cell's timed rounds, which it never touches) and `--dump-hlo DIR` (the "
        "optimized HLO of each compiled program: diff two runs' files to see what the "
        "compiler did differently)."
    )
    if roots:
        logdirs = " ".join(shlex.quote(r) for r in roots)
        text += (
            " To open a trace: the Perfetto file in https://ui.perfetto.dev (Open trace file; "
            "nothing to install); or XProf, `pip install 'archbench[profile]'` then "
            f"`xprof --logdir {logdirs}` and the address it prints (Trace Viewer, op "
            "profiles, memory); or TensorBoard with its profile plugin, "
            f"`tensorboard --logdir {logdirs}`, Profile tab. Each cell's traces are under its id."
        )
    return text


def profile_section(rows: list[dict]):
    """The Profiles section (render.Section), or None when no cell has a trace or HLO file."""
    from archbench.report.render import Section

    linked = profile_rows(rows)
    if not linked:
        return None
    keys = [k for k in LINKED if any(r.get(k) for r in linked)]
    several = len({r.get("run") for r in linked}) > 1
    columns = [*(["run"] if several else []), "cell", *(HEADERS[k] for k in keys)]
    out = []
    for r in linked:
        row = [(str(r.get("run")), None)] if several else []
        row.append((str(r.get("cell_id")), None))
        for k in keys:
            path = r.get(k)
            text = "" if not path else path if k == "profile_dir" else Path(path).name
            row.append((text, path or None))
        out.append(row)
    return Section("Profiles", "profiles", [_how_to_open(linked), LinkTable(columns, out)])
