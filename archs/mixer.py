"""MLP-Mixer (Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture for Vision").

GELU is the tanh approximation, flax's `nn.gelu` as Google's released JAX code uses it; timm's
port uses the exact erf form. The two differ by up to 5e-4 (at |x| near 2.7), which moves the
golden test's logits by about 1e-3, so tests/test_golden.py checks this module against timm's
`MlpMixer` built with a tanh GELU.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _logical, _remat
from archbench.archs._transformer import Mlp, layer_norm
from archbench.archs.inputs import CIFAR, IMAGE_28, IMAGENET
from archbench.archs.registry import ArchSpec, Size, register
from archbench.archs.vit import embed_patches

# Flax's default Dense initialiser, the one the released JAX Mixer uses.
lecun_normal = nn.initializers.lecun_normal()


class MixerLayer(nn.Module):
    """One Mixer layer, eq. 1 of the paper (sec. 2), on each example's X of S patches by C
    channels (the batch is (B, S, C)):
    U[:, i] = X[:, i] + W2 gelu(W1 LayerNorm(X)[:, i])  token mixing, each channel i alike
    Y[j, :] = U[j, :] + W4 gelu(W3 LayerNorm(U)[j, :])  channel mixing, each patch j alike
    """

    tokens_mlp_dim: int  # D_S
    channels_mlp_dim: int  # D_C
    layer_norm_eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def norm(name: str) -> nn.LayerNorm:
            return layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, name)

        def mlp(hidden: int, axis: str | None, name: str) -> Mlp:  # Dense, GELU, Dense back
            return Mlp(
                hidden,
                axis=axis,  # the width it maps back to: the patches (unnamed) or channels
                act=nn.gelu,  # flax's (tanh-approximate) GELU, as the released code
                kernel_init=lecun_normal,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        x = _logical.batch_split(x)
        y = jnp.swapaxes(norm("ln_token")(x), 1, 2)  # (B, C, S): mix across patches
        x = x + jnp.swapaxes(mlp(self.tokens_mlp_dim, None, "token_mixing")(y), 1, 2)  # (B, S, C)
        y = norm("ln_channel")(x)  # (B, S, C): mix across channels
        y = mlp(self.channels_mlp_dim, "embed", "channel_mixing")(y)
        return _logical.batch_split(x + y)  # (B, S, C)


class MLPMixer(nn.Module):
    """Mixer classifier: per-patch linear embedding, Mixer layers, a final LayerNorm, global
    average pooling over the patches and a linear head."""

    patch_size: int
    num_layers: int
    hidden_dim: int  # C, the channels of every patch
    tokens_mlp_dim: int  # D_S
    channels_mlp_dim: int  # D_C
    num_classes: int = 1000
    layer_norm_eps: float = 1e-6
    remat: str = "none"  # each block's rematerialisation policy (archbench.archs._remat)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = embed_patches(
            x, self.patch_size, self.hidden_dim, self.dtype, self.param_dtype, "stem"
        )  # (B, S, C)
        layer = _remat.block(MixerLayer, self.remat)
        for i in range(self.num_layers):
            h = layer(
                self.tokens_mlp_dim,
                self.channels_mlp_dim,
                layer_norm_eps=self.layer_norm_eps,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"layer_{i}",
            )(h)  # (B, S, C)
        h = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_final")(h)
        head = nn.Dense(
            self.num_classes,
            # zero head kernel, as the released code
            **_logical.dense(("embed",), ("classes",), nn.initializers.zeros),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )
        return head(jnp.mean(h, axis=1))  # (B, C) from the patches' average


def _size(patch, layers, hidden, tokens_mlp, channels_mlp, classes, image, **kw) -> Size:
    config = {
        "patch_size": patch, "num_layers": layers, "hidden_dim": hidden,
        "tokens_mlp_dim": tokens_mlp, "channels_mlp_dim": channels_mlp, "num_classes": classes,
    }  # fmt: skip
    return Size(config, image, **kw)


# Parameters of a Mixer with patch P on an HxWx3 image, S = HW/P^2 patches, hidden size C,
# MLP dims D_S and D_C, L layers and K classes:
#   stem             P*P*3*C + C
#   per layer        LayerNorm 2C + token MLP S*D_S + D_S + D_S*S + S
#                    + LayerNorm 2C + channel MLP C*D_C + D_C + D_C*C + C
#   final LayerNorm  2C
#   head             C*K + K
# B/16 (S = 196, C = 768, D_S = 384, D_C = 3,072, L = 12, K = 1,000): per layer
#   1,536 + 75,648 + 75,460 + 1,536 + 2,362,368 + 2,360,064 = 4,876,612, and in all
#   590,592 + 12 * 4,876,612 + 1,536 + 769,000 = 59,880,472
# (the paper's Table 1 rounds to 59M; timm's mixer_b16_224 has the same count).
register(
    ArchSpec(
        name="mixer",
        family="MLP-Mixer",
        module=MLPMixer,
        task="classify",
        sizes={
            # 16 patches of 7x7 on a 28x28 image.
            "tiny": _size(
                7, layers=2, hidden=32, tokens_mlp=16, channels_mlp=64, classes=10, image=IMAGE_28
            ),
            # CIFAR-10 sized: 64 patches of 4x4, D_S = C/2 and D_C = 4C as the paper's Table 1.
            # Not a published model.
            "small": _size(
                4, layers=4, hidden=128, tokens_mlp=64, channels_mlp=512, classes=10, image=CIFAR
            ),
            "B/16": _size(
                16,
                layers=12,
                hidden=768,
                tokens_mlp=384,
                channels_mlp=3072,
                classes=1000,
                image=IMAGENET,
                canonical="Mixer-B/16",
                published_params=59_880_472,
                source="Tolstikhin et al. 2021, Table 1 (Mixer-B/16: 12 layers, patch 16, hidden "
                "size C 768, MLP dims D_S 384 and D_C 3072, 59M); exact count derived from the "
                "shapes",
            ),
        },
    )
)
