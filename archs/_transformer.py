"""Blocks shared by the Transformer families: attention, MLP, the residual layer, positions.

Every attention layer (these blocks', and Llama's and MoE's grouped-query attention) calls
`attention`, whose `implementation` is the module field `attention_impl`, and each family
declares the choices as implementation variants (`ATTENTION_VARIANTS`, `--variant`):

- None, the default: `jax.nn.dot_product_attention` picks (XLA's attention in jax 0.12);
- "xla": `jax.nn.dot_product_attention(implementation="xla")`;
- "cudnn": cuDNN's fused flash attention, on an NVIDIA GPU computing in bfloat16 or float16
  only; elsewhere the cell is "unsupported" (`Unsupported` at trace time), not an error;
- "einsum": `einsum_attention`, the computation written out as einsums and a softmax, with
  nothing fused by hand: the baseline the library paths are measured against.

All of them compute the logits and the softmax in float32 whatever the compute dtype, and
none has dropout on the attention weights (the fused kernels have none), so these blocks
apply dropout to sub-layer outputs and embeddings only ("residual dropout", Vaswani et al.
2017 sec. 5.4).
"""

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from archbench.archs import _logical
from archbench.errors import Unsupported

Initializer = Callable[..., jax.Array]

ATTENTION_IMPLS = ("xla", "cudnn", "einsum")
# The Transformer families' implementation variants (ArchSpec.variants): the same parameters
# and outputs, attention computed another way. None, JAX's choice, is the default variant.
ATTENTION_VARIANTS = {impl: {"attention_impl": impl} for impl in ATTENTION_IMPLS}


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
    implementation: str | None = None,
) -> jax.Array:
    """softmax(q k^T / sqrt(Dh), masked) v for every query head, by `implementation`.

    Args:
      q: (B, T, H, Dh) queries; k, v: (B, S, K, Dh) keys and values. K divides H: query head
        n reads key/value head n // (H / K) (grouped-query attention; K = H is multi-head).
      causal: query t sees keys 0 .. t only.
      mask: boolean, (B or 1, H or 1, T, S): True where a query may see a key.
      implementation: None (JAX chooses), or one of ATTENTION_IMPLS.
    Returns:
      (B, T, H, Dh) in v's dtype.
    Raises:
      Unsupported: "cudnn" on a backend other than a GPU, or computing in float32.
    """
    if implementation not in (None, *ATTENTION_IMPLS):
        raise ValueError(f"attention_impl {implementation!r} not in (None, {ATTENTION_IMPLS})")
    if implementation == "einsum":
        return einsum_attention(q, k, v, causal=causal, mask=mask)
    if implementation == "cudnn":
        backend = jax.default_backend()
        if backend != "gpu":
            raise Unsupported(f"cudnn attention needs an NVIDIA GPU; this backend is {backend}")
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            raise Unsupported(f"cudnn attention computes in bfloat16 or float16, not {q.dtype}")
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=causal, implementation=implementation
    )


def einsum_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Attention written out (arguments as for `attention`): the logits q k^T by einsum,
    accumulated in float32, times 1/sqrt(Dh); masked positions set to float32's lowest value;
    the softmax in float32; the weights, cast to v's dtype, times v by einsum. It holds the
    (B, H, T, S) logits in memory, as XLA's path does."""
    batch, length, heads, head_dim = q.shape
    kv_heads, source = k.shape[2], k.shape[1]
    group = heads // kv_heads
    # Query head n = kv * group + g: the (H,) axis splits into (K, G), kv head major.
    q = q.reshape(batch, length, kv_heads, group, head_dim)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits * np.float32(1.0 / math.sqrt(head_dim))  # (B, K, G, T, S)
    visible = None
    if causal:
        visible = jnp.tril(jnp.ones((length, source), bool))  # (T, S): key s <= query t
    if mask is not None:
        if mask.shape[1] == 1:  # one mask for every head
            mask = mask[:, :, None]  # (B, 1, 1, T, S)
        else:
            mask = mask.reshape(mask.shape[0], kv_heads, group, *mask.shape[2:])
        visible = mask if visible is None else jnp.logical_and(visible, mask)
    if visible is not None:
        logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # (B, K, G, T, S)
    y = jnp.einsum("bkgts,bskd->btkgd", weights, v)
    return y.reshape(batch, length, heads, head_dim)  # (B, T, H, Dh)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention of `x` over `context` (itself if None)."""

    num_heads: int
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    out_init: Initializer | None = None  # output projection; kernel_init if None
    attention_impl: str | None = None  # None (JAX chooses) or one of ATTENTION_IMPLS
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
                **_logical.dense(("embed",), ("heads", "kv"), self.kernel_init),
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
            y = attention(q, k, v, mask=mask, implementation=self.attention_impl)
        else:
            y = attention(q, k, v, causal=causal, implementation=self.attention_impl)
        # y: (B, T, H, Dh)
        return nn.DenseGeneral(
            width,
            axis=(-2, -1),
            use_bias=self.use_bias,
            **_logical.dense(("heads", "kv"), ("embed",), self.out_init or self.kernel_init),
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
    axis: str | None = "embed"  # the logical name of the width it maps from and back to
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        dense = lambda n, inits, name: nn.Dense(  # noqa: E731
            n, **inits, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        # Column then row: the hidden units F are the axis a tensor-parallel strategy splits.
        fc = _logical.dense((self.axis,), ("mlp",), self.kernel_init)
        proj = _logical.dense(("mlp",), (self.axis,), self.out_init or self.kernel_init)
        h = self.act(dense(self.hidden, fc, "fc")(x))  # (B, T, F)
        return dense(width, proj, "proj")(h)  # (B, T, D)


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
        train: bool = False,
        decode: bool = False,
    ) -> jax.Array:
        """`train` and `decode` may be passed positionally (arguments 3 and 4), as a
        rematerialised block needs them (archbench.archs._remat)."""

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
        x = _logical.batch_split(x)
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
        return _logical.batch_split(residual(x, mlp, "mlp"))  # (B, T, D)


def layer_norm(eps: float, dtype, param_dtype, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm whose mean and variance are reduced in float32 even for bf16 compute."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=param_dtype,
        force_float32_reductions=True,
        **_logical.norm("embed"),
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
        max_len,
        width,
        embedding_init=_logical.named(init, None, "embed"),
        dtype=dtype,
        param_dtype=param_dtype,
        name="pos_embed",
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
