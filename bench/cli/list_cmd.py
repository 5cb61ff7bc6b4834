"""`archbench list`: every architecture and size with its parameter counts."""

from __future__ import annotations

import argparse
import json

from archbench import archs
from archbench.archs import plugins
from archbench.engine.cell import can_remat
from archbench.errors import UserError
from archbench.text import format_table

HELP = "architectures, sizes and parameter counts"


def list_rows(pattern: str = "*") -> list[dict]:
    """One row per (architecture, size) with its parameter count, counted from shapes alone,
    and its active parameters (those one token uses: fewer for a Mixture of Experts)."""
    rows = []
    for name, size in archs.cells(pattern):
        spec = archs.get(name)
        s = spec.size(size)
        params, active_params = archs.param_counts(name, size)
        rows.append(
            {
                "arch": name,
                "family": spec.family,
                "size": size,
                "params": params,
                "active_params": active_params,
                "published_params": s.published_params,
                "published_active_params": s.published_active_params,
                "input": s.input.describe(),
                "task": spec.task,
                "outputs": spec.num_outputs(size),
                "canonical": s.canonical,
                "source": s.source or None,
                "variants": list(spec.variants),  # for --variant
                "remat": can_remat(spec),  # whether --remat applies to its train cells
                "plugin": plugins.ORIGIN.get(name),  # None: a built-in family
            }
        )
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="wildcard over names, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    add_plugin_argument(p)


def add_plugin_argument(p: argparse.ArgumentParser) -> None:
    """--plugin, shared by list, run and train."""
    p.add_argument(
        "--plugin",
        action="append",
        metavar="FILE.py|MODULE",
        help="load architectures from a Python file or module that calls archbench.register "
        "(repeatable; installed plugins load by themselves)",
    )


def run(args) -> int:
    plugins.load_files(args.plugin)
    if not archs.names(args.pattern):
        raise UserError(
            f"no architecture matches {args.pattern!r}; valid: {', '.join(archs.names())}"
        )
    rows = list_rows(args.pattern)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(
            format_table(
                rows,
                ["arch", "family", "size", "params", "active_params", "input", "task", "canonical"],
            )
        )
    return 0
