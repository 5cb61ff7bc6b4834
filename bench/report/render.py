"""The report as a document: sections of blocks, rendered to self-contained HTML or Markdown.

A block is a paragraph (str), a tables.Table, a plots.Figure or plots.Skipped, Cards or
Details, or any object with to_html() and to_markdown() methods. HTML gets the CSS inline and every plot as an SVG data URI: no script, font or
anything else to fetch, so the file opens offline. Markdown gets the same tables, and the
plots as SVG files in a folder beside it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from archbench.report import tables
from archbench.report.plots import Figure, Skipped
from archbench.report.tables import Table


@dataclass
class Details:
    """A folded group of blocks (HTML <details>, which GitHub's Markdown renders too)."""

    summary: str
    blocks: list


@dataclass
class Card:
    """A headline box: a title, one big figure, a few lines, an accent colour."""

    title: str
    big: str
    lines: list[str]
    color: str


@dataclass
class Cards:
    cards: list[Card]


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list = field(default_factory=list)


# ---- HTML -------------------------------------------------------------------------------------

CSS = """
:root{--ink:#1d2330;--muted:#5b6475;--line:#e3e6eb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
 color:var(--ink);background:#f5f6f8}
header{background:var(--ink);color:#fff;padding:14px 24px}
header h1{margin:0;font-size:21px}
header p{margin:4px 0 0;color:#c5cad3;font-size:13px}
nav{margin-top:8px;font-size:13px}
nav a{color:#9cc3ff;margin-right:14px;text-decoration:none}
main{padding:2px 16px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px;margin:14px 0}
h2{font-size:17px;margin:0 0 8px}
p.note{color:var(--muted);margin:2px 0 10px;max-width:80em}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid var(--line);border-top:5px solid var(--c);border-radius:6px;padding:8px 14px;
 min-width:230px}
.card h3{margin:0;font-size:14px}
.card .big{font-size:26px;font-weight:650;margin:2px 0}
.card div{color:var(--muted);font-size:12px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
th,td{padding:3px 6px;border-bottom:1px solid #eceef2;white-space:nowrap;text-align:left;
 vertical-align:top}
th{background:#eef1f5;font-weight:600}
th.group{text-align:center;font-size:12px;text-transform:uppercase;letter-spacing:.08em}
.gstart{border-left:2px solid #c9cfd8}
td.num,td.best{text-align:right}
td.best{font-weight:700;color:#17803d}
td.fail{color:#b42318;background:#fff3f1;white-space:normal;min-width:14em;max-width:44em}
table.main td,table.main th{font-size:12px;padding:2px 3px}
td.run{max-width:8.5em;overflow:hidden;text-overflow:ellipsis}
td.bad{color:#b42318}
td.na{color:#98a1b0;text-align:center}
td.famrow{background:#f7f8fa;font-weight:650;padding-top:6px;color:#38414f}
tr.first td{border-top:1px solid #c9cfd8}
tbody tr:hover{background:#f3f7fd}
i.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:5px}
table.full td,table.full th{font-size:11.5px;padding:2px 5px}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(880px,1fr));gap:18px}
figure{margin:0;min-width:0}
figure.wide{grid-column:1/-1}
figure h3{font-size:14px;margin:0 0 4px}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:var(--muted)}
p.skipped{color:var(--muted);font-size:13px;margin:4px 0}
details{margin-top:10px}
details summary{cursor:pointer;font-weight:600;color:#2b5fad}
"""


def _svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def block_html(block) -> str:
    esc = html.escape
    if isinstance(block, str):
        return f'<p class="note">{esc(block)}</p>'
    if isinstance(block, Table):
        return tables.to_html(block)
    if isinstance(block, Figure):
        cls = ' class="wide"' if block.wide else ""
        return (
            f'<figure{cls} id="fig-{esc(block.name)}"><h3>{esc(block.title)}</h3>'
            f'<img alt="{esc(block.title)}" src="{_svg_data_uri(block.svg)}">'
            f"<figcaption>{esc(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, Skipped):
        return f'<p class="skipped">{esc(block.title)}: skipped, {esc(block.reason)}.</p>'
    if isinstance(block, Details):
        inner = "".join(block_html(b) for b in block.blocks)
        return f"<details><summary>{esc(block.summary)}</summary>{inner}</details>"
    if isinstance(block, Cards):
        out = []
        for c in block.cards:
            body = "".join(f"<div>{esc(line)}</div>" for line in c.lines if line)
            out.append(
                f'<div class="card" style="--c:{esc(c.color)}"><h3>{esc(c.title)}</h3>'
                f'<p class="big">{esc(c.big)}</p>{body}</div>'
            )
        return f'<div class="cards">{"".join(out)}</div>'
    if hasattr(block, "to_html"):  # a block that renders itself (archbench.report.profiles)
        return block.to_html()
    raise TypeError(f"no HTML for {type(block).__name__}")


def _section_html(s: Section) -> str:
    """A section's blocks in order; consecutive figures share a grid, skipped plots follow it."""
    inner, figures = [], []
    for b in [*s.blocks, None]:
        if isinstance(b, Figure | Skipped):
            figures.append(b)
            continue
        if figures:
            shown = "".join(block_html(f) for f in figures if isinstance(f, Figure))
            inner.append(f'<div class="plots">{shown}</div>' if shown else "")
            inner.extend(block_html(f) for f in figures if isinstance(f, Skipped))
            figures = []
        if b is not None:
            inner.append(block_html(b))
    return f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{"".join(inner)}</section>'


def to_html(title: str, subtitle: str, sections: list[Section]) -> str:
    """One self-contained page."""
    esc = html.escape
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p><nav>{nav}</nav></header>"
        f"<main>{''.join(map(_section_html, sections))}</main></body></html>\n"
    )


# ---- Markdown ---------------------------------------------------------------------------------


def block_markdown(block, plot_dir: Path) -> str:
    """Markdown of one block; a figure is written to plot_dir and linked relative to its parent."""
    if isinstance(block, str):
        return block
    if isinstance(block, Table):
        return tables.to_markdown(block)
    if isinstance(block, Figure):
        (plot_dir / f"{block.name}.svg").write_text(block.svg, encoding="utf-8")
        link = quote(f"{plot_dir.name}/{block.name}.svg")  # "rep ☃_files/": percent-encoded
        return f"**{block.title}**\n\n![{block.title}]({link})\n\n{block.caption}"
    if isinstance(block, Skipped):
        return f"*{block.title}: skipped, {block.reason}.*"
    if isinstance(block, Details):
        inner = "\n\n".join(block_markdown(b, plot_dir) for b in block.blocks)
        return f"<details><summary>{html.escape(block.summary)}</summary>\n\n{inner}\n\n</details>"
    if isinstance(block, Cards):
        rows = [
            [
                tables.Cell(c.title),
                tables.Cell(c.big),
                tables.Cell("; ".join(filter(None, c.lines))),
            ]
            for c in block.cards
        ]
        return tables.to_markdown(Table(["run", "", "details"], rows))
    if hasattr(block, "to_markdown"):
        return block.to_markdown()
    raise TypeError(f"no Markdown for {type(block).__name__}")


def to_markdown(title: str, subtitle: str, sections: list[Section], plot_dir: Path) -> str:
    """Markdown text; writes the plots as SVG files into plot_dir (created if needed)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    out = [f"# {title}", subtitle]
    for s in sections:
        out.append(f"## {s.title}")
        out.extend(block_markdown(b, plot_dir) for b in s.blocks)
    return "\n\n".join(out) + "\n"
