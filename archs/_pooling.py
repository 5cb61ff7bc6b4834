"""Max pooling whose gradient is strided slices and pads, not XLA's select-and-scatter.

`nn.max_pool`'s gradient is XLA's select_and_scatter_add, which XLA's CPU backend runs as a
generic loop over every window (47% of inception small's train step on the development VM,
docs/performance.md). `max_pool` here has the same forward (a reduce_window max) and the same
gradient, written with `jax.custom_vjp` as k*k elementwise passes, one per window offset: the
input at that offset (a strided slice of the padded input) is compared with the pooled
maximum, and the output's gradient goes to the first offset, in the window's row-major order,
that holds it. That is select_and_scatter's own choice among equal values (its select is
`>=`, so the first maximum scanned keeps the gradient), so every gradient goes where JAX's
goes, ties included; where overlapping windows send gradient to one input, the sum is taken
in another order, so the two agree to float32 rounding (tests/test_pooling.py). Each pass is
a slice, a compare and a pad, which XLA fuses.
"""

from __future__ import annotations

import itertools
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def max_pool(x: jax.Array, window_shape, strides=None, padding="VALID") -> jax.Array:
    """nn.max_pool(x, window_shape, strides, padding) of an NHWC `x`: same values, same gradient."""
    strides = tuple(strides or (1,) * len(window_shape))
    if isinstance(padding, str):
        pads = tuple(lax.padtype_to_pads(x.shape[1:-1], window_shape, strides, padding))
    else:
        pads = tuple(tuple(p) for p in padding)
    return _max_pool(x, tuple(window_shape), strides, pads)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
    return nn.max_pool(x, window, strides, pads)


def _forward(x, window, strides, pads):
    y = _max_pool(x, window, strides, pads)
    return y, (x, y)


def _backward(window, strides, pads, residuals, g):
    x, y = residuals
    low = jnp.array(-jnp.inf, x.dtype)
    xp = lax.pad(x, low, [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
    out = y.shape[1:-1]
    taken = jnp.zeros(y.shape, bool)
    grad = jnp.zeros(xp.shape, g.dtype)
    for offset in itertools.product(*map(range, window)):  # row-major: select_and_scatter's order
        # the input each output position sees at this offset of its window
        start = (0, *offset, 0)
        limit = (
            xp.shape[0],
            *(o + (n - 1) * s + 1 for o, n, s in zip(offset, out, strides, strict=True)),
        )
        seen = lax.slice(xp, start, (*limit, xp.shape[-1]), (1, *strides, 1))
        hit = (seen == y) & ~taken
        taken = taken | hit
        spread = [  # back to where that input sits: before, after, between (stride - 1)
            (o, p - o - ((n - 1) * s + 1), s - 1)
            for o, p, n, s in zip(offset, xp.shape[1:-1], out, strides, strict=True)
        ]
        grad = grad + lax.pad(
            jnp.where(hit, g, 0), jnp.array(0, g.dtype), [(0, 0, 0), *spread, (0, 0, 0)]
        )
    inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape[1:-1], strict=True))
    return (grad[(slice(None), *inner, slice(None))].astype(x.dtype),)


_max_pool.defvjp(_forward, _backward)
