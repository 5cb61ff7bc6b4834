"""`archbench report FILE...`: flat rows of one or more results files, and the HTML report.

The flat outputs are a table of (option, writer) pairs, OUTPUTS: `--json`, `--csv` (a file,
or '-' for stdout) and `--table` (text on stdout). The HTML and Markdown report
(archbench.report.document) is written when `-o` or `--md` asks for it, or when no flat output
is asked for.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from archbench.engine.roofline import ACCELERATORS, accelerator_names
from archbench.errors import UserError
from archbench.matrix import results
from archbench.report.document import write_report
from archbench.text import format_table

HELP = "HTML/Markdown report, or flat rows (--json, --csv, --table)"
DEFAULT_HTML = "report.html"

TABLE_COLUMNS = [
    "arch",
    "size",
    "mode",
    "batch",
    "dtype",
    "devices",
    "status",
    "params",
    "step_time_s",
    "samples_per_s",
    "tflops_per_s",
    "compile_s",
    "device_kind",
]


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `archbench report` that ask for the HTML and Markdown report."""
    p.add_argument(
        "-o",
        "--out",
        metavar="HTML",
        help=f"HTML report (default: {DEFAULT_HTML}, when no other output is asked for)",
    )
    p.add_argument("--md", metavar="FILE", help="Markdown report; plots go to <stem>_files/")
    p.add_argument(
        "--roofline",
        metavar="NAMES",
        help="also each cell's roofline bound on these accelerators, e.g. h100,v5e "
        f"(bounds, not measured; known: {', '.join(ACCELERATORS)})",
    )
    p.add_argument(
        "--runs",
        nargs="+",
        default=[],
        metavar="DIR",
        help="training run directories (or their parent, e.g. runs/) to draw curves from",
    )


def check_output(option: str, target: str | None, inputs: list[str]) -> None:
    """Refuse an output path that is one of the input files or a directory (one-line error)."""
    if not target or target == "-":
        return
    for f in inputs:
        try:
            if os.path.samefile(target, f):
                raise UserError(f"{option} {target} is one of the input files")
        except OSError:
            pass
    if Path(target).is_dir():
        raise UserError(f"{option} {target} is a directory")


def write_reports(args, default_html: bool = True) -> int:
    """Write the reports asked for by -o/--md (report.html when neither is, if default_html)."""
    html_out = args.out or (DEFAULT_HTML if default_html and not args.md else None)
    for option, target in (("-o", html_out), ("--md", args.md)):
        check_output(option, target, args.files)
    try:
        written = write_report(args.files, html_out, args.md, args.runs, _accelerators(args))
    except OSError as e:  # a plot beside --md on a full disk (the reports: results.WriteError)
        raise UserError(f"{e.filename or args.md}: cannot write it ({e.strerror or e})") from None
    for path in written:
        print(f"archbench: wrote {path}", file=sys.stderr)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="results files of `archbench run`")
    p.add_argument("--json", metavar="FILE|-", help="flat rows as a JSON array ('-': stdout)")
    p.add_argument("--csv", metavar="FILE|-", help="flat rows as CSV ('-': stdout)")
    p.add_argument("--table", action="store_true", help="a short text table on stdout")
    add_report_arguments(p)


def emit(target: str, text: str) -> None:
    """Write `text` to the file `target`, or to stdout for '-'."""
    if target == "-":
        sys.stdout.write(text)
    else:
        results.write_atomic(target, text)


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def _accelerators(args) -> list[str]:
    return accelerator_names(args.roofline) if getattr(args, "roofline", None) else []


ROOFLINE_COLUMNS = ["cell_id", "accelerator", "basis", "binding_roof", "roofline_bound_s"]
ROOFLINE_COLUMNS += ["step_time_s", "roofline_efficiency"]


def roofline_text(rows: list[dict], names: list[str]) -> str:
    """Each cell's roofline on its own device (measured, or compiled only) and its bounds on
    the accelerators `names`, one line each: bounds and measured times in columns apart."""
    from archbench.report.roofline import entries

    found = [{k: _fmt(e.get(k)) for k in ROOFLINE_COLUMNS} for e in entries(rows, names)]
    return format_table(found, ROOFLINE_COLUMNS)


def text_table(rows: list[dict]) -> str:
    """The flat rows as a terminal table; "variant" and "remat" columns where any row has one."""
    columns = list(TABLE_COLUMNS)
    at = columns.index("devices") + 1
    for key in ("variant", "remat"):
        if any(r.get(key) for r in rows):
            columns.insert(at, key)
            at += 1
    return format_table([{k: _fmt(r.get(k)) for k in columns} for r in rows], columns)


# (args attribute, writer(rows, value)) for every flat output; a set attribute selects it.
OUTPUTS: list[tuple[str, Callable[[list[dict], object], None]]] = [
    ("json", lambda rows, target: emit(target, results.to_json(rows))),
    ("csv", lambda rows, target: emit(target, results.to_csv(rows))),
    ("table", lambda rows, _: print(text_table(rows))),
]


def run(args) -> int:
    names = _accelerators(args)  # an unknown accelerator: one line, before any output
    chosen = [(name, writer) for name, writer in OUTPUTS if getattr(args, name, None)]
    for name, _ in chosen:  # never write a report over one of its inputs
        target = getattr(args, name)
        if isinstance(target, str):
            check_output(f"--{name}", target, args.files)
    wants_report = not chosen or args.out or args.md
    rows = results.flat_rows(args.files)  # a bad file: UserError naming it, before any output
    for name, writer in chosen:
        writer(rows, getattr(args, name))
    if names and args.table:
        print(roofline_text(rows, names))
    if wants_report:
        return write_reports(args)
    return 0
