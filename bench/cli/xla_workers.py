"""`archbench run --xla-options a,b`: each set of XLA options in a process of its own.

XLA reads its options once per process (archbench.engine.xla_options), so a run with several
sets, or with one set this process's environment does not hold, is run by worker processes:
one `archbench run` per set, one after another, each with the set's XLA_FLAGS and
LIBTPU_INIT_ARGS in its environment and the same command line but `--xla-options` (and
`--resume` after the first, so each keeps the cells of those before it). They write one
results file; their cells differ in the `xla_options` part of their ids, so a report shows
the sets side by side.

This process starts no JAX backend (an accelerator's memory, or a TPU that one process
opens at a time, stays the workers'): it asks a short-lived process for the device facts it
needs to name --out, holds --out's lock throughout and lends it to each worker in turn
(archbench.cli.locks.lend).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from archbench.cli import locks
from archbench.engine import xla_options
from archbench.errors import UserError

_PROBE = (
    "import json; from archbench.engine.devices import device_info; "
    "print(json.dumps(device_info()))"
)


def needed(sets: list[str]) -> bool:
    """Whether `sets` need worker processes: more than one, or one this process lacks. A
    worker itself never starts more (a set it lacks is then the cells' one-line error)."""
    if len(sets) > 1:
        return True
    worker = any(xla_options.USER_PREFIX + v in os.environ for v in xla_options.VARIABLES)
    return not worker and not xla_options.is_in_force(sets[0])


def device_info() -> dict:
    """archbench.engine.devices.device_info, from a process of its own that then ends."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
        raise UserError(f"could not start JAX to find this machine's devices: {lines[-1]}")
    return json.loads(done.stdout.splitlines()[-1])


def command_line(args: argparse.Namespace, add_arguments: Callable, **changes) -> list[str]:
    """`archbench run`'s options that give `args` (with `changes`), from its parser's options:
    each that differs from its default, as --option=value."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    argv = []
    for action in parser._actions:  # argparse keeps no public list of a parser's options
        if not action.option_strings:
            continue
        value = changes.get(action.dest, getattr(args, action.dest, action.default))
        if value is None or value is False or value == action.default:
            continue
        option = max(action.option_strings, key=len)
        if action.nargs == 0:  # a switch: --resume
            argv.append(option)
        else:
            values = value if isinstance(value, list) else [value]  # --plugin, appended
            argv += [f"{option}={v}" for v in values]
    return argv


def run(args: argparse.Namespace, sets: list[str], out: Path, add_arguments: Callable) -> int:
    """Run the matrix of `args` once per set of `sets`, each in a worker process writing
    `out` (whose lock this process holds); stop at the first that cannot go on.

    Returns:
      0 when every cell ran, 1 when some failed, else the first stopping worker's status
      (2: a user error, said in its one line; 130: interrupted).
    """
    print(
        f"archbench: --xla-options {','.join(sets)}: one process each, one after another",
        file=sys.stderr,
    )
    worst = 0
    for i, name in enumerate(sets):
        later = {"resume": True, "overwrite": False} if i else {}
        argv = command_line(args, add_arguments, xla_options=name, out=str(out), **later)
        env = {**xla_options.worker_environment(name), **locks.lend(out)}
        said = " ".join(f"{v}={env[v]!r}" for v in xla_options.VARIABLES if env.get(v))
        print(f"archbench: --xla-options {name}: {said or 'no XLA options'}", file=sys.stderr)
        worker = [sys.executable, "-m", "archbench", "run", *argv]
        code = _wait(subprocess.Popen(worker, env=env, preexec_fn=xla_options.pin(name)))
        if code not in (0, 1):
            return code
        worst = max(worst, code)
    return worst


def _wait(process: subprocess.Popen) -> int:
    """The worker's exit status. Ctrl-C reaches it too: it then saves its cells and ends with
    130, which this process waits for rather than leaving it behind."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        try:
            process.wait(timeout=60)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            process.kill()
            process.wait()
        return 130
