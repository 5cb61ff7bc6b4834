"""Check the harness against a bare loop: does measure_cell time what a hand-written loop times?

    python -m archbench.checks.harness [--cells mlp-small-train-b32-float32,...] [--tolerance 0.05]

For each cell, measure_cell's median step time is compared with the median per-step time of
a bare loop (jit, warm up, N steps, one block_until_ready at the end; repeated K times, half
before measure_cell and half after) that shares nothing with the harness but the model, the
train step and the synthetic data. It prints one row per cell and exits 1 if a ratio
harness / bare is off by more than the tolerance (or a cell fails), 2 on bad input. Run it on
a quiet machine: other load makes both numbers noisy.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import jax
import optax

from archbench import archs
from archbench.engine.cell import DTYPES, Cell, from_id, input_spec, validate
from archbench.engine.measure import measure_cell
from archbench.text import format_table
from archbench.train.steps import create_train_state, jit_train_step, predict, synthetic_batch

DEFAULT_CELLS = (
    "mlp-small-train-b32-float32",
    "lenet5-small-train-b32-float32",
    "cnn-small-infer-b32-float32",
)


class BareLoop:
    """A plain loop over `cell`'s step on one device: jit, warm up, N steps, block once."""

    def __init__(self, cell: Cell, loop_s: float = 0.2):
        spec = archs.get(cell.arch)
        module = spec.build(cell.size, dtype=DTYPES[cell.dtype])
        inputs = input_spec(cell)
        tx = optax.adamw(1e-3) if cell.mode == "train" else optax.identity()
        self.train = cell.mode == "train"
        self.state = create_train_state(module, inputs, tx, jax.random.key(0))
        outputs = spec.num_outputs(cell.size)
        self.batch = synthetic_batch(inputs, spec.task, outputs, cell.batch, jax.random.key(1))
        self.infer = jax.jit(predict)
        self.loop(3)  # compile and warm up
        start = time.perf_counter()
        self.loop(5)
        self.steps = max(1, round(loop_s / ((time.perf_counter() - start) / 5)))

    def loop(self, steps: int) -> None:
        out = None
        for _ in range(steps):
            if self.train:
                self.state, out = jit_train_step(self.state, self.batch)
            else:
                out = self.infer(self.state, self.batch["x"])
        jax.block_until_ready(out)

    def per_step_s(self, repeats: int) -> list[float]:
        """Per-step time of each of `repeats` timed loops of `self.steps` steps."""
        self.loop(2)  # measure_cell evicts jit_train_step's cache: recompile before timing
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.loop(self.steps)
            times.append((time.perf_counter() - start) / self.steps)
        return times


def check(
    cells: list[Cell], *, tolerance: float, target_s: float, repeats: int
) -> tuple[list, bool]:
    """Measure each cell both ways. Returns (table rows, whether every ratio is within tolerance).

    Half the bare loops run before measure_cell and half after, so that a slow drift of the
    machine's load weighs on both medians alike.
    """
    rows, ok = [], True
    for cell in cells:
        bare_loop = BareLoop(cell)
        bare_times = bare_loop.per_step_s(repeats // 2)
        result = measure_cell(cell, target_s=target_s)
        bare_times += bare_loop.per_step_s(repeats - repeats // 2)
        del bare_loop
        if result["status"] != "ok":
            rows.append({"cell": cell.id, "harness_ms": result["status"], "note": result["error"]})
            ok = False
            continue
        bare = statistics.median(bare_times)
        harness = result["step_time_s"]
        ratio = harness / bare
        within = abs(ratio - 1) <= tolerance
        ok = ok and within
        rows.append(
            {
                "cell": cell.id,
                "harness_ms": f"{harness * 1e3:.4f}",
                "bare_ms": f"{bare * 1e3:.4f}",
                "ratio": f"{ratio:.3f}",
                "iqr/median": f"{result['step_time_iqr_s'] / harness:.3f}",
                "steps/round": str(result["steps_per_round"]),
                "note": "" if within else f"outside {tolerance:.0%}",
            }
        )
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m archbench.checks.harness", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--cells", default=",".join(DEFAULT_CELLS), help="comma list of cell ids")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed |ratio - 1| (0.05)")
    parser.add_argument("--target-s", type=float, default=2.0, help="measure_cell's timing budget")
    parser.add_argument("--repeats", type=int, default=15, help="timed loops of the bare loop")
    args = parser.parse_args(argv)
    try:
        if not (0 <= args.tolerance < math.inf and 0 < args.target_s < math.inf):  # nan too
            raise archs.UserError("--tolerance must be finite and >= 0, --target-s finite and > 0")
        if args.repeats < 1:
            raise archs.UserError(f"--repeats must be at least 1, not {args.repeats}")
        cells = [from_id(text) for text in args.cells.split(",") if text.strip()]
        for cell in cells:
            validate(cell)
            if cell.devices != 1:
                raise archs.UserError(f"{cell.id}: the bare loop runs on one device; use d1")
    except archs.UserError as e:
        print(f"check_harness: error: {e}", file=sys.stderr)
        return 2
    print(
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}), tolerance {args.tolerance:.0%}"
    )
    rows, ok = check(cells, tolerance=args.tolerance, target_s=args.target_s, repeats=args.repeats)
    columns = ["cell", "harness_ms", "bare_ms", "ratio", "iqr/median", "steps/round", "note"]
    print(format_table(rows, columns))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
