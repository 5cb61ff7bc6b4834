"""What running a Flax NNX model through archbench costs: the `mlp` family against its NNX twin.

    python -m archbench.checks.nnx [--size small] [--batch 32] [--rounds 40]

`MLPTwin` is the built-in `mlp` (archs/mlp.py) written as an `nnx.Module`, layer for layer;
registered (`register_twin`), it runs through archbench.archs._nnx's Linen adapter in the
same pure, jitted train and infer steps as the Linen model. For train and infer, this compiles
both cells, then times them A-B-A-B...: one round of Linen, one of NNX, `rounds` times (both
with the same steps per round, calibrated to 50 ms), and prints the median step time of each
and their ratio NNX / Linen (and the ratio of their fastest rounds, steadier on a busy
machine), with lowering and compile times and whether XLA counts the same FLOPs. tests/test_nnx.py checks the twin's parameters and FLOPs; README.md quotes a run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from archbench import archs
from archbench.archs import plugins
from archbench.engine.cell import Cell
from archbench.engine.measure import prepare, time_rounds
from archbench.text import format_table

TWIN = "mlp_nnx"


class MLPTwin(nnx.Module):
    """archs/mlp.py's MLP as an NNX module: the same Dense layers, ReLU and Dropout.

    NNX layers are not shape-inferring, so the config also names the flattened input's
    features (`in_features`).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        *,
        rngs: nnx.Rngs,
    ):
        widths = (in_features, *hidden)
        self.layers = nnx.List(
            nnx.Linear(a, b, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            for a, b in zip(widths, hidden, strict=False)
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(widths[-1], num_classes, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)  # (B, H*W*C)
        for layer in self.layers:
            x = self.dropout(jax.nn.relu(layer(x)))
        return self.head(x)


def register_twin(name: str = TWIN) -> archs.ArchSpec:
    """Register `MLPTwin` with the sizes of `mlp` (each with its input's features added)."""
    if name in archs.names():
        return archs.get(name)
    mlp = archs.get("mlp")
    sizes = {
        size: archs.Size(
            {**row.config, "in_features": _features(row.input.shape)}, row.input, source="mlp"
        )
        for size, row in mlp.sizes.items()
    }
    return plugins.register(name, MLPTwin, sizes=sizes, family="MLP (NNX)")


def _features(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def compare(size: str, batch: int, rounds: int) -> list[dict]:
    """One row per mode: Linen and NNX median step times (A-B-A), their ratio, compile times
    and FLOPs."""
    register_twin()
    rows = []
    for mode in ("train", "infer"):
        prepare(Cell("mlp", size, mode, batch, "float32"))  # the first lowering warms caches
        prepared = {a: prepare(Cell(a, size, mode, batch, "float32")) for a in ("mlp", TWIN)}
        times: dict[str, list[float]] = {a: [] for a in prepared}
        steps = max(p.calibrate() for p in prepared.values())
        for _ in range(rounds):
            for arch, p in prepared.items():  # Linen, NNX, Linen, NNX, ...
                p.steps_per_round = steps
                times[arch] += [t / steps for t in time_rounds(p, rounds=1)]
        linen, twin = (statistics.median(times[a]) for a in ("mlp", TWIN))
        rows.append(
            {
                "mode": mode,
                "linen_step_us": round(1e6 * linen, 1),
                "nnx_step_us": round(1e6 * twin, 1),
                "nnx/linen": round(twin / linen, 3),
                # the fastest round of each: what a busy machine's other load left least touched
                "min_ratio": round(min(times[TWIN]) / min(times["mlp"]), 3),
                # tracing and lowering is where the adapter works (it rebuilds the model's
                # structure from shapes); the compiled step should be the same program
                **{
                    f"{k}_{s}_s": round(prepared[a].facts[f"{s}_s"], 3)
                    for s in ("lower", "compile")
                    for k, a in (("linen", "mlp"), ("nnx", TWIN))
                },
                "same_flops": "yes"
                if len({p.facts["flops_per_step"] for p in prepared.values()}) == 1
                else "no",
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m archbench.checks.nnx", description=__doc__)
    parser.add_argument("--size", default="small", help="a size of mlp (default: small)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=40, help="A-B pairs (default: 40)")
    args = parser.parse_args(argv)
    try:
        rows = compare(args.size, args.batch, args.rounds)
    except archs.UserError as e:
        print(f"archbench.checks.nnx: {e}", file=sys.stderr)
        return 2
    print(f"mlp {args.size}, batch {args.batch}, {jax.devices()[0].device_kind}")
    print(format_table(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
