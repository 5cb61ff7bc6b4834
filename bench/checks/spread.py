"""How steady one cell's step time is on this machine, block after block, process after process.

    python -m archbench.checks.spread --arch vit --mode infer [--size small] [--batch 32]
        [--processes 3] [--blocks 80] [--target-s 0.3] [--xla-options NAME] [--json FILE]

Each process is a fresh Python started with the option set's XLA_FLAGS and CPU affinity, as
`archbench run --xla-options` starts its workers. It prepares the cell (engine.measure), then
times `--blocks` blocks of about `--target-s` each, back to back: per block, the median step
of its rounds and the CPU seconds the process used per wall second. Printed per process: the
blocks' median and range, the slow blocks (over SLOW x that process's median) and the episodes
they form (runs of consecutive slow blocks), the CPU per second in slow and other blocks, the
threads of XLA's CPU pool (tf_XLAEigen*), and the steal time /proc/stat counted meanwhile.
docs/performance.md ("The same cell, a different speed") reads it. Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from archbench.engine import xla_options
from archbench.errors import UserError
from archbench.text import format_table

SLOW = 1.2  # a block this many times its process's median is slow


def _steal_s() -> float | None:
    """Seconds of steal time of all CPUs since boot (None where /proc/stat has none)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _xla_threads() -> int:
    tasks = Path("/proc/self/task")
    names = [(t / "comm").read_text() for t in tasks.iterdir()] if tasks.exists() else []
    return sum(name.startswith("tf_XLAEigen") for name in names)


def worker(args) -> dict:
    """This process's blocks (the `--worker` side)."""
    from archbench.engine.cell import Cell
    from archbench.engine.measure import prepare, time_rounds

    cell = Cell(args.arch, args.size, args.mode, args.batch, args.dtype)
    prepared = prepare(dataclasses.replace(cell, xla_options=args.xla_options))
    prepared.calibrate(args.min_round_s)
    steal, blocks = _steal_s(), []
    for _ in range(args.blocks):
        cpu, wall = time.process_time(), time.perf_counter()
        rounds = time_rounds(prepared, target_s=args.target_s, min_rounds=3)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        step_ms = statistics.median(rounds) / prepared.steps_per_round * 1e3
        blocks.append({"ms": step_ms, "cpu_per_s": cpu / wall})
    after = _steal_s()
    return {
        "blocks": blocks,
        "xla_threads": _xla_threads(),
        "cpus": xla_options.cpus(),
        "steal_s": None if steal is None or after is None else after - steal,
    }


def summary(i: int, found: dict) -> dict:
    ms = [b["ms"] for b in found["blocks"]]
    median = statistics.median(ms)
    slow = [b["ms"] > SLOW * median for b in found["blocks"]]
    episodes = sum(1 for j, s in enumerate(slow) if s and (j == 0 or not slow[j - 1]))

    def cpu(which: bool) -> str:
        values = [b["cpu_per_s"] for b, s in zip(found["blocks"], slow, strict=True) if s == which]
        return f"{min(values):.2f}-{max(values):.2f}" if values else "-"

    return {
        "process": i,
        "blocks": len(ms),
        "median_ms": round(median, 3),
        "range_ms": f"{min(ms):.3g}-{max(ms):.3g}",
        "slowest/fastest": round(max(ms) / min(ms), 2),
        "slow_blocks": sum(slow),
        "episodes": episodes,
        "cpu_per_s_slow": cpu(True),
        "cpu_per_s_other": cpu(False),
        "xla_threads": found["xla_threads"],
        "cpus": found["cpus"],
        "steal_s": None if found["steal_s"] is None else round(found["steal_s"], 2),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m archbench.checks.spread", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--arch", required=True)
    parser.add_argument("--size", default="small")
    parser.add_argument("--mode", default="infer", choices=("train", "infer"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--processes", type=int, default=3, help="fresh processes, in turn")
    parser.add_argument("--blocks", type=int, default=80, help="blocks per process")
    parser.add_argument("--target-s", type=float, default=0.3, help="the timing of a block")
    parser.add_argument("--min-round-s", type=float, default=0.05, help="a round lasts this")
    parser.add_argument("--xla-options", default="default", help="the processes' option set")
    parser.add_argument("--json", help="write every block to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:  # a worker resolves its own cell: the parent never starts JAX, then forks
        try:
            print(json.dumps(worker(args)))
        except UserError as e:
            print(f"spread: error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        if min(args.processes, args.blocks, args.batch) < 1 or args.target_s <= 0:
            raise UserError("--processes, --blocks and --batch must be >= 1, --target-s > 0")
        xla_options.get(args.xla_options)
    except UserError as e:
        print(f"spread: error: {e}", file=sys.stderr)
        return 2
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.arch} {args.size} {args.mode} b{args.batch} {args.dtype}, "
          f"--xla-options {args.xla_options}; load average {load}")  # fmt: skip
    command = [sys.executable, "-m", "archbench.checks.spread", "--worker", "--arch", args.arch]
    options = ("size", "mode", "batch", "dtype", "blocks", "target_s", "min_round_s", "xla_options")
    for option in options:
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    found = []
    for i in range(args.processes):
        proc = subprocess.run(
            command,
            env=xla_options.worker_environment(args.xla_options),
            preexec_fn=xla_options.pin(args.xla_options),
            capture_output=True,
            text=True,
        )
        if proc.returncode == 2:  # the worker's one line: a cell that is not one
            print(proc.stderr.strip().splitlines()[-1], file=sys.stderr)
            return 2
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            print(
                f"spread: error: process {i} ended with status {proc.returncode}", file=sys.stderr
            )
            return 1
        found.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = [summary(i, f) for i, f in enumerate(found)]
    print(format_table(rows, list(rows[0])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": os.getloadavg(), "processes": found, "rows": rows}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
