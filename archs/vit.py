"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

GELU is the tanh approximation, flax's `nn.gelu` as Google's released JAX code uses it; the
PyTorch ports (timm, Hugging Face) use the exact erf form. The two differ by up to 5e-4 (at
|x| near 2.7), which moves the golden test's logits by about 1e-3, so tests/test_golden.py
checks this module against timm's `VisionTransformer` built with `act_layer="gelu_tanh"`.
"""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _logical, _remat
from archbench.archs._transformer import ATTENTION_VARIANTS, Block, layer_norm, learned_positions
from archbench.archs.inputs import CIFAR, IMAGE_28, IMAGENET
from archbench.archs.registry import ArchSpec, Size, register


def embed_patches(x: jax.Array, patch: int, width: int, dtype, param_dtype, name: str):
    """Non-overlapping `patch` x `patch` patches, each projected linearly to `width`: a conv
    with kernel = stride = patch (the same as flattening each patch and one matmul). Call in
    a compact method.

    Returns:
      (B, N, width) with N = (H / patch) * (W / patch) patches in row-major order.
    """
    rows, cols = x.shape[1:3]
    if rows % patch or cols % patch:
        raise ValueError(f"image {rows}x{cols} is not divisible into {patch}x{patch} patches")
    # Flax's default lecun_normal kernel, as the released JAX models' "embedding" conv.
    x = nn.Conv(
        width,
        (patch, patch),
        strides=(patch, patch),
        padding="VALID",
        **_logical.conv("conv_in", "embed"),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )(x)  # (B, H/p, W/p, D)
    return x.reshape(x.shape[0], -1, width)  # (B, N, D)


class ViT(nn.Module):
    """ViT classifier: patch embedding, a learned class token, learned positions, pre-LN
    Transformer blocks, a final LayerNorm and a linear head on the class token."""

    patch_size: int
    num_layers: int
    width: int  # the paper's hidden size D
    num_heads: int
    mlp_dim: int
    num_classes: int = 1000
    # On the embeddings and every sub-layer output. The released code also drops inside the
    # MLP and on the attention weights, which _transformer's Block does not (see there).
    dropout: float = 0.0
    layer_norm_eps: float = 1e-6  # the released models' value; statistics reduced in float32
    attention_impl: str | None = None  # None (JAX chooses) or _transformer.ATTENTION_IMPLS
    remat: str = "none"  # each block's rematerialisation policy (archbench.archs._remat)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        h = embed_patches(
            x, self.patch_size, self.width, self.dtype, self.param_dtype, "patch_embed"
        )  # (B, N, D)
        # Initialised as the released JAX code (google-research/vision_transformer): a zero
        # class token, positions from N(0, 0.02), a zero head kernel.
        cls_init = _logical.named(_logical.ZEROS, None, None, "embed")
        cls = self.param("cls_token", cls_init, (1, 1, self.width), self.param_dtype)
        cls = jnp.broadcast_to(cls.astype(self.dtype), (h.shape[0], 1, self.width))
        h = jnp.concatenate([cls, h], axis=1)  # (B, N + 1, D): the class token first
        tokens = h.shape[1]
        h = h + learned_positions(
            tokens, tokens, self.width, nn.initializers.normal(0.02), self.dtype, self.param_dtype
        )  # (B, N + 1, D)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        block = _remat.block(Block, self.remat, static_argnums=(3,))  # train
        for i in range(self.num_layers):
            # Eq. 2-3: z' = MSA(LN(z)) + z, z = MLP(LN(z')) + z'. The Block's default
            # xavier_uniform kernels are the released models' too.
            h = block(
                self.num_heads,
                self.mlp_dim,
                pre_norm=True,
                dropout=self.dropout,
                act=partial(nn.gelu, approximate=True),  # flax's nn.gelu, as the released code
                layer_norm_eps=self.layer_norm_eps,
                attention_impl=self.attention_impl,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"block_{i}",
            )(h, None, train)  # (B, N + 1, D)
        h = layer_norm(self.layer_norm_eps, self.dtype, self.param_dtype, "ln_final")(h)
        head = nn.Dense(
            self.num_classes,
            **_logical.dense(("embed",), ("classes",), nn.initializers.zeros),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="head",
        )
        return head(h[:, 0])  # (B, C): eq. 4, y = LN(z_L^0), then the head


def _size(patch, layers, width, heads, mlp, classes, image, dropout=0.0, **kw) -> Size:
    config = {
        "patch_size": patch, "num_layers": layers, "width": width, "num_heads": heads,
        "mlp_dim": mlp, "num_classes": classes, "dropout": dropout,
    }  # fmt: skip
    return Size(config, image, **kw)


# Parameters of a ViT with patch P on an HxWx3 image, N = HW/P^2 patches, width D, MLP F,
# L layers and C classes:
#   patch embedding  P*P*3*D + D
#   class token      D
#   positions        (N + 1)*D
#   per layer        LayerNorm 2D + Q, K, V and output 4*(D*D + D) + LayerNorm 2D
#                    + MLP D*F + F + F*D + D  =  4D^2 + 2DF + 9D + F
#   final LayerNorm  2D
#   head             D*C + C
# B/16 (N = 196, D = 768, F = 3,072, L = 12, C = 1,000):
#   590,592 + 768 + 151,296 + 12 * 7,087,872 + 1,536 + 769,000 = 86,567,656
# L/16 (N = 196, D = 1,024, F = 4,096, L = 24, C = 1,000):
#   787,456 + 1,024 + 201,728 + 24 * 12,596,224 + 2,048 + 1,025,000 = 304,326,632
# These are the counts of the standard 1,000-class ImageNet models (timm's
# vit_base_patch16_224 and vit_large_patch16_224). The paper pre-trains with an extra hidden
# layer in the head (sec. 3.1, "an MLP with one hidden layer at pre-training time") and
# fine-tunes with a single linear layer; these sizes have the single linear layer.
VIT_SOURCE = (
    "Dosovitskiy et al. 2021, Table 1 (layers, hidden size D, MLP size, heads) and Table 3 "
    "(dropout 0.1 on ImageNet); exact count of the 1,000-class {name}, derived from the shapes"
)

register(
    ArchSpec(
        name="vit",
        family="Vision Transformer",
        module=ViT,
        variants=ATTENTION_VARIANTS,
        task="classify",
        sizes={
            # 16 patches of 7x7 on a 28x28 image.
            "tiny": _size(7, layers=2, width=32, heads=2, mlp=64, classes=10, image=IMAGE_28),
            # CIFAR-10 sized: 64 patches of 4x4 on a 32x32 image, 4 layers 128 wide with
            # Table 1's 4x MLP and 32-wide heads. Not a published model.
            "small": _size(4, layers=4, width=128, heads=4, mlp=512, classes=10, image=CIFAR),
            "B/16": _size(
                16,
                layers=12,
                width=768,
                heads=12,
                mlp=3072,
                classes=1000,
                image=IMAGENET,
                dropout=0.1,
                canonical="ViT-B/16",
                published_params=86_567_656,
                source=VIT_SOURCE.format(name="ViT-B/16"),
            ),
            "L/16": _size(
                16,
                layers=24,
                width=1024,
                heads=16,
                mlp=4096,
                classes=1000,
                image=IMAGENET,
                dropout=0.1,
                canonical="ViT-L/16",
                published_params=304_326_632,
                source=VIT_SOURCE.format(name="ViT-L/16"),
            ),
        },
    )
)
