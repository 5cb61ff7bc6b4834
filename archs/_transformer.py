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
        self, x: jax.Array, context: jax.Array | None = None, *, causal: bool = False
    ) -> jax.Array:
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
        self, x: jax.Array, context: jax.Array | None = None, *, train: bool = False
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
        x = residual(x, lambda h: attention("self_attn")(h, causal=self.causal), "self_attn")
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
    length: int, max_len: int, width: int, init: Initializer, dtype, param_dtype
) -> jax.Array:
    """The first `length` rows of a learned (max_len, width) position table; call in compact."""
    if length > max_len:
        raise ValueError(f"sequence length {length} exceeds the {max_len} learned positions")
    table = nn.Embed(
        max_len, width, embedding_init=init, dtype=dtype, param_dtype=param_dtype, name="pos_embed"
    )
    return table(jnp.arange(length))  # (T, D)


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
