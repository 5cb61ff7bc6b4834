"""The `archbench` command: a thin front door over library functions the tests call too.

Each subcommand is a module of archbench.cli registered in COMMANDS. Bad input ends in one
line on stderr and exit status 2, never a traceback (archbench.cli.exits; set ARCHBENCH_DEBUG=1
to see one).
"""

from __future__ import annotations

import argparse
import os

import jax

from archbench import archs
from archbench.cli import compare_cmd, list_cmd, report_cmd, run_cmd, train_cmd
from archbench.cli.exits import guarded


class CliError(archs.UserError):
    """A user error found by the CLI itself: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage plus the error; keep it to one line
        raise CliError(f"{self.prog}: {message}")


# Each subcommand is a module with HELP, add_arguments(parser) and run(args) -> exit status.
COMMANDS = {
    "list": list_cmd,
    "compare": compare_cmd,
    "run": run_cmd,
    "report": report_cmd,
    "train": train_cmd,
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="archbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP, description=command.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    # archbench uses the "rbg" PRNG: with the default threefry, initialising a model compiles
    # a random-number kernel per parameter shape (ResNet tiny: 16 s of CPU against 3 s).
    # Set through the environment so that subprocesses (the matrix) inherit it.
    os.environ.setdefault("JAX_DEFAULT_PRNG_IMPL", "rbg")
    jax.config.update("jax_default_prng_impl", os.environ["JAX_DEFAULT_PRNG_IMPL"])

    def run() -> int:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command].run(args)

    return guarded(run)
