"""`archbench report FILE...`: flat rows of one or more results files, and the HTML report.

The flat outputs are a table of (option, writer) pairs, OUTPUTS: `--json`, `--csv` (a file,
or '-' for stdout) and `--table` (text on stdout). The HTML and Markdown report is the module
bench/report.py (its own options, `-o` and `--md`, and its `run`); it runs when its options
ask for it or when no flat output is asked for.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench import report, results

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="results files of `archbench run`")
    p.add_argument("--json", metavar="FILE|-", help="flat rows as a JSON array ('-': stdout)")
    p.add_argument("--csv", metavar="FILE|-", help="flat rows as CSV ('-': stdout)")
    p.add_argument("--table", action="store_true", help="a short text table on stdout")
    report.add_arguments(p)


def emit(target: str, text: str) -> None:
    """Write `text` to the file `target`, or to stdout for '-'."""
    if target == "-":
        sys.stdout.write(text)
    else:
        results.write_atomic(target, text)


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else value


def text_table(rows: list[dict]) -> str:
    from bench.cli import format_table

    return format_table([{k: _fmt(r.get(k)) for k in TABLE_COLUMNS} for r in rows], TABLE_COLUMNS)


# (args attribute, writer(rows, value)) for every flat output; a set attribute selects it.
OUTPUTS: list[tuple[str, Callable[[list[dict], object], None]]] = [
    ("json", lambda rows, target: emit(target, results.to_json(rows))),
    ("csv", lambda rows, target: emit(target, results.to_csv(rows))),
    ("table", lambda rows, _: print(text_table(rows))),
]


def run(args) -> int:
    chosen = [(name, writer) for name, writer in OUTPUTS if getattr(args, name, None)]
    for name, _ in chosen:  # never write a report over one of its inputs
        target = getattr(args, name)
        if isinstance(target, str):
            report.check_output(f"--{name}", target, args.files)
    wants_report = not chosen or args.out or args.md
    rows = results.flat_rows(args.files)  # a bad file: UserError naming it, before any output
    for name, writer in chosen:
        writer(rows, getattr(args, name))
    if wants_report:
        return report.run(args)
    return 0
