"""The `archbench` command: a thin front door over library functions the tests call too.

Each subcommand is a pair (add_arguments(parser), run(args) -> exit code) registered in
COMMANDS. Bad input ends in one line on stderr and exit status 2, never a traceback
(set ARCHBENCH_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

import jax

import archs
from bench import compare, report_cli, run_cli, train_cmd


class CliError(archs.UserError):
    """A user error found by the CLI itself: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage plus the error; keep it to one line
        raise CliError(f"{self.prog}: {message}")


def comma_list(text: str) -> list[str]:
    """Split a comma list such as 'mlp,lenet5' into its non-empty items."""
    return [item.strip() for item in text.split(",") if item.strip()]


# ---- archbench list -------------------------------------------------------------------------


def list_rows(pattern: str = "*") -> list[dict]:
    """One row per (architecture, size) with its parameter count, counted from shapes alone."""
    rows = []
    for name, size in archs.cells(pattern):
        spec = archs.get(name)
        s = spec.size(size)
        rows.append(
            {
                "arch": name,
                "family": spec.family,
                "size": size,
                "params": archs.param_count(name, size),
                "published_params": s.published_params,
                "input": s.input.describe(),
                "task": spec.task,
                "outputs": spec.num_outputs(size),
                "canonical": s.canonical,
                "source": s.source or None,
            }
        )
    return rows


def format_table(rows: list[dict], columns: list[str]) -> str:
    """Left-aligned text table; integers get thousands separators and align right."""

    def cell(v):
        if v is None:
            return ""
        return f"{v:,}" if isinstance(v, int) else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), int | None) for r in rows) for c in columns]

    def line(values):
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="wildcard over names, e.g. 'resnet*'")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")


def _run_list(args) -> int:
    if not archs.names(args.pattern):
        raise CliError(
            f"no architecture matches {args.pattern!r}; valid: {', '.join(archs.names())}"
        )
    rows = list_rows(args.pattern)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(
            format_table(rows, ["arch", "family", "size", "params", "input", "task", "canonical"])
        )
    return 0


# ---- dispatch ---------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "list": ("architectures, sizes and parameter counts", _add_list, _run_list),
    "compare": ("speedups between two runs or accelerators", compare.add_arguments, compare.run),
    "run": ("run the benchmark matrix", run_cli.add_arguments, run_cli.run),
    "report": (
        "HTML/Markdown report, or flat rows (--json, --csv, --table)",
        report_cli.add_arguments,
        report_cli.run,
    ),
    "train": (train_cmd.HELP, train_cmd.add_arguments, train_cmd.run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="archbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    # archbench uses the "rbg" PRNG: with the default threefry, initialising a model compiles
    # a random-number kernel per parameter shape (ResNet tiny: 16 s of CPU against 3 s).
    # Set through the environment so that subprocesses (the matrix) inherit it.
    os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
    jax.config.update("jax_default_prng_impl", os.environ["JAX_DEFAULT_PRNG_IMPL"])
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command][2](args)
    except archs.UserError as e:
        if os.environ.get("ARCHBENCH_DEBUG"):
            raise
        msg = str(e)
        print(msg if msg.startswith("archbench") else f"archbench: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("archbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `archbench ... | head` closed the pipe: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
        return 141


if __name__ == "__main__":
    sys.exit(main())
