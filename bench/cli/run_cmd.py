"""`archbench run`: check the filters and the results file, then run the matrix under pytest.

Everything a user can get wrong is checked here, before pytest starts and before the results
file is touched; the matrix itself (archbench/matrix/test_matrix.py) runs in this process through
`pytest.main`, with a progress bar on stderr.

A multi-process job (--coordinator ... or --distributed auto; archbench.cli.processes)
runs the matrix in a supervised child process that joins the job before anything touches a
device; every process runs every cell, process 0 alone checks and writes --out and prints.
`--split K/N` runs one shard of the selected cells. Several sets of XLA options
(--xla-options) run one process each (archbench.cli.xla_workers), as XLA reads its options
once per process.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from archbench.archs import plugins
from archbench.cli import locks, processes, xla_workers
from archbench.cli.list_cmd import add_plugin_argument
from archbench.engine import distributed, fields
from archbench.errors import UserError
from archbench.matrix import artifacts, results, session

HELP = "run the benchmark matrix"
RESULTS_DIR = Path("results")


def add_arguments(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("filters (comma lists; default: the main job)")
    for field in fields.FIELDS:  # one option per cell field (archbench.engine.fields)
        f.add_argument(field.option, dest=field.name, help=field.help)
    _add_output_arguments(p)
    _add_compile_arguments(p)
    _add_capture_arguments(p)
    add_plugin_argument(p)
    s = p.add_argument_group(
        "scale out (docs/multihost.md)",
        "Several processes (hosts) run one matrix together: start the same command on each; "
        "process 0 writes --out, the others only compute.",
    )
    s.add_argument(
        "--split",
        metavar="K/N",
        help="run only the K-th of N disjoint shards of the selected cells (every N-th cell "
        "from the K-th); merge the files with `archbench report a.json b.json`",
    )
    processes.add_arguments(s)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """Where the results go, and what becomes of a file that is already there."""
    p.add_argument(
        "--out",
        help=f"results file (default: {RESULTS_DIR}/<backend>-<date>-<time>.json; "
        "with --resume, the newest one of this backend)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the cells already in --out; run only those missing or failed",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _add_compile_arguments(p: argparse.ArgumentParser) -> None:
    """Compiling without running: here, or for a TPU slice this host need not have."""
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="lower and compile each cell from shapes alone (nothing is allocated or run): "
        "compile time, FLOPs, per-device memory, collectives",
    )
    p.add_argument(
        "--device-memory",
        help="memory of one device, e.g. 80GiB, or h100, h200, v5e...: marks each compiled "
        "cell fits or not; with --batch auto, the largest batch that fits",
    )
    p.add_argument(
        "--target-topology",
        metavar="TOPOLOGY",
        help="compile each cell for a TPU slice this host need not have, e.g. v5e:2x2, "
        "v5p:2x2x2 (implies --compile-only; --devices defaults to the slice's; "
        "--device-memory to its chips'); needs pip install 'archbench[tpu]'",
    )


def _add_capture_arguments(p: argparse.ArgumentParser) -> None:
    """How long each cell is timed, and the files kept beside the results."""
    p.add_argument(
        "--target-s",
        type=float,
        help="seconds of timed rounds per cell (default: 1.5)",
    )
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="after each cell's timed rounds, a jax.profiler trace of a few more steps in "
        "DIR/<cell_id>/ (xprof --logdir DIR, or the Perfetto file in it: ui.perfetto.dev)",
    )
    p.add_argument(
        "--dump-hlo",
        metavar="DIR",
        help="each cell's optimized HLO as compiled, DIR/<cell_id>.hlo.txt, to diff two runs",
    )


def device_slug(info: dict) -> str:
    """'cpu', or the backend and device kind: 'gpu-nvidia-h100-80gb-hbm3'."""
    backend = str(info.get("backend", "unknown"))
    kind = re.sub(r"[^a-z0-9]+", "-", str(info.get("device_kind", "")).lower()).strip("-")
    return backend if kind in ("", backend) else f"{backend}-{kind}"


def resolve_out(out: str | None, resume: bool, info: dict) -> Path:
    """The results file: --out, else the newest of this device's files when resuming, else a
    new name under results/."""
    if out:
        return Path(out)
    slug = device_slug(info)
    if resume:
        mine = sorted(RESULTS_DIR.glob(f"{slug}-[0-9]*.json"), key=lambda p: p.stat().st_mtime)
        if mine:
            return mine[-1]
    return RESULTS_DIR / f"{slug}-{datetime.now():%Y%m%d-%H%M%S}.json"


def check_out(
    path: Path, resume: bool, overwrite: bool, info: dict, target: str | None = None
) -> dict | None:
    """The results already in `path`, after checking that this run may write it; `target`
    is the TPU topology compiled for (--target-topology), None for this host's devices."""
    existing = results.check_out_file(path)  # not archbench's: UserError, left untouched
    if existing is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {path}: cannot create its folder ({e.strerror})") from None
        if not os.access(path.parent, os.W_OK):
            raise UserError(f"--out {path}: its folder is not writable")
        return None
    if not resume and not overwrite:
        raise UserError(
            f"{path} already holds {len(existing['benchmarks'])} cell(s); "
            "pass --resume to add to it, --overwrite to replace it, or another --out"
        )
    if resume:
        old = existing.get("machine_info", {})
        for key in ("backend", "device_kind"):
            if old.get(key) not in (None, info.get(key)):
                raise UserError(
                    f"{path} was measured on {old.get(key)!r}, this machine is "
                    f"{info.get(key)!r}; resume it there or choose another --out"
                )
        targets = {
            (r.get("extra_info") or {}).get("target_topology") for r in existing["benchmarks"]
        }
        if targets - {target}:
            theirs = ", ".join(sorted(t or "this host" for t in targets - {target}))
            raise UserError(
                f"{path} holds cells compiled for {theirs}, this run is for "
                f"{target or 'this host'}; choose another --out"
            )
    return existing


def pytest_args(args, out: Path | None) -> list[str]:
    """The command line of the matrix: the suite, isolated from the project's pytest setup.
    `out` None: write no results file (the processes of a multi-process job but process 0)."""
    suite = Path(session.__file__).with_name("test_matrix.py")
    argv = [
        str(suite),
        "-o",
        "addopts=",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:terminal",
        "-p",  # pytest-benchmark turns its timers off where xdist is loaded: never split cells
        "no:xdist",
        # its warnings would go to the terminal report, which is off, and it ends the session with
        # two full garbage collections: up to a second in a process that holds many programs
        "-p",
        "no:unraisableexception",
        "--benchmark-enable",
        # pytest-benchmark makes its storage folder (./.benchmarks) as it starts, though
        # archbench never saves there: point it at the temporary folder, not the user's
        f"--benchmark-storage=file://{tempfile.gettempdir()}",
        "--archbench-progress",
    ]
    if out is not None:
        argv += ["--archbench-out", str(out)]
    for name in fields.NAMES:
        value = getattr(args, name)
        if value is not None:
            argv.append(f"--{name.replace('_', '-')}={value}")
    if args.split is not None:
        argv.append(f"--split={args.split}")
    if args.target_s is not None:
        argv.append(f"--target-s={args.target_s}")
    if args.resume:
        argv.append("--archbench-resume")
    if args.compile_only:
        argv.append("--compile-only")
    if args.device_memory is not None:
        argv.append(f"--device-memory={args.device_memory}")
    if args.target_topology is not None:
        argv.append(f"--target-topology={args.target_topology}")
    if args.profile is not None:
        argv.append(f"--archbench-profile={args.profile}")
    if args.dump_hlo is not None:
        argv.append(f"--dump-hlo={args.dump_hlo}")
    return argv


def summary(path: Path) -> tuple[str, int]:
    """One line on what `path` holds, and the exit status: 1 if any cell failed (a cell that
    its strategy or variant does not support here is not a failure)."""
    rows = results.flat_rows([path])
    failed = [r for r in rows if r["status"] not in ("ok", "compiled", "unsupported")]
    unsupported = [r["cell_id"] for r in rows if r["status"] == "unsupported"]
    compiled = [r for r in rows if r["status"] == "compiled"]
    ok = len(rows) - len(failed) - len(unsupported) - len(compiled)
    line = f"archbench: {len(rows)} cell(s) in {path}: {ok} ok"
    if compiled:
        fit = [r for r in compiled if r.get("fits") is not None]
        line += f", {len(compiled)} compiled only"
        if fit:
            line += f" ({sum(bool(r['fits']) for r in fit)} of {len(fit)} fit the device memory)"
    if unsupported:
        line += f", {len(unsupported)} unsupported (by their strategy or variant here)"
    if failed:
        named = [f"{r['cell_id']} ({r['status']})" for r in failed[:5]]
        line += f", {len(failed)} failed: " + ", ".join(named) + (", ..." if failed[5:] else "")
    return line, 1 if failed else 0


def run(args) -> int:
    from archbench.engine import aot
    from archbench.matrix import cells

    # before the filters are checked, and before a multi-process job forks its child, which
    # inherits the registrations
    plugins.load_files(args.plugin)
    if args.target_s is not None and not 0 < args.target_s < math.inf:
        raise UserError(f"--target-s {args.target_s}: must be a positive number of seconds")
    if args.target_topology is not None:
        from archbench.engine import topology

        target = topology.devices(args.target_topology)  # no TPU compiler: one line, exit 2
        args.compile_only = True
        if args.devices is None:
            args.devices = str(len(target))
    if args.device_memory is not None:
        if not args.compile_only:
            raise UserError("--device-memory says whether compiled cells fit: add --compile-only")
        aot.parse_memory(args.device_memory)  # a bad size: one line, before anything runs
    if args.profile is not None and args.compile_only:
        raise UserError("--profile traces steps that run; --compile-only runs none: drop one")
    artifacts.check_dir("--profile", args.profile)
    artifacts.check_dir("--dump-hlo", args.dump_hlo)
    cells.parse_split(args.split)
    job = processes.parse(
        args.coordinator,
        args.num_processes,
        args.process_id,
        args.distributed,
        args.distributed_timeout,
    )
    sets = fields.BY_NAME["xla_options"].values(args.xla_options)  # unknown: one line
    if xla_workers.needed(sets):
        if job is not None:
            raise UserError(
                "a multi-process job runs one set of XLA options, in force in every process: "
                "set XLA_FLAGS for it on each (archbench.engine.xla_options)"
            )
        return run_in_workers(args, sets)
    if job is None:
        return run_matrix(args)
    if args.batch and cells.AUTO in cells.comma_list(args.batch) and not args.compile_only:
        raise UserError(
            "--batch auto searches by running out of memory, which the processes of a "
            "multi-process job cannot do in step; give batch sizes (or use --compile-only)"
        )

    def work() -> int:
        processes.initialize(job)  # before anything touches a JAX device
        return run_matrix(args)

    return processes.supervise(work, job)


def run_in_workers(args, sets: list[str]) -> int:
    """Each set of XLA options in a process of its own (archbench.cli.xla_workers), all
    writing --out, which this process holds; it starts no JAX backend itself."""
    info = xla_workers.device_info() if args.out is None or args.resume else {}
    out = resolve_out(args.out, args.resume, info)
    with locks.results_file(out):  # another run on it: one line, exit 2
        check_out(out, args.resume, args.overwrite, info, args.target_topology)
        return xla_workers.run(args, sets, out, add_arguments)


def run_matrix(args) -> int:
    """Run the matrix `args` asks for (in each process of a multi-process job alike); process 0
    holds the lock on --out throughout (archbench.cli.locks)."""
    with contextlib.ExitStack() as held:
        return _run_matrix(args, held)


def where(info: dict, args, target) -> str:
    """Where the cells run, for the header: 'on cpu', or the TPU slice they are compiled for."""
    if target is not None:  # compiled here for devices elsewhere: name those
        return (
            f"for {args.target_topology} ({len(target)} {target[0].device_kind} devices), "
            f"compiled on this {device_slug(info)} host"
        )
    processes = f" x {info['process_count']} processes" if info["process_count"] > 1 else ""
    return f"on {device_slug(info)}{processes}"


def _run_matrix(args, held: contextlib.ExitStack) -> int:
    import pytest

    from archbench.engine import measure
    from archbench.matrix import cells

    target = None
    if args.target_topology is not None:
        from archbench.engine import topology

        target = topology.devices(args.target_topology)
    requests = cells.select(
        **{name: getattr(args, name) for name in fields.NAMES}, split=args.split, target=target
    )
    info = measure.device_info()
    main = distributed.is_main()  # process 0 checks and writes the results file, and speaks
    out, problem = None, None
    if main:
        try:
            out = resolve_out(args.out, args.resume, info)
            held.enter_context(locks.results_file(out))  # another run on it: one line, exit 2
            check_out(out, args.resume, args.overwrite, info, args.target_topology)
        except UserError as e:
            problem = str(e)
    problem = distributed.agreed(problem)  # every process starts the matrix, or none does
    if problem:
        raise UserError(problem if main else f"process 0 did not start: {problem}")
    if main:
        print(
            f"archbench: {len(requests)} cell(s) {where(info, args, target)} -> {out}",
            file=sys.stderr,
        )
    argv = pytest_args(args, out)
    if info["process_count"] > 1:
        # native output (a fatal error's reason) reaches archbench's supervisor, not pytest's
        # capture, and a Python traceback of an abort goes with it to its log, not to stderr
        argv += ["--capture=sys", "-p", "no:faulthandler"]
    code = pytest.main(argv)
    if code == session.WRITE_FAILED:  # a full disk: the session said so in one line
        return 2
    if code == pytest.ExitCode.INTERRUPTED:
        if main:
            print(
                f"archbench: interrupted; finished cells are in {out} (--resume)", file=sys.stderr
            )
        return 130
    if code == pytest.ExitCode.NO_TESTS_COLLECTED and (not main or out.exists()):
        if main:
            print(f"archbench: every selected cell is already in {out}", file=sys.stderr)
    elif code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        raise UserError(f"the matrix did not run (pytest exit status {int(code)})")
    if not main:
        return 1 if code == pytest.ExitCode.TESTS_FAILED else 0
    if not out.exists():
        raise UserError(f"no cell was measured; {out} not written")
    line, status = summary(out)
    print(line, file=sys.stderr)
    return 1 if code == pytest.ExitCode.TESTS_FAILED else status
