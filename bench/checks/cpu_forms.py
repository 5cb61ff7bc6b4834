"""The XLA:CPU measurements behind archs/_matmul.py, train/steps.first_argmax and the convolutions.

    python -m archbench.checks.cpu_forms [--tokens 4096] [--width 128] [--vocab 1024]
        [--conv-batch 32] [--repeats 30] [--json FILE]

Four tables, each a median of `--repeats` calls of a jitted function on this process's CPUs
(`taskset -c 0 python -m ...` for one thread, as docs/performance.md measured them):

- the product (tokens x width)^T (tokens x vocab), a weight gradient, with its operands in
  each of the four layouts (which dimension each contracts), and whether the compiled
  program runs it on YNNPACK or on XLA's own dot;
- the gradient of a small model (a two-layer MLP and a vocab-wide head) on inputs shaped
  (tokens, width) and (32, tokens / 32, width), with lax.dot_general and with
  archs._matmul.dot_general, and how many of its dots take the slow 0-and-1 form;
- jnp.argmax against first_argmax over (32, tokens / 32, vocab) logits, and whether they agree;
- the first convolutions of LeNet-5 (one input channel, then six) and Inception's stem (three
  channels, 7x7, stride 2), forward and gradient, as nn.Conv and as im2col
  (archs._conv), whether the forward pass's product runs on YNNPACK (a `ynn_fusion` in the
  compiled program) or on XLA's own convolution, and whether the two agree.

Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

from archbench.archs import _conv, _matmul
from archbench.engine import xla_options
from archbench.errors import UserError
from archbench.text import format_table
from archbench.train.steps import first_argmax

SLOW_FORM = re.compile(r"lhs_contracting_dims=\{0\}, rhs_contracting_dims=\{1\}")


def median_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def dot_forms(tokens: int, width: int, vocab: int, repeats: int) -> list[dict]:
    """The weight gradient's product, its operands laid out four ways."""
    x = jax.random.normal(jax.random.key(0), (tokens, width))
    dy = jax.random.normal(jax.random.key(1), (tokens, vocab))
    gflop = 2 * tokens * width * vocab / 1e9
    rows = []
    for lhs, rhs, dims in (
        (x, dy, (0, 0)),
        (x, dy.T, (0, 1)),
        (x.T, dy.T, (1, 1)),
        (x.T, dy, (1, 0)),
    ):
        fn = jax.jit(lambda a, b, d=dims: lax.dot_general(a, b, (((d[0],), (d[1],)), ((), ()))))
        lhs, rhs = jnp.asarray(lhs).copy(), jnp.asarray(rhs).copy()  # laid out as shaped
        ms = median_ms(fn, (lhs, rhs), repeats)
        text = fn.lower(lhs, rhs).compile().as_text()
        rows.append({
            "operands": f"{lhs.shape} {rhs.shape}", "contracting": f"{dims[0]} and {dims[1]}",
            "ms": round(ms, 3), "GFLOP/s": round(gflop / ms * 1e3, 1),
            "run by": "YNNPACK" if "ynn" in text else "XLA's dot",
        })  # fmt: skip
    return rows


def _model(dot):
    def dense(a, w):
        return dot(a, w, (((a.ndim - 1,), (0,)), ((), ())))

    def loss(p, x, y):
        h = x + dense(jax.nn.gelu(dense(x, p["w1"])), p["w2"])
        logits = jax.nn.log_softmax(dense(h, p["head"]), -1)
        return -jnp.mean(jnp.take_along_axis(logits, y[..., None], -1))

    return jax.jit(jax.grad(loss))


def model_gradients(tokens: int, width: int, vocab: int, repeats: int) -> list[dict]:
    """A small model's gradient on 2-D and 3-D inputs, with either product."""
    key = jax.random.key(2)
    p = {
        "w1": 0.05 * jax.random.normal(key, (width, 3 * width)),
        "w2": 0.05 * jax.random.normal(key, (3 * width, width)),
        "head": 0.05 * jax.random.normal(key, (width, vocab)),
    }
    x = jax.random.normal(key, (tokens, width))
    y = jax.random.randint(key, (tokens,), 0, vocab)
    seq = (32, tokens // 32)
    rows = []
    for shape, name, dot in (
        ("(tokens, width)", "lax.dot_general", lax.dot_general),
        ("(32, tokens/32, width)", "lax.dot_general", lax.dot_general),
        ("(32, tokens/32, width)", "archs._matmul", _matmul.dot_general),
    ):
        args = (
            (p, x, y)
            if shape.startswith("(tokens")
            else (p, x.reshape(*seq, width), y.reshape(seq))
        )
        fn = _model(dot)
        text = fn.lower(*args).compile().as_text()
        slow = sum(1 for line in text.splitlines() if " dot(" in line and SLOW_FORM.search(line))
        rows.append({"inputs": shape, "product": name, "ms": round(median_ms(fn, args, repeats), 3),
                     "slow-form dots": slow})  # fmt: skip
    return rows


def argmax(tokens: int, vocab: int, repeats: int) -> list[dict]:
    logits = jax.random.normal(jax.random.key(3), (32, tokens // 32, vocab))
    same = bool((jnp.argmax(logits, -1) == first_argmax(logits)).all())
    return [
        {
            "function": name,
            "ms": round(median_ms(jax.jit(fn), (logits,), repeats), 3),
            "agree": "yes" if same else "no",
        }
        for name, fn in (
            ("jnp.argmax", lambda a: jnp.argmax(a, -1)),
            ("first_argmax", first_argmax),
        )
    ]


# (name, input height, width and channels, window, stride, filters, padding), as the families
# have them at `small`: LeNet-5's C1 and C3, Inception's stem
FIRST_CONVOLUTIONS = (
    ("LeNet-5 C1", (32, 32, 1), 5, 1, 6, "VALID"),
    ("LeNet-5 C3", (14, 14, 6), 5, 1, 16, "VALID"),
    ("Inception stem", (64, 64, 3), 7, 2, 16, "SAME"),
)


def convolutions(batch: int, repeats: int) -> list[dict]:
    """Each convolution of FIRST_CONVOLUTIONS two ways: its forward pass, and the gradient of
    the sum of tanh of its output (filters and input)."""
    rows = []
    for name, hwc, k, stride, filters, padding in FIRST_CONVOLUTIONS:
        x = jax.random.normal(jax.random.key(4), (batch, *hwc))
        outputs = []
        for impl in ("xla", "im2col"):
            conv = _conv.conv_class(impl)(filters, (k, k), strides=stride, padding=padding)
            params = conv.init(jax.random.key(5), x)
            forward = jax.jit(conv.apply)
            loss = lambda p, x, conv=conv: jnp.tanh(conv.apply(p, x)).sum()  # noqa: E731
            gradient = jax.jit(jax.grad(loss, argnums=(0, 1)))
            y = forward(params, x)
            outputs.append(y)
            gflop = 2 * y.size * k * k * hwc[-1] / 1e9
            ms = median_ms(forward, (params, x), repeats)
            text = forward.lower(params, x).compile().as_text()
            rows.append({
                "convolution": f"{name}: {hwc[0]}x{hwc[1]}x{hwc[2]}, {k}x{k}/{stride}, {filters}",
                "impl": impl, "forward ms": round(ms, 3), "forward GFLOP/s": round(gflop / ms * 1e3, 1),
                "gradient ms": round(median_ms(gradient, (params, x), repeats), 3),
                "forward on": "YNNPACK" if "ynn_fusion" in text else "XLA's own",
            })  # fmt: skip
        scale = max(1.0, float(jnp.max(jnp.abs(outputs[0]))))
        same = float(jnp.max(jnp.abs(outputs[0] - outputs[1]))) / scale <= 1e-5
        for row in rows[-2:]:
            row["agree"] = "yes" if same else "no"
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m archbench.checks.cpu_forms", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--tokens", type=int, default=4096, help="rows: batch 32 x sequence")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--conv-batch", type=int, default=32, help="the convolutions' batch")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", help="write the tables to this file")
    args = parser.parse_args(argv)
    try:
        sizes = (args.tokens, args.width, args.vocab, args.conv_batch, args.repeats)
        if min(sizes) < 1 or args.tokens % 32:
            raise UserError("--tokens must be a positive multiple of 32; the others >= 1")
    except UserError as e:
        print(f"cpu_forms: error: {e}", file=sys.stderr)
        return 2
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{jax.devices()[0].device_kind}, {xla_options.cpus()} CPUs, load average {load}")
    tables = {
        "dot_forms": dot_forms(args.tokens, args.width, args.vocab, args.repeats),
        "model_gradients": model_gradients(args.tokens, args.width, args.vocab, args.repeats),
        "argmax": argmax(args.tokens, args.vocab, args.repeats),
        "convolutions": convolutions(args.conv_batch, args.repeats),
    }
    for name, rows in tables.items():
        print(f"\n{name}\n" + format_table(rows, list(rows[0])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": os.getloadavg(), **tables}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
