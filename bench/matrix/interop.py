"""The matrix as pytest-benchmark's users know it: per-step stats, a straight `pytest bench/`,
and the facts a reproduction needs in machine_info.

- `per_step_stats`: a cell's pytest-benchmark stats are per step, so pytest-benchmark's own
  tools (`pytest-benchmark compare`, --benchmark-histogram, --benchmark-compare) show the
  step times `archbench report` shows.
- `straight_run`: `pytest bench/` run by hand, not through `archbench run`: the cells are
  timed even though the repository's pytest settings disable pytest-benchmark for its tests,
  and the session's header says how to choose cells.
- `machine_facts`: CPU, the XLA and JAX environment in force, archbench's version and the
  commit of the checkout it was imported from.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from pytest_benchmark.stats import Stats

from archbench.engine import xla_options
from archbench.matrix import results

# The environment a run depends on: XLA's and JAX's settings, and which accelerators are seen.
ENV_PREFIXES = ("XLA_", "JAX_", "TPU_", "LIBTPU_")
ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
EXAMPLE = "pytest bench/ --arch mlp --size tiny --mode infer --batch 4 --target-s 0.5"


def per_step_stats(stats, steps: int) -> None:
    """Make one cell's pytest-benchmark stats (`benchmark.stats`, its Metadata) per step.

    `pedantic` timed whole rounds of `steps` steps ending in one block_until_ready, as
    archbench times them. Each round divided by `steps`, with `iterations = steps`, is what
    `pedantic(..., iterations=steps)` would store, without putting a Python call per step
    inside the timed span: the timing is unchanged, only its unit.
    """
    rounds = list(stats.stats.data)
    stats.iterations = steps
    stats.stats = type(stats.stats)()  # a fresh Stats: it caches its figures
    for duration in rounds:
        stats.update(duration)  # pytest-benchmark's own division by iterations


# ---- pytest bench/ run by hand --------------------------------------------------------------


def _timing(config) -> str | None:
    """Time the cells unless this command asked not to; a line on what was decided, or None.

    The repository's pyproject.toml puts --benchmark-disable in pytest's addopts for the
    project's own tests; that is no choice of whoever runs the matrix, and together with
    --benchmark-only it is an error. A --benchmark-disable on the command line (or in
    PYTEST_ADDOPTS) is honoured: each cell then gets one round, timed by archbench alone.
    """
    if not config.getoption("benchmark_disable") or config.getoption("benchmark_enable"):
        return None
    asked = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))]
    if "--benchmark-disable" in asked or "--benchmark-disable" not in config.getini("addopts"):
        return (
            "archbench: --benchmark-disable: each cell's step time comes from one round, "
            "not timed by pytest-benchmark; drop it to time the cells"
        )
    config.option.benchmark_disable = False  # before pytest-benchmark reads it (trylast)
    return "archbench: cells timed (pyproject's --benchmark-disable is for the project's tests)"


class StraightRun:
    """pytest plugin for a matrix run by hand: its first lines say how to choose cells.

    Written at the session's start even under -q (which the repository's addopts set and
    which hides pytest's header); to stderr without pytest's terminal.
    """

    def __init__(self, lines: list[str]):
        self.lines = lines

    def pytest_sessionstart(self, session):
        terminal = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in self.lines:
            if terminal is not None:
                terminal.write_line(line)
            else:
                print(line, file=sys.stderr)


def straight_run(config, filters: dict, cells: int) -> StraightRun:
    """The plugin for `pytest bench/` run by hand; call from pytest_configure, before
    pytest-benchmark's. `filters`: the selection options as given (None: not given);
    `cells`: how many cells they select."""
    lines = [_timing(config)]
    if all(value is None for value in filters.values()):
        lines.append(
            f"archbench: no filters: the main job, {cells} cells. Choose cells with the "
            f"matrix's options, e.g. `{EXAMPLE}` (`pytest bench/ --help`: 'archbench matrix'), "
            "write a results file with --archbench-out FILE, or use `archbench run`"
        )
    return StraightRun([line for line in lines if line])


# ---- machine_info ---------------------------------------------------------------------------


def environment() -> dict[str, str]:
    """The environment variables that change what XLA and JAX do, by name, as the user set
    them: a worker of `archbench run --xla-options` has its set's options in XLA_FLAGS and
    LIBTPU_INIT_ARGS too, which machine_info["xla_options"] holds by set."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name.startswith(ENV_PREFIXES) or name in ENV_NAMES
    }
    for variable in xla_options.VARIABLES:
        env.pop(variable, None)
        if xla_options.user_value(variable):
            env[variable] = xla_options.user_value(variable)
    return dict(sorted(env.items()))


def _git(folder: Path, *args: str) -> str | None:
    try:  # --no-optional-locks: reading the status must not rewrite the checkout's index
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_commit() -> dict | None:
    """{"id": commit, "dirty": tracked files changed} of the git checkout archbench is imported
    from (not the working directory's, which pytest-benchmark's commit_info describes); None
    for an installed copy, or one git does not track."""
    package = Path(__file__).resolve().parents[1]  # bench/ in a checkout
    if _git(package, "ls-files", "--error-unmatch", "__init__.py") is None:
        return None
    commit = _git(package, "rev-parse", "HEAD")
    status = _git(package, "status", "--porcelain", "--untracked-files=no")
    if commit is None:
        return None
    return {"id": commit, "dirty": None if status is None else bool(status)}


def machine_facts() -> dict:
    """What machine_info adds to pytest-benchmark's own (whose "cpu" dict has the CPU's
    brand_raw and count) and to archbench.engine.devices.device_info (the JAX devices and
    library versions, archbench_cpu, cpu_count, xla_flags)."""
    try:
        version = metadata.version("archbench")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "archbench_version": version,
        "archbench_commit": source_commit(),
        "environment": environment(),
    }


def stats_per_step(doc: dict) -> None:
    """Make the stats of a results file written before they were per step (its marker has no
    "stats_per") per step, in place, so that a resumed run does not mix both units in one
    file. Generate cells keep theirs (one generation is one iteration in both)."""
    if doc[results.MARKER].get("stats_per") is not None:
        return
    for row in doc["benchmarks"]:
        stats, info = row.get("stats"), row.get("extra_info") or {}
        steps = info.get("steps_per_round")
        usable = stats and stats.get("data") and steps and stats.get("iterations") == 1
        if not usable or info.get("mode") == "generate":
            continue
        per_step = Stats()
        for duration in stats["data"]:
            per_step.update(duration / steps)
        row["stats"] = {**per_step.as_dict(), "data": per_step.data, "iterations": steps}
