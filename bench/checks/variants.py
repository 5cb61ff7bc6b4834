"""Time a family's implementation variants side by side, A-B-A in one process.

    python -m archbench.checks.variants --arch gpt [--size small] [--mode train,infer]
        [--batch 32] [--dtype float32] [--variants default,xla,einsum] [--repeats 3]
        [--target-s 1.0] [--json FILE]

Each variant's step (the benchmark's own: archbench.engine.measure.prepare) is compiled once.
Before anything is timed, one forward pass of every variant on the default's parameters and
batch is compared with the default's logits. Then blocks of rounds run interleaved, default,
v1, default, v2, ..., default, `--repeats` times over, so that a drift of the machine's load
weighs on every variant alike; each variant's ratio is the median over its blocks of its
block time / the mean of the two default blocks around it. The default's row gives the same
ratio for its own inner blocks (an A-A control): the range a variant must leave to differ
from noise. A default is chosen by these ratios, not by belief. Exit 1 if a variant's outputs differ from the default's (or it fails),
2 on bad input; a variant this backend lacks (cuDNN attention on CPU) prints as unsupported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field

import jax
import numpy as np

from archbench import archs
from archbench.engine.cell import Cell, build, validate
from archbench.engine.measure import Prepared, prepare, time_rounds
from archbench.engine.outcome import failure
from archbench.errors import unknown
from archbench.text import format_table
from archbench.train.steps import predict

DEFAULT = "default"
MODES = ("train", "infer")
# Outputs agree when max |variant - default| <= TOLERANCE * max(1, max |default|): loose
# enough for a different summation order, tight enough to catch a different function.
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}
# Words in the error of a variant the backend lacks (e.g. jax's "cuDNN is not detected").
UNSUPPORTED_WORDS = ("unsupported", "not supported", "not detected", "cudnn", "requires a gpu")
COLUMNS = ["mode", "variant", "status", "median_ms", "iqr_ms", "ratio", "ratio_range", "outputs"]


@dataclass(eq=False)
class Candidate:
    """One variant of one mode: its compiled step and what was measured of it."""

    name: str  # DEFAULT or a variant the family declares
    cell: Cell
    prepared: Prepared | None = None
    status: str = "ok"  # ok | unsupported | error | mismatch
    note: str = ""
    max_diff: float | None = None  # max |logits - default's| / max(1, max |default's|)
    step_s: list[float] = field(default_factory=list)  # per-step time of every timed round
    blocks: list[float] = field(default_factory=list)  # median per-step time of each block
    ratios: list[float] = field(default_factory=list)  # block / mean of its default neighbours


def resolve(spec: archs.ArchSpec, size: str, requested: str | None) -> list[tuple[str, str]]:
    """(name, label) of each variant to time, the default first.

    With no request: the default and every declared variant that differs from it (one whose
    fields equal the module's defaults is the default itself, named in its label). Raises
    UserError for an unknown name.
    """
    if requested:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        for name in names:
            if name != DEFAULT:
                spec.variant(name)  # UserError naming the valid ones
        names = [DEFAULT] + [n for n in dict.fromkeys(names) if n != DEFAULT]
        return [(n, n) for n in names]
    module = spec.build(size)
    same = [
        name
        for name, fields in spec.variants.items()
        if all(getattr(module, k, object()) == v for k, v in fields.items())
    ]
    label = f"{DEFAULT}={','.join(same)}" if same else DEFAULT
    return [(DEFAULT, label)] + [(n, n) for n in spec.variants if n not in same]


def _status_of(cell: Cell, exc: Exception) -> tuple[str, str]:
    record = failure(cell, exc)
    status = record["status"]
    if status == "error" and any(w in record["error"].lower() for w in UNSUPPORTED_WORDS):
        status = "unsupported"
    return status, record["error"]


def _logits(candidate: Candidate, default: Prepared):
    """One forward pass of `candidate`'s module on the default's parameters and batch."""
    state = default.state.replace(apply_fn=build(candidate.cell).apply)
    x = default.inputs["x"] if default.cell.mode == "train" else default.inputs
    return np.asarray(jax.jit(predict)(state, x), dtype=np.float64)


def compare_outputs(candidates: list[Candidate], dtype: str) -> None:
    """Mark every candidate whose forward pass differs from the default's as a mismatch."""
    default = candidates[0]
    reference = _logits(default, default.prepared)
    scale = max(1.0, float(np.max(np.abs(reference))))
    for c in candidates:
        if c.status != "ok":
            continue
        try:
            got = _logits(c, default.prepared)
        except Exception as exc:  # a variant whose parameters differ cannot even run
            c.status, c.note = "mismatch", f"cannot run on the default's parameters: {exc}"[:200]
            continue
        if got.shape != reference.shape:
            c.status, c.note = "mismatch", f"logits {got.shape}, default {reference.shape}"
            continue
        c.max_diff = float(np.max(np.abs(got - reference))) / scale
        if not c.max_diff <= TOLERANCE[dtype]:  # NaN is a mismatch too
            c.status = "mismatch"


def _block(c: Candidate, target_s: float) -> float:
    times = time_rounds(c.prepared, target_s=target_s, min_rounds=3)
    steps = [t / c.prepared.steps_per_round for t in times]
    c.step_s += steps
    c.blocks.append(statistics.median(steps))
    return c.blocks[-1]


def interleave(candidates: list[Candidate], repeats: int, target_s: float) -> None:
    """Time blocks default, v1, default, v2, ..., default, `repeats` times over, and pair each
    variant's block with the mean of the default blocks just before and after it."""
    default, others = candidates[0], [c for c in candidates[1:] if c.status == "ok"]
    before = _block(default, target_s)
    for _ in range(repeats):
        for c in others:
            block = _block(c, target_s)
            after = _block(default, target_s)
            c.ratios.append(block / ((before + after) / 2))
            before = after
    if not others:  # the default alone: still time it `repeats` times
        for _ in range(repeats):
            _block(default, target_s)
    # The noise floor, an A-A control: each inner default block against the mean of the
    # default blocks around it. A variant's ratio means something only outside this range.
    b = default.blocks
    default.ratios = [b[i] / ((b[i - 1] + b[i + 1]) / 2) for i in range(1, len(b) - 1)]


def run_mode(
    arch: str, size: str, mode: str, batch: int, dtype: str, names, args
) -> list[Candidate]:
    """Compile, check and time every variant of one mode; returns them, the default first."""
    candidates = []
    for name, label in names:
        cell = Cell(arch, size, mode, batch, dtype, variant=None if name == DEFAULT else name)
        c = Candidate(label, cell)
        try:
            c.prepared = prepare(cell)
        except Exception as exc:
            c.status, c.note = _status_of(cell, exc)
        candidates.append(c)
    default = candidates[0]
    if default.status != "ok":
        return candidates  # nothing to compare with
    compare_outputs(candidates, dtype)
    for c in candidates:
        if c.status == "ok":
            c.prepared.calibrate(args.min_round_s)
    interleave(candidates, args.repeats, args.target_s)
    for c in candidates:
        c.prepared = None  # free the compiled steps before the next mode's
    return candidates


def row(mode: str, c: Candidate, default: Candidate) -> dict:
    """A table row (strings) for the terminal; `record` gives the same as numbers."""
    r = record(mode, c, default)
    ms = lambda s: "" if s is None else f"{s * 1e3:.3f}"  # noqa: E731
    if c.status in ("unsupported", "error") or c.max_diff is None:
        outputs = c.note
    else:
        word = "same" if c.status == "ok" else "DIFFERENT"
        outputs = f"{word} (max|d| {c.max_diff:.1e})"
    rng = r["ratio_min"], r["ratio_max"]
    return {
        "mode": mode,
        "variant": c.name,
        "status": c.status,
        "median_ms": ms(r["median_s"]),
        "iqr_ms": ms(r["iqr_s"]),
        "ratio": "" if r["ratio"] is None else f"{r['ratio']:.3f}",
        "ratio_range": "" if rng[0] is None else f"{rng[0]:.2f}-{rng[1]:.2f}",
        "outputs": outputs,
    }


def record(mode: str, c: Candidate, default: Candidate) -> dict:
    """The JSON row of `c`: per-step median and IQR in seconds, ratio to the default."""
    steps = np.asarray(c.step_s)
    timed = steps.size > 0
    q1, q3 = np.percentile(steps, [25, 75]) if timed else (None, None)
    if c is default:  # its "ratios" are the A-A control's, its ratio 1 by definition
        ratio = 1.0 if timed else None
    else:
        ratio = statistics.median(c.ratios) if c.ratios else None
    return {
        **dataclasses.asdict(c.cell),
        "mode": mode,
        "name": c.name,
        "status": c.status,
        "note": c.note,
        "median_s": float(np.median(steps)) if timed else None,
        "iqr_s": float(q3 - q1) if timed else None,
        "blocks_s": c.blocks,
        "ratio": ratio,
        "ratios": c.ratios,
        "ratio_min": min(c.ratios) if c.ratios else None,
        "ratio_max": max(c.ratios) if c.ratios else None,
        "max_diff": c.max_diff,
        "tolerance": TOLERANCE[c.cell.dtype],
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m archbench.checks.variants", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--arch", required=True, help="one architecture, e.g. gpt")
    parser.add_argument("--size", default="small")
    parser.add_argument("--mode", default="train,infer", help="comma list of train, infer")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="float32", choices=sorted(TOLERANCE))
    parser.add_argument("--variants", help="comma list (default: all the family declares)")
    parser.add_argument("--repeats", type=int, default=3, help="A-B-A passes over the variants")
    parser.add_argument("--target-s", type=float, default=1.0, help="timing budget of a block")
    parser.add_argument("--min-round-s", type=float, default=0.05, help="a round lasts this")
    parser.add_argument("--json", help="write the rows to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        spec = archs.get(args.arch)
        modes = [m.strip() for m in args.mode.split(",") if m.strip()]
        for mode in modes:
            if mode not in MODES:
                raise unknown("mode", mode, MODES)
        if not modes:
            raise archs.UserError("--mode needs at least one of train, infer")
        seconds = (args.target_s, args.min_round_s)
        if args.repeats < 1 or not all(0 < s < math.inf for s in seconds):  # nan, inf too
            raise archs.UserError(
                "--repeats must be >= 1, --target-s and --min-round-s finite and > 0"
            )
        names = resolve(spec, args.size, args.variants)
        for mode in modes:
            for name, _ in names:
                variant = None if name == DEFAULT else name
                validate(Cell(args.arch, args.size, mode, args.batch, args.dtype, variant=variant))
    except archs.UserError as e:
        print(f"variants: error: {e}", file=sys.stderr)
        return 2
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    device = jax.devices()[0]
    print(
        f"{args.arch} {args.size} b{args.batch} {args.dtype} on {device.device_kind} "
        f"({jax.default_backend()}); load average {load}; {args.repeats} A-B-A passes, "
        f"{args.target_s:g} s a block"
    )
    rows, records = [], []
    for mode in modes:
        candidates = run_mode(args.arch, args.size, mode, args.batch, args.dtype, names, args)
        for c in candidates:
            rows.append(row(mode, c, candidates[0]))
            records.append(record(mode, c, candidates[0]))
    print(format_table(rows, COLUMNS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": os.getloadavg(), "rows": records}, f, indent=1)
    return 0 if all(r["status"] in ("ok", "unsupported") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
