"""Shared machinery of the recurrent families (RNN, LSTM, GRU): the time scan and the classifier.

Two implementations of one layer, the same parameters (`fused`, the variants "fused" and
"hoisted"). The default, "fused", does both projections in each step, one matmul of [x_t, h]
against [W; U] (the parameters stacked once, outside the loop): no (T, B, G*H) projection is
materialised. "hoisted" computes the input projection of every step with one matmul,
(B, T, F) @ (F, G*H), before the scan (per step when F = 1, see `RecurrentLayer.scan`), and the
scan carries only h @ U. On the 2-core CPU fused is the faster or equal one (B=32, small;
`python -m archbench.checks.variants --arch lstm --variants default,hoisted`): LSTM infer 0.59x,
GRU infer 0.42x, train 0.93-0.95x, RNN and deep RNN within noise (docs/performance.md).
Every module has an `unroll` field passed to `jax.lax.scan`: XLA's cost analysis counts a
scan body once, so the benchmark builds the module with unroll=T to count FLOPs of all steps.
"""

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _logical
from archbench.archs.inputs import InputSpec

TINY = InputSpec("sequence", (8, 4))

# Keras' defaults for recurrent layers: Glorot-uniform input kernel, orthogonal recurrent kernel.
DEFAULT_KERNEL_INIT = nn.initializers.glorot_uniform()
DEFAULT_RECURRENT_INIT = nn.initializers.orthogonal()
READOUTS = ("last", "flatten")
# The implementation variants every recurrent family declares (`archbench run --variant`):
# where the input projection happens, and how many steps lax.scan unrolls into one loop
# iteration (the benchmark counts FLOPs with unroll = T whichever is timed).
VARIANTS = {
    "fused": {},  # the default
    "hoisted": {"fused": False},
    **{f"unroll{n}": {"unroll": n} for n in (2, 4, 8)},
}


class RecurrentLayer(nn.Module):
    """Fields shared by the recurrent layers; a family's layer maps (B, T, F) to (B, T, H)."""

    hidden: int
    reverse: bool = False
    unroll: int = 1
    fused: bool = True  # [x_t, h] @ [W; U] in each step; False: x W hoisted out of the scan
    kernel_init: Callable = DEFAULT_KERNEL_INIT
    recurrent_init: Callable = DEFAULT_RECURRENT_INIT
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def recurrent_kernel(self, gates: int) -> jax.Array:
        """U, (H, gates*H), in the compute dtype."""
        u = self.param(
            "recurrent_kernel",
            _logical.named(self.recurrent_init, "hidden", "gates"),
            (self.hidden, gates * self.hidden),
            self.param_dtype,
        )
        return u.astype(self.dtype)

    def zeros(self, batch: int) -> jax.Array:
        return jnp.zeros((batch, self.hidden), self.dtype)

    def input_kernel(
        self, features: int, gates: int, bias_init: Callable = nn.initializers.zeros
    ) -> tuple[jax.Array, jax.Array]:
        """W, (F, gates*H), and b, (gates*H,), in the compute dtype."""
        shape = (features, gates * self.hidden)
        kernel_init = _logical.named(self.kernel_init, None, "gates")
        w = self.param("kernel", kernel_init, shape, self.param_dtype).astype(self.dtype)
        b = self.param("bias", _logical.named(bias_init, "gates"), shape[1:], self.param_dtype)
        return w, b.astype(self.dtype)

    def mix(self, w: jax.Array, b: jax.Array, u: jax.Array) -> Callable:
        """`f(inp_t, h) -> x_t W + b + h U`, (B, columns of U), for the step's input `inp_t`
        (see `scan`). Fused, W and U are stacked once, outside the scan (loop-invariant), and
        the step does one matmul of [x_t, h] against them; the same FLOPs as hoisted."""
        if not self.fused:
            return lambda xw_t, h: xw_t + h @ u
        wu = jnp.concatenate([w, u], axis=0)  # (F + H, columns)
        return lambda x_t, h: jnp.concatenate([x_t, h], axis=-1) @ wu + b

    def scan(self, step: Callable, carry: Any, x: jax.Array, w: jax.Array, b: jax.Array):
        """Run `step(carry, inp_t) -> (carry, h_t)` over the steps of x.

        Hoisted (the default), inp_t = x_t W + b: W is applied to every step in one matmul
        before the scan; the bias is added inside the step, because XLA would otherwise fuse
        the elementwise add into each unrolled step and its cost analysis would count the
        whole (T, B, gates*H) add once per step. With F = 1 the projection is an outer
        product, elementwise for XLA, so it is done per step for the same reason (same
        FLOPs). Fused, inp_t = x_t, (B, F): the step projects it itself (`mix`).

        Args:
          step: the cell.
          carry: the initial state (a pytree of (B, H) arrays).
          x: the inputs, (B, T, F).
          w: the input kernel, (F, gates*H); b: its bias, (gates*H,).
        Returns:
          The hidden states of every step, (B, T, H), aligned with x also when reversed.
        """
        features = x.shape[-1]
        xs = jnp.swapaxes(x, 0, 1)  # (T, B, F)
        if self.fused:
            body = step
        else:
            if features > 1:
                xs = xs @ w  # (T, B, G*H): the input projection of every step in one matmul

            def body(carry, x_t):
                xw_t = (x_t * w[0] if features == 1 else x_t) + b  # (B, G*H)
                return step(carry, xw_t)

        _, hs = jax.lax.scan(body, carry, xs, unroll=self.unroll, reverse=self.reverse)
        return jnp.swapaxes(hs, 0, 1)  # (B, T, H)


class RecurrentClassifier(nn.Module):
    """Stacked recurrent layers over (B, T, F), then a dense head; subclasses set `layer_cls`.

    readout "last" classifies the final hidden state (for a bidirectional layer: the forward
    state after step T and the backward state after step 1); "flatten" classifies the outputs
    of every step, (B, T*D), as the MNIST-1D GRU baseline does.
    """

    layer_cls: ClassVar[type[RecurrentLayer]]

    hidden: Sequence[int]
    num_classes: int = 10
    bidirectional: bool = False
    readout: str = "last"
    unroll: int = 1
    fused: bool = True  # each layer's `fused`; False is the implementation variant "hoisted"
    kernel_init: Callable = DEFAULT_KERNEL_INIT
    recurrent_init: Callable = DEFAULT_RECURRENT_INIT
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def layer_kwargs(self) -> dict:
        """Extra keyword arguments of this family's layer (e.g. the Elman activation)."""
        return {}

    def make_layer(self, width: int, reverse: bool, name: str) -> RecurrentLayer:
        return self.layer_cls(
            width,
            reverse=reverse,
            unroll=self.unroll,
            fused=self.fused,
            kernel_init=self.kernel_init,
            recurrent_init=self.recurrent_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            **self.layer_kwargs(),
        )

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.readout not in READOUTS:
            raise ValueError(f"readout {self.readout!r} not in {READOUTS}")
        x = x.astype(self.dtype)  # (B, T, F)
        for i, width in enumerate(self.hidden):
            if self.bidirectional:
                fwd = self.make_layer(width, False, f"layer{i}_fwd")(x)  # (B, T, H)
                bwd = self.make_layer(width, True, f"layer{i}_bwd")(x)  # (B, T, H)
                x = jnp.concatenate([fwd, bwd], axis=-1)  # (B, T, 2H)
            else:
                x = self.make_layer(width, False, f"layer{i}")(x)  # (B, T, H)
        if self.readout == "flatten":
            x = x.reshape(x.shape[0], -1)  # (B, T*D)
        elif self.bidirectional:
            width = self.hidden[-1]
            x = jnp.concatenate([x[:, -1, :width], x[:, 0, width:]], axis=-1)  # (B, 2H)
        else:
            x = x[:, -1]  # (B, H)
        return nn.Dense(
            self.num_classes,
            **_logical.dense((None,), ("classes",)),  # from the last state(s) or all of them
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)
