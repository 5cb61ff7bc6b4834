"""Two FLOP counts of every family: XLA's cost analysis against the jaxpr's roofline count.

    python -m archbench.checks.flops [--size tiny] [--arch all] [--mode train,infer]
                                     [--batch 8] [--markdown]

For each family (or those of --arch) at --size, one device, float32, this compiles the train
and infer steps as a measured cell does (archbench.engine.program.compile_cell, from shapes
alone: nothing runs) and prints XLA's FLOPs (`flops_per_step`), the model FLOPs MFU counts
(`model_flops_per_step`, where the family counts a twin), the jaxpr's FLOPs by
jax.experimental.roofline's rules (`jaxpr_flops`, of which `jaxpr_matmul_flops` are
dot_generals), their ratio, and why the jaxpr count is partial where it is. A row whose
counts differ by more than 5% is marked; docs/performance.md ("Two FLOP counts") explains
each such family. Exit status 0 when every cell compiled, 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys

import jax

from archbench import archs
from archbench.engine.cell import Cell
from archbench.engine.plan import resolve
from archbench.engine.program import compile_cell
from archbench.errors import UserError
from archbench.text import format_table

MODES = ("train", "infer")
COLUMNS = ["family", "mode", "XLA", "jaxpr", "XLA/jaxpr", "model", "jaxpr matmul", "note"]
THRESHOLD = 0.05  # a difference the docs explain


def count_cell(arch: str, size: str, mode: str, batch: int) -> dict:
    """XLA's and the jaxpr's FLOPs of one cell (compiled from shapes; nothing runs)."""
    plan = resolve(Cell(arch, size, mode, batch, "float32"))
    try:
        _, _, facts = compile_cell(plan, jax.devices()[:1], abstract=True)
    except Exception as exc:  # a family that fails to compile is a row, not a crash
        return {"family": arch, "mode": mode, "note": f"error: {type(exc).__name__}: {exc}"}
    xla, jaxpr = facts["flops_per_step"], facts["jaxpr_flops"]
    model = facts["model_flops_per_step"]
    ratio = xla / jaxpr if xla is not None and jaxpr else None
    off = ratio is not None and abs(ratio - 1) > THRESHOLD
    return {
        "family": arch,
        "mode": mode,
        "XLA": _int(xla),
        "jaxpr": _int(jaxpr),
        "XLA/jaxpr": None if ratio is None else f"{ratio:.3f}" + (" *" if off else ""),
        "model": _int(model) if model != xla else None,
        "jaxpr matmul": _int(facts["jaxpr_matmul_flops"]),
        "note": facts["jaxpr_reason"],
    }


def _int(x):
    return None if x is None else int(x)


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (numbers with thousands separators, right-aligned)."""
    cell = lambda v: "" if v is None else f"{v:,}" if isinstance(v, int) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m archbench.checks.flops", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--size", default="tiny", help="each family's size (default tiny)")
    parser.add_argument("--arch", default="all", help="comma-separated families, or all")
    parser.add_argument("--mode", default="train,infer", help="train, infer or both")
    parser.add_argument("--batch", type=int, default=8, help="global batch (default 8)")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        names = archs.names() if args.arch == "all" else args.arch.split(",")
        modes = [m for m in args.mode.split(",") if m]
        if not modes or set(modes) - set(MODES):
            raise UserError(f"--mode {args.mode!r}: expected train, infer or both")
        if args.batch < 1:
            raise UserError(f"--batch must be at least 1, not {args.batch}")
        for arch in names:
            archs.get(arch).size(args.size)  # UserError naming the valid ones
    except UserError as e:
        print(f"flops: error: {e}", file=sys.stderr)
        return 2
    rows = [count_cell(a, args.size, m, args.batch) for a in names for m in modes]
    print(markdown(rows) if args.markdown else format_table(rows, COLUMNS))
    return 1 if any((r.get("note") or "").startswith("error:") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
