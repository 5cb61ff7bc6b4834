"""`archbench compare BASE NEW`: speedups per cell and per family, and the regression gate."""

from __future__ import annotations

import argparse
import math

from archbench.errors import UserError
from archbench.report.compare import compare_files, format_comparison, regressions

HELP = "speedups between two runs or accelerators"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE", help="results file of the reference run")
    p.add_argument("new", metavar="NEW", help="results file of the run to compare with BASE")
    p.add_argument(
        "--threshold",
        type=float,
        metavar="PCT",
        help="exit 1 when a cell is slower by more than PCT percent beyond the runs' spread",
    )


def run(args) -> int:
    if args.threshold is not None and not (math.isfinite(args.threshold) and args.threshold >= 0):
        raise UserError(f"--threshold must be a finite percentage >= 0, got {args.threshold:g}")
    cmp = compare_files(args.base, args.new)
    print(format_comparison(cmp, args.threshold))
    if args.threshold is not None and regressions(cmp.pairs, args.threshold):
        return 1
    return 0
