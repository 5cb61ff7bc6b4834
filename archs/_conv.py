"""Convolution implementation variants of the convolutional families (CNN, LeNet-5, ResNet,
Inception): the same parameters and outputs as `flax.linen.Conv`, computed another way.

- "xla": `nn.Conv` itself, channels-last (NHWC activations, HWIO kernel), as today.
- "nchw": the activations transposed to channels-first (NCHW) and the kernel to OIHW around
  one `lax.conv_general_dilated`; XLA's layout assignment treats the two forms differently
  on some backends (cuDNN prefers one, the CPU's Eigen/oneDNN kernels another).
- "im2col": the k*k shifted (strided) views of the padded input stacked on the channel axis,
  (B, H', W', k*k*C), and one matmul against the kernel reshaped to (k*k*C, O) (Chellapilla,
  Puri & Simard 2006, "High performance convolutional neural networks for document
  processing"). It moves k*k times the input's bytes, and its matmul multiplies the padding's
  zeros too, which XLA's FLOP count of a convolution leaves out (so the benchmark's MFU
  counts the default's FLOPs); `lax.conv_general_dilated_patches` would be a convolution
  with a one-hot kernel, k*k multiply-adds for each element it copies.

The module is named `Conv`, so Flax auto-names its instances Conv_0, Conv_1, ... exactly as it
names `nn.Conv`: the parameter trees (names, shapes, initial values) are the same.
"""

import itertools
from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.linear import default_kernel_init

IMPLS = ("xla", "nchw", "im2col")
# The variants a family with convolutions declares (`archbench run --variant`).
VARIANTS = {impl: {"conv_impl": impl} for impl in IMPLS}


def conv_class(impl: str, **bound) -> Callable[..., nn.Module]:
    """The convolution module of implementation `impl`, with `bound` keyword arguments."""
    if impl not in IMPLS:
        raise ValueError(f"conv_impl {impl!r} not in {IMPLS}")
    if impl == "xla":
        return partial(nn.Conv, **bound)
    return partial(Conv, impl=impl, **bound)


def _pairs(padding, dims: int) -> str | list[tuple[int, int]]:
    """nn.Conv's padding forms: "SAME"/"VALID", an int, or one int or (lo, hi) per dim."""
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return [(padding, padding)] * dims
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def im2col(x: jax.Array, window: Sequence[int], strides: Sequence[int], pads) -> jax.Array:
    """(B, *spatial, C) -> (B, *out_spatial, prod(window) * C): each output position's window,
    ordered (window offsets..., C) as an HWIO kernel's leading axes flatten."""
    if isinstance(pads, str):
        pads = jax.lax.padtype_to_pads(x.shape[1:-1], window, strides, pads)
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], window, strides, strict=True)]
    views = []
    for offset in itertools.product(*map(range, window)):  # row-major, as the kernel's axes
        ends = [o + (n - 1) * s + 1 for o, n, s in zip(offset, out, strides, strict=True)]
        view = jax.lax.slice(x, (0, *offset, 0), (x.shape[0], *ends, x.shape[-1]), (1, *strides, 1))
        views.append(view)  # (B, *out, C)
    return jnp.concatenate(views, axis=-1)


class Conv(nn.Module):
    """A convolution with nn.Conv's fields, parameters ("kernel" HWIO, "bias") and output,
    computed channels-first ("nchw") or as a matmul over input windows ("im2col")."""

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence = "SAME"
    use_bias: bool = True
    impl: str = "nchw"
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = nn.initializers.zeros
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        window = tuple(self.kernel_size)
        dims = len(window)
        strides = (self.strides,) * dims if isinstance(self.strides, int) else self.strides
        shape = (*window, x.shape[-1], self.features)  # HWIO, as nn.Conv
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        pads = _pairs(self.padding, dims)
        if self.impl == "im2col":
            cols = im2col(x, window, strides, pads)  # (B, *out, k*k*C)
            y = cols @ kernel.reshape(-1, self.features)  # (B, *out, O)
        elif self.impl == "nchw":
            last = x.ndim - 1
            x = jnp.moveaxis(x, last, 1)  # (B, C, *spatial)
            kernel = jnp.moveaxis(kernel, (dims + 1, dims), (0, 1))  # (O, I, *window)
            spatial = "HWD"[:dims]
            spec = (f"NC{spatial}", f"OI{spatial}", f"NC{spatial}")
            y = jax.lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=spec)
            y = jnp.moveaxis(y, 1, last)  # (B, *out, O)
        else:
            raise ValueError(f"impl {self.impl!r} not in {IMPLS[1:]}")
        if bias is not None:
            y = y + bias
        return y
