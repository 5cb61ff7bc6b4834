"""Blocks shared by the Transformer families: attention, MLP, the residual layer, positions.

Attention weights go through `jax.nn.dot_product_attention`, which computes the logits and
the softmax in float32 whatever the compute dtype. Its `implementation=None` is XLA's
attention today; `attention_impl="cudnn"` asks for cuDNN flash attention on a GPU (bf16 or
fp16 compute only). The fused kernels have no dropout on the attention weights, so these
blocks apply dropout to sub-layer outputs and embeddings only ("residual dropout",
Vaswani et al. 2017 sec. 5.4).
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention of `x` over `context` (itself if None)."""

    num_heads: int
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    out_init: Initializer | None = None  # output projection; kernel_init if None
    attention_impl: str | None = None  # None (XLA) or "cudnn"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        causal: bool = False,
        decode: bool = False,
    ) -> jax.Array:
        """`decode`: causal self-attention over a key/value cache (see `update_kv_cache`)."""
        context = x if context is None else context
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by {self.num_heads} heads")
        head_dim = width // self.num_heads

        def project(name: str, inputs: jax.Array) -> jax.Array:
            return nn.DenseGeneral(
                (self.num_heads, head_dim),
                use_bias=self.use_bias,
                kernel_init=self.kernel_init,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )(inputs)

        q = project("query", x)  # (B, T, H, Dh)
        k = project("key", context)  # (B, S, H, Dh)
        v = project("value", context)  # (B, S, H, Dh)
        cached = update_kv_cache(self, k, v, *decode_position(self, x.shape[1])) if decode else None
        if cached is not None:
            k, v, mask = cached  # the whole cache (B, S_cache, H, Dh) and (1, 1, T, S_cache)
            y = jax.nn.dot_product_attention(q, k, v, mask=mask)
        else:
            y = jax.nn.dot_product_attention(
                q, k, v, is_causal=causal, implementation=self.attention_impl
            )  # (B, T, H, Dh)
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            use_bias=self.use_bias,
            kernel_init=self.out_init or self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(y)  # (B, T, D)


class Mlp(nn.Module):
    """Position-wise feed-forward network: Dense, activation, Dense."""

    hidden: int
    act: Callable = nn.gelu
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    out_init: Initializer | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        dense = lambda n, init, name: nn.Dense(  # noqa: E731
            n, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        h = self.act(dense(self.hidden, self.kernel_init, "fc")(x))  # (B, T, F)
        return dense(width, self.out_init or self.kernel_init, "proj")(h)  # (B, T, D)


class Block(nn.Module):
    """Transformer layer: self-attention, cross-attention if given a context, then the MLP.

    Each sub-layer is residual. Post-LN (Vaswani et al. 2017, BERT): LayerNorm(x + f(x)).
    Pre-LN (GPT-2): x + f(LayerNorm(x)); the model then ends with its own LayerNorm.
    """

    num_heads: int
    mlp_dim: int
    pre_norm: bool = False
    causal: bool = False
    dropout: float = 0.0
    act: Callable = nn.gelu
    attention_bias: bool = True
    layer_norm_eps: float = 1e-6
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    out_init: Initializer | None = None  # residual output projections; kernel_init if None
    attention_impl: str | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        train: bool = False,
        decode: bool = False,
    ) -> jax.Array:
        def residual(x: jax.Array, f: Callable, name: str) -> jax.Array:
            norm = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name=f"ln_{name}")
            h = f(norm(x) if self.pre_norm else x)
            x = x + nn.Dropout(self.dropout, deterministic=not train)(h)
            return x if self.pre_norm else norm(x)

        attention = lambda name: MultiHeadAttention(  # noqa: E731
            self.num_heads,
            use_bias=self.attention_bias,
            kernel_init=self.kernel_init,
            out_init=self.out_init,
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        x = residual(
            x, lambda h: attention("self_attn")(h, causal=self.causal, decode=decode), "self_attn"
        )
        if context is not None:
            x = residual(x, lambda h: attention("cross_attn")(h, context), "cross_attn")
        mlp = Mlp(
            self.mlp_dim,
            act=self.act,
            kernel_init=self.kernel_init,
            out_init=self.out_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )
        return residual(x, mlp, "mlp")  # (B, T, D)


def layer_norm(eps: float, dtype, param_dtype, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm whose mean and variance are reduced in float32 even for bf16 compute."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        force_float32_reductions=True,
        name=name,
    )


def learned_positions(
    length: int,
    max_len: int,
    width: int,
    init: Initializer,
    dtype,
    param_dtype,
    start: jax.Array | None = None,
) -> jax.Array:
    """Rows start .. start + length - 1 (from 0 if None) of a learned (max_len, width) position
    table; call in compact. A traced `start` (decoding) is not checked against max_len."""
    if length > max_len:
        raise ValueError(f"sequence length {length} exceeds the {max_len} learned positions")
    table = nn.Embed(
        max_len, width, embedding_init=init, dtype=dtype, param_dtype=param_dtype, name="pos_embed"
    )
    positions = jnp.arange(length) if start is None else start + jnp.arange(length)
    return table(positions)  # (T, D)


# ---- decoding with a cache ----------------------------------------------------------------
# As flax's own `decode=True` attention does, the cache is the "cache" variable collection.
# `model.init(key, tokens, decode=True)` creates it: its arrays get the shapes of that call's
# input, so a (B, P + G) input makes room for P + G positions, and that first call runs the
# plain forward pass. Later calls, `model.apply({"params": p, "cache": c}, tokens,
# decode=True, mutable=["cache"])`, feed T new tokens (the prompt, then one at a time) and
# return the updated cache.


def decode_position(module: nn.Module, length: int) -> tuple[jax.Array, bool]:
    """The absolute position of this call's first token, and whether the cache already existed.

    Keeps the module's next position in its "cache" variable "index" (int32) and advances it
    by `length`; on the call that creates the cache (`ready` False) the position is 0.
    """
    ready = module.has_variable("cache", "index")
    index = module.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    start = index.value
    index.value = start + length
    return start, ready


def update_kv_cache(
    module: nn.Module, k: jax.Array, v: jax.Array, start: jax.Array, ready: bool
) -> tuple[jax.Array, jax.Array, jax.Array] | None:
    """Write this call's keys and values at positions start .. start + T - 1 of the cache.

    Args:
      module: the attention layer; it owns the "cache" variables "cached_key" and "cached_value".
      k, v: (B, T, K, Dh) keys (already rotated, for RoPE) and values of the T new tokens.
      start, ready: from `decode_position`.
    Returns:
      (keys, values, mask): the whole cache (B, S, K, Dh) each, and the (1, 1, T, S) mask
      that lets query t see cached positions up to start + t; None on the call that creates
      the cache, which attends causally over its own T = S inputs.
    """
    keys = module.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    values = module.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    if not ready:
        return None
    at = (0, start, 0, 0)
    keys.value = jax.lax.dynamic_update_slice(keys.value, k.astype(keys.value.dtype), at)
    values.value = jax.lax.dynamic_update_slice(values.value, v.astype(values.value.dtype), at)
    query_pos = start + jnp.arange(k.shape[1])  # (T,)
    mask = jnp.arange(keys.value.shape[1])[None, :] <= query_pos[:, None]  # (T, S)
    return keys.value, values.value, mask[None, None]


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
    """Vaswani et al. 2017 sec. 3.5: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...).

    Returns:
      float32 (length, width), sines in even columns and cosines in odd ones.
    """
    if width % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {width}")
    position = np.arange(length, dtype=np.float64)[:, None]  # (T, 1)
    two_i = np.arange(0, width, 2, dtype=np.float64)  # (D/2,)
    angle = position / np.power(10000.0, two_i / width)  # (T, D/2)
    table = np.empty((length, width), np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle)
    return table.astype(np.float32)
