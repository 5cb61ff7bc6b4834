"""The encoder-decoder Transformer of Vaswani et al. 2017, "Attention is all you need"."""

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _logical, _remat
from archbench.archs._transformer import ATTENTION_VARIANTS, Block, sinusoidal_positions
from archbench.archs.inputs import InputSpec
from archbench.archs.registry import ArchSpec, Size, register


class Transformer(nn.Module):
    """Encoder-decoder Transformer: sinusoidal positions, post-LN, one tied shared embedding."""

    vocab_size: int  # shared source/target vocabulary
    encoder_layers: int
    decoder_layers: int
    width: int  # d_model
    num_heads: int
    mlp_dim: int  # d_ff
    dropout: float = 0.0  # P_drop: sub-layer outputs and embedding sums (sec. 5.4)
    layer_norm_eps: float = 1e-6
    attention_impl: str | None = None  # None (JAX chooses) or _transformer.ATTENTION_IMPLS
    remat: str = "none"  # each block's rematerialisation policy (archbench.archs._remat)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        # Sec. 3.4: one matrix embeds source and target tokens and is the pre-softmax
        # projection; embeddings are multiplied by sqrt(d_model), so N(0, 1/d) starts at unit scale.
        self.embed = nn.Embed(
            self.vocab_size,
            self.width,
            embedding_init=_logical.named(
                nn.initializers.normal(self.width**-0.5), "vocab", "embed"
            ),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        block = partial(
            _remat.block(Block, self.remat, static_argnums=(3,)),  # train
            self.num_heads,
            self.mlp_dim,
            dropout=self.dropout,
            act=nn.relu,  # FFN(x) = max(0, x W1 + b1) W2 + b2 (eq. 2)
            attention_bias=False,  # Q W^Q, K W^K, V W^V and W^O without biases (sec. 3.2.2)
            layer_norm_eps=self.layer_norm_eps,
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.encoder = [block(name=f"encoder_{i}") for i in range(self.encoder_layers)]
        self.decoder = [block(causal=True, name=f"decoder_{i}") for i in range(self.decoder_layers)]
        self.drop = nn.Dropout(self.dropout)

    def _embed(self, tokens: jax.Array, train: bool) -> jax.Array:
        h = self.embed(tokens) * jnp.asarray(math.sqrt(self.width), self.dtype)  # (B, T, D)
        h = h + jnp.asarray(sinusoidal_positions(tokens.shape[1], self.width), self.dtype)
        return self.drop(h, deterministic=not train)

    def encode(self, src: jax.Array, *, train: bool = False) -> jax.Array:
        """The encoder's output (B, S, D) for source tokens (B, S)."""
        h = self._embed(src, train)
        for block in self.encoder:
            h = block(h, None, train)
        return h

    def decode(self, tgt: jax.Array, memory: jax.Array, *, train: bool = False) -> jax.Array:
        """Next-token logits (B, T, V) for decoder inputs (B, T) attending to `memory`."""
        h = self._embed(tgt, train)
        for block in self.decoder:
            h = block(h, memory, train)  # causal self-attention, then cross-attention
        return self.embed.attend(h)  # (B, T, V)

    def __call__(self, x: dict, *, train: bool = False) -> jax.Array:
        return self.decode(x["tgt"], self.encode(x["src"], train=train), train=train)


def _size(layers, width, heads, mlp, vocab, src_tgt, dropout=0.0, **kw) -> Size:
    config = {
        "vocab_size": vocab, "encoder_layers": layers, "decoder_layers": layers,
        "width": width, "num_heads": heads, "mlp_dim": mlp, "dropout": dropout,
    }  # fmt: skip
    return Size(config, InputSpec("seq2seq", src_tgt, vocab), **kw)


# Parameters: V*D (the one embedding) + N*(4*D*D + 2*D*F + F + D + 2*2*D) for the encoder
# + N*(8*D*D + 2*D*F + F + D + 3*2*D) for the decoder. Post-LN needs no final LayerNorm.
# Transformer (base): 18,944,000 + 18,902,016 + 25,199,616 = 63,045,632 ~ 63.0M; Table 3: 65M.
# Transformer (big): 37,888,000 + 6*12,592,128 + 6*16,788,480 = 214,171,648 ~ 214M; Table 3: 213M.
TABLE3 = (
    "Vaswani et al. 2017, Table 3 ({name}) and sec. 5.1 (shared BPE vocabulary of about 37000); "
    "exact count {count} here, Table 3 lists {paper} (a rounded figure, not reproducible exactly)"
)

register(
    ArchSpec(
        name="transformer",
        family="Transformer encoder-decoder",
        module=Transformer,
        variants=ATTENTION_VARIANTS,
        task="seq2seq",
        sizes={
            "tiny": _size(1, 32, 2, 64, vocab=64, src_tgt=(16, 16)),
            "small": _size(2, 128, 4, 512, vocab=1024, src_tgt=(64, 64)),
            # Sentence pairs padded to 128 tokens: fixed-length synthetic batches.
            "base": _size(
                layers=6,
                width=512,
                heads=8,
                mlp=2048,
                vocab=37000,
                src_tgt=(128, 128),
                dropout=0.1,
                canonical="Transformer (base)",
                source=TABLE3.format(name="base", count="63,045,632", paper="65M"),
            ),
            "big": _size(
                layers=6,
                width=1024,
                heads=16,
                mlp=4096,
                vocab=37000,
                src_tgt=(128, 128),
                dropout=0.3,
                canonical="Transformer (big)",
                source=TABLE3.format(name="big", count="214,171,648", paper="213M"),
            ),
        },
    )
)
