"""Transformer encoder classifier in the style of BERT (Devlin et al. 2019)."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _logical, _remat
from archbench.archs._transformer import ATTENTION_VARIANTS, Block, layer_norm, learned_positions
from archbench.archs.inputs import ROWS_28, InputSpec
from archbench.archs.registry import ArchSpec, Size, register


class Encoder(nn.Module):
    """BERT-style encoder: token, position and type embeddings, post-LN blocks, pooler, head."""

    vocab_size: int | None  # None: float inputs (B, T, F), projected to the width by a Dense
    num_layers: int
    width: int
    num_heads: int
    mlp_dim: int
    max_len: int  # learned positions
    num_token_types: int = 0  # BERT's segment embeddings; 0 for none
    num_classes: int = 2
    dropout: float = 0.0
    layer_norm_eps: float = 1e-12  # BERT's value; statistics are reduced in float32
    attention_impl: str | None = None  # None (JAX chooses) or _transformer.ATTENTION_IMPLS
    remat: str = "none"  # each block's rematerialisation policy (archbench.archs._remat)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        init = nn.initializers.truncated_normal(0.02)  # BERT's initializer_range
        dense = lambda n, axes, name: nn.Dense(  # noqa: E731
            n, **_logical.dense(*axes, init), dtype=self.dtype, param_dtype=self.param_dtype,
            name=name,
        )  # fmt: skip
        embed = lambda n, axis, name: nn.Embed(  # noqa: E731
            n, self.width, embedding_init=_logical.named(init, axis, "embed"),
            dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        )  # fmt: skip
        drop = nn.Dropout(self.dropout, deterministic=not train)

        if self.vocab_size is None:
            h = dense(self.width, ((None,), ("embed",)), "input_proj")(x)  # (B, T, F) -> (B, T, D)
        else:
            h = embed(self.vocab_size, "vocab", "token_embed")(x)  # (B, T, D)
        h = h + learned_positions(
            x.shape[1], self.max_len, self.width, init, self.dtype, self.param_dtype
        )
        if self.num_token_types:
            # A single segment: every token has type 0, as in single-sentence classification.
            h = h + embed(self.num_token_types, None, "type_embed")(jnp.zeros((1,), jnp.int32))
        h = drop(layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_embed")(h))
        block = _remat.block(Block, self.remat, static_argnums=(3,))  # train
        for i in range(self.num_layers):
            h = block(
                self.num_heads,
                self.mlp_dim,
                dropout=self.dropout,
                act=partial(nn.gelu, approximate=False),  # erf GELU, as Hugging Face's BERT
                layer_norm_eps=self.layer_norm_eps,
                kernel_init=init,
                attention_impl=self.attention_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block_{i}",
            )(h, None, train)  # (B, T, D)
        pooler = dense(self.width, (("embed",), ("embed",)), "pooler")
        pooled = nn.tanh(pooler(h[:, 0]))  # (B, D) from the first token
        classifier = dense(self.num_classes, (("embed",), ("classes",)), "classifier")
        return classifier(drop(pooled))  # (B, C)


def _size(layers, width, heads, mlp, vocab, max_len, seq, types=2, dropout=0.0, **kw) -> Size:
    config = {
        "vocab_size": vocab, "num_layers": layers, "width": width, "num_heads": heads,
        "mlp_dim": mlp, "max_len": max_len, "num_token_types": types, "dropout": dropout,
    }  # fmt: skip
    return Size(config, InputSpec("tokens", (seq,), vocab), **kw)


# Hugging Face BertModel (with pooler) has 109,482,240 parameters for BERT-base and
# 335,141,888 for BERT-large: embeddings V*D + 512*D + 2*D + 2*D (LayerNorm), per layer
# 4*(D*D + D) + 2*D*F + F + D + 4*D, pooler D*D + D. The classifier adds D*C + C (C = 2).
BERT_SOURCE = (
    "Devlin et al. 2019, sec. 3 (L, H, A) and Appendix A.2; the count is Hugging Face "
    "BertModel's {count:,} plus the {classes}-way classifier, {head:,}, derived exactly"
)

register(
    ArchSpec(
        name="encoder",
        family="Transformer encoder",
        module=Encoder,
        variants=ATTENTION_VARIANTS,
        task="classify",
        sizes={
            "tiny": _size(2, 32, 2, 64, vocab=128, max_len=16, seq=16),
            "small": _size(2, 128, 4, 512, vocab=1024, max_len=128, seq=128),
            # The same encoder over float features: a 28x28 image as 28 tokens of 28 pixels
            # (the recipe transformer-rows-fashion). Not a published model.
            "rows": Size(
                {
                    "vocab_size": None,
                    "num_layers": 2,
                    "width": 64,
                    "num_heads": 4,
                    "mlp_dim": 128,
                    "max_len": 28,
                    "num_classes": 10,
                },
                ROWS_28,
            ),
            # BERT-base: L=12, H=768, A=12, F=3072, WordPiece 30,522, 512 positions, 2 segments;
            # dropout 0.1 on embeddings and sub-layer outputs. Benchmarked at 512 tokens.
            "base": _size(
                layers=12,
                width=768,
                heads=12,
                mlp=3072,
                vocab=30522,
                max_len=512,
                seq=512,
                dropout=0.1,
                canonical="BERT-base",
                published_params=109_482_240 + 768 * 2 + 2,
                source=BERT_SOURCE.format(count=109_482_240, classes=2, head=768 * 2 + 2),
            ),
            "large": _size(
                layers=24,
                width=1024,
                heads=16,
                mlp=4096,
                vocab=30522,
                max_len=512,
                seq=512,
                dropout=0.1,
                canonical="BERT-large",
                published_params=335_141_888 + 1024 * 2 + 2,
                source=BERT_SOURCE.format(count=335_141_888, classes=2, head=1024 * 2 + 2),
            ),
        },
    )
)
