"""Transformer decoder language model in the style of GPT-2 (Radford et al. 2019)."""

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _logical, _remat
from archbench.archs._transformer import (
    ATTENTION_VARIANTS,
    Block,
    decode_position,
    layer_norm,
    learned_positions,
)
from archbench.archs.inputs import InputSpec
from archbench.archs.registry import ArchSpec, Size, register


class GPT(nn.Module):
    """GPT-2-style causal LM: learned positions, pre-LN blocks, final LayerNorm, tied output."""

    vocab_size: int
    num_layers: int
    width: int
    num_heads: int
    mlp_dim: int
    max_len: int  # learned positions (the context length)
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5  # GPT-2's value; statistics are reduced in float32
    attention_impl: str | None = None  # None (JAX chooses) or _transformer.ATTENTION_IMPLS
    remat: str = "none"  # each block's rematerialisation policy (archbench.archs._remat)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, decode: bool = False) -> jax.Array:
        """x (B, T) tokens -> (B, T, V) logits. `decode`: x continues the sequence whose keys
        and values are in the "cache" collection (archbench.archs._transformer), at positions
        after those it holds."""
        normal = nn.initializers.normal
        token_embed = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=_logical.named(normal(0.02), "vocab", "embed"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="token_embed",
        )
        h = token_embed(x)  # (B, T, D)
        # openai/gpt-2 model.py draws wte from N(0, 0.02) and wpe from N(0, 0.01).
        start = decode_position(self, x.shape[1])[0] if decode else None
        h = h + learned_positions(
            x.shape[1], self.max_len, self.width, normal(0.01), self.dtype, self.param_dtype, start
        )
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        block = _remat.block(Block, self.remat, static_argnums=(3, 4))  # train, decode
        for i in range(self.num_layers):
            h = block(
                self.num_heads,
                self.mlp_dim,
                pre_norm=True,
                causal=True,
                dropout=self.dropout,
                act=partial(nn.gelu, approximate=True),  # GPT-2's tanh approximation
                layer_norm_eps=self.layer_norm_eps,
                kernel_init=normal(0.02),
                # GPT-2 sec. 2.3: residual projections scaled by 1/sqrt(N residual layers).
                out_init=normal(0.02 / math.sqrt(2 * self.num_layers)),
                attention_impl=self.attention_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block_{i}",
            )(h, None, train, decode)  # (B, T, D)
        h = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_final")(h)
        return token_embed.attend(h)  # (B, T, V), the token embedding as output projection


def _size(layers, width, heads, vocab, max_len, seq, dropout=0.0, **kw) -> Size:
    config = {
        "vocab_size": vocab, "num_layers": layers, "width": width, "num_heads": heads,
        "mlp_dim": 4 * width, "max_len": max_len, "dropout": dropout,
    }  # fmt: skip
    return Size(config, InputSpec("tokens", (seq,), vocab), **kw)


# Parameters: V*D + P*D (embeddings) + L*(12*D*D + 13*D) + 2*D (final LayerNorm), with no
# output matrix of its own. The paper's Table 2 says 117M and 345M; the released checkpoints
# have the counts below (the paper's figures are known to be miscounted).
GPT2_SOURCE = "Radford et al. 2019, Table 2 (layers, width); exact count of the released {name}"

register(
    ArchSpec(
        name="gpt",
        family="Transformer decoder",
        module=GPT,
        variants=ATTENTION_VARIANTS,
        task="lm",
        sizes={
            "tiny": _size(2, 32, 2, vocab=128, max_len=16, seq=16),
            "small": _size(2, 128, 4, vocab=1024, max_len=128, seq=128),
            # GPT-2 small: 12 layers, 768 wide, 12 heads, BPE vocabulary 50,257, context 1,024;
            # dropout 0.1 on embeddings and residuals, GPT-1's value (the GPT-2 paper gives none).
            "base": _size(
                layers=12,
                width=768,
                heads=12,
                vocab=50257,
                max_len=1024,
                seq=1024,
                dropout=0.1,
                canonical="GPT-2 small",
                published_params=124_439_808,
                source=GPT2_SOURCE.format(name="gpt2 (124M)"),
            ),
            "medium": _size(
                layers=24,
                width=1024,
                heads=16,
                vocab=50257,
                max_len=1024,
                seq=1024,
                dropout=0.1,
                canonical="GPT-2 medium",
                published_params=354_823_168,
                source=GPT2_SOURCE.format(name="gpt2-medium (355M)"),
            ),
        },
    )
)
