"""Llama-style decoder language model (Touvron et al. 2023): RMSNorm, RoPE, GQA and SwiGLU.

Pre-norm blocks [RMSNorm -> causal self-attention with rotary positions (RoPE) and
grouped-query attention -> residual; RMSNorm -> SwiGLU MLP -> residual], a final RMSNorm and
an output head of its own (not tied to the token embedding). No biases anywhere, no dropout
(Llama's pretraining used none). The block takes its MLP as a layer (`mlp`: a module class or
factory), so a Mixture-of-Experts family can reuse `LlamaBlock` and `GroupedQueryAttention`
with routed experts in place of `SwiGLU`.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archbench.archs import _logical, _remat
from archbench.archs._transformer import (
    ATTENTION_VARIANTS,
    attention,
    decode_position,
    update_kv_cache,
)
from archbench.archs.inputs import InputSpec
from archbench.archs.registry import ArchSpec, Size, register

Initializer = Callable[..., jax.Array]
# Meta's release gives no initialisation recipe; Hugging Face's LlamaConfig draws every matrix
# (embedding, projections, output head) from N(0, initializer_range = 0.02).
INIT = nn.initializers.normal(0.02)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale (Zhang & Sennrich 2019), statistics in float32."""

    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", _logical.named(_logical.ONES, "embed"), (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * scale.astype(self.dtype)  # (..., D)


def rope_tables(length: int, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """Float32 (length, head_dim / 2) cosines and sines of the rotary angles p * base^(-2i/d)
    (Su et al. 2021), p < length, i < d/2. Computed in float64 at trace time: in float32,
    p * freq would be off by up to 5e-4 rad at p = 8192."""
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even head dimension, got {head_dim}")
    freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (d/2,)
    angle = np.arange(length, dtype=np.float64)[:, None] * freq  # (T, d/2)
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the pair (x[..., i], x[..., i + d/2]) of every head by position p's angle i.

    The pairs are the two halves of a head (the GPT-NeoX / Hugging Face layout); Meta's code
    pairs neighbours (2i, 2i + 1), the same model up to a fixed permutation of each head's
    query and key features. The rotation is computed in float32 and cast back.

    Args:
      x: (B, T, H, d) queries or keys at positions 0 .. T-1.
      cos, sin: (T, d/2) from `rope_tables`.
    """
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # (B, T, H, d/2) each
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, d/2): the same for every head
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)  # (B, T, H, d)


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with RoPE on queries and keys and grouped key/value heads.

    Each of the `num_kv_heads` key/value heads serves num_heads // num_kv_heads consecutive
    query heads (Ainslie et al. 2023): query head n reads key/value head n // group, which is
    how jax.nn.dot_product_attention groups them (and _transformer.attention, whichever
    implementation). num_kv_heads = num_heads is multi-head attention, 1 is multi-query.
    """

    num_heads: int
    num_kv_heads: int
    max_len: int  # the positions the rotary tables cover
    rope_base: float = 10_000.0
    kernel_init: Initializer = INIT
    attention_impl: str | None = None  # None (JAX chooses) or _transformer.ATTENTION_IMPLS
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, decode: bool = False) -> jax.Array:
        """`decode`: attend over the key/value cache (archbench.archs._transformer); the rotary
        angles are those of the tokens' absolute positions in the sequence."""
        length, width = x.shape[-2:]
        if width % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"width {width}, {self.num_heads} heads and {self.num_kv_heads} key/value heads:"
                " heads must divide the width and key/value heads the heads"
            )
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the {self.max_len} positions")
        head_dim = width // self.num_heads

        def project(name: str, heads: int, axis: str) -> jax.Array:
            return nn.DenseGeneral(
                (heads, head_dim),
                use_bias=False,
                **_logical.dense(("embed",), (axis, "kv"), self.kernel_init),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )(x)  # (B, T, heads, Dh)

        start, ready = decode_position(self, length) if decode else (0, False)
        if ready:  # rows start .. start + T - 1 of the tables for every position
            tables = rope_tables(self.max_len, head_dim, self.rope_base)
            cos, sin = (jax.lax.dynamic_slice_in_dim(jnp.asarray(t), start, length) for t in tables)
        else:
            cos, sin = rope_tables(length, head_dim, self.rope_base)
        q = apply_rope(project("query", self.num_heads, "heads"), cos, sin)  # (B, T, H, Dh)
        k = apply_rope(project("key", self.num_kv_heads, "kv_heads"), cos, sin)  # (B, T, K, Dh)
        v = project("value", self.num_kv_heads, "kv_heads")  # (B, T, K, Dh)
        cached = update_kv_cache(self, k, v, start, ready) if decode else None
        if cached is not None:
            k, v, mask = cached  # the whole cache (B, S, K, Dh) each, mask (1, 1, T, S)
            y = attention(q, k, v, mask=mask, implementation=self.attention_impl)
        else:
            y = attention(q, k, v, causal=True, implementation=self.attention_impl)
        # y: (B, T, H, Dh)
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            use_bias=False,
            **_logical.dense(("heads", "kv"), ("embed",), self.kernel_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="out",
        )(y)  # (B, T, D)


class SwiGLU(nn.Module):
    """Gated feed-forward network (Shazeer 2020): w2(silu(w1 x) * w3 x), no biases."""

    hidden: int
    kernel_init: Initializer = INIT
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda n, axes, name: nn.Dense(  # noqa: E731
            n,
            use_bias=False,
            **_logical.dense(*axes, self.kernel_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        up = (("embed",), ("mlp",))  # w1 and w3 column-parallel, w2 row-parallel
        gate = nn.silu(dense(self.hidden, up, "w1")(x))  # (B, T, F)
        down = dense(x.shape[-1], (("mlp",), ("embed",)), "w2")
        return down(gate * dense(self.hidden, up, "w3")(x))  # (B, T, D)


class LlamaBlock(nn.Module):
    """x + attention(RMSNorm(x)), then x + mlp(RMSNorm(x)).

    `mlp` is the feed-forward layer's class or factory: the block builds it as
    mlp(mlp_dim, kernel_init=..., dtype=..., param_dtype=..., name="mlp") and applies it to
    (B, T, D) activations, which it must map to (B, T, D).
    """

    num_heads: int
    num_kv_heads: int
    mlp_dim: int
    max_len: int
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5
    mlp: Callable[..., nn.Module] = SwiGLU
    kernel_init: Initializer = INIT
    attention_impl: str | None = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, decode: bool = False) -> jax.Array:
        """`train` and `decode` may be passed positionally, as a rematerialised block needs."""

        def norm(name: str) -> RMSNorm:
            return RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name=name)

        attention = GroupedQueryAttention(
            self.num_heads,
            self.num_kv_heads,
            self.max_len,
            self.rope_base,
            kernel_init=self.kernel_init,
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attention",
        )
        x = _logical.batch_split(x)
        x = x + attention(norm("attention_norm")(x), decode=decode)
        mlp = self.mlp(
            self.mlp_dim,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="mlp",
        )
        return _logical.batch_split(x + mlp(norm("mlp_norm")(x)))  # (B, T, D)


class Llama(nn.Module):
    """Llama causal LM: token embedding, pre-norm blocks, final RMSNorm, untied output head."""

    vocab_size: int
    num_layers: int
    width: int
    num_heads: int
    num_kv_heads: int
    mlp_dim: int
    max_len: int  # the context the rotary tables cover
    rope_base: float = 10_000.0  # theta
    norm_eps: float = 1e-5
    mlp: Callable[..., nn.Module] = SwiGLU  # each block's feed-forward layer
    attention_impl: str | None = None  # None (JAX chooses) or _transformer.ATTENTION_IMPLS
    remat: str = "none"  # each block's rematerialisation policy (archbench.archs._remat)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, decode: bool = False) -> jax.Array:
        """x (B, T) tokens -> (B, T, V) logits; `decode`: continue the sequence whose keys and
        values the "cache" collection holds (archbench.archs._transformer)."""
        h = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=_logical.named(INIT, "vocab", "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="token_embed",
        )(x)  # (B, T, D)
        block = _remat.block(LlamaBlock, self.remat, static_argnums=(2, 3))  # train, decode
        for i in range(self.num_layers):
            h = block(
                self.num_heads,
                self.num_kv_heads,
                self.mlp_dim,
                self.max_len,
                self.rope_base,
                self.norm_eps,
                mlp=self.mlp,
                attention_impl=self.attention_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block_{i}",
            )(h, train, decode)  # (B, T, D)
        h = RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name="norm_final")(h)
        return nn.Dense(
            self.vocab_size,
            use_bias=False,
            **_logical.dense(("embed",), ("vocab",), INIT),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="output",
        )(h)  # (B, T, V)


def _size(layers, width, heads, kv_heads, mlp, vocab, seq, max_len=None, theta=1e4, **kw):
    config = {
        "vocab_size": vocab, "num_layers": layers, "width": width, "num_heads": heads,
        "num_kv_heads": kv_heads, "mlp_dim": mlp, "max_len": max_len or seq,
        "rope_base": theta, "norm_eps": 1e-5,
    }  # fmt: skip
    return Size(config, InputSpec("tokens", (seq,), vocab), **kw)


# Parameters, with Dh = D / H the head width and K the key/value heads (no biases):
#   2 * V * D                                   token embedding and untied output head
#   + L * (2 * D * D + 2 * D * K * Dh           query and output; key and value
#          + 3 * D * F                          SwiGLU w1, w3 (D x F) and w2 (F x D)
#          + 2 * D)                             the block's two RMSNorm scales
#   + D                                         final RMSNorm
# Llama-2-7B (V 32,000, D 4,096, L 32, K = H = 32, F 11,008): 262,144,000 + 32 * (33,554,432
#   + 33,554,432 + 135,266,304 + 8,192) + 4,096 = 6,738,415,616, the released checkpoint's
#   count. Llama-3-8B (V 128,256, K 8, Dh 128, F 14,336): 1,050,673,152 + 32 * (33,554,432
#   + 8,388,608 + 176,160,768 + 8,192) + 4,096 = 8,030,261,248, likewise. The rotary tables
#   are computed, not learned (Hugging Face keeps them as non-persistent buffers).
# F follows Meta's rule: int(8/3 D) (times 1.3 for Llama 3) rounded up to a multiple of 256
# (Llama 2) or 1,024 (Llama 3) gives 11,008 and 14,336. The smaller sizes round 8/3 D up to a
# multiple of 32 or 128: about the parameters of a 4 D GELU MLP (3 D F ~ 8 D^2).
LLAMA2 = (
    "Touvron et al. 2023, LLaMA (arXiv:2302.13971) sec. 2.2, Table 2 (7B shape); Llama 2 "
    "(arXiv:2307.09288) sec. 2.2, Table 1 (4k context); config.json and exact tensor count of "
    "the released meta-llama/Llama-2-7b-hf"
)
LLAMA3 = (
    "Grattafiori et al. 2024, The Llama 3 Herd of Models (arXiv:2407.21783) Table 3; "
    "config.json and exact tensor count of the released meta-llama/Meta-Llama-3-8B"
)

SIZES = {
    "tiny": _size(2, 32, 4, 2, mlp=96, vocab=128, seq=16),
    "small": _size(2, 128, 4, 2, mlp=384, vocab=1024, seq=128),
    # GPT-2 small's width with Llama's parts, 8 layers and 4 key/value heads: 99.5M parameters,
    # 50.3M of them outside the embedding and head. 512-token inputs; rotary tables for 1,024.
    "100m": _size(8, 768, 12, 4, mlp=2048, vocab=32000, seq=512, max_len=1024),
    "7b": _size(
        32, 4096, 32, 32, mlp=11008, vocab=32000, seq=4096,
        canonical="Llama-2-7B", published_params=6_738_415_616, source=LLAMA2,
    ),
    "8b": _size(
        32, 4096, 32, 8, mlp=14336, vocab=128256, seq=8192, theta=500_000.0,
        canonical="Llama-3-8B", published_params=8_030_261_248, source=LLAMA3,
    ),
}  # fmt: skip

register(
    ArchSpec(
        name="llama",
        family="Llama decoder",
        module=Llama,
        task="lm",
        sizes=SIZES,
        variants=ATTENTION_VARIANTS,
    )
)
