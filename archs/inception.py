"""GoogLeNet / Inception-v1 (Szegedy et al. 2015, "Going deeper with convolutions")."""

from collections.abc import Callable, Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _conv, _logical
from archbench.archs._pooling import max_pool
from archbench.archs.inputs import CIFAR, IMAGENET, InputSpec
from archbench.archs.registry import ArchSpec, Size, register

# One Inception module as the columns of Table 1:
# (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
Widths = tuple[int, int, int, int, int, int]

# Table 1 of Szegedy et al. 2015, stages 3, 4 and 5; a 3x3/2 max-pool sits between stages.
TABLE_1: tuple[tuple[Widths, ...], ...] = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),  # 3a, 3b: 28x28 -> 256, 480
    (
        (192, 96, 208, 16, 48, 64),  # 4a: 14x14 -> 512
        (160, 112, 224, 24, 64, 64),  # 4b -> 512
        (128, 128, 256, 24, 64, 64),  # 4c -> 512
        (112, 144, 288, 32, 64, 64),  # 4d -> 528
        (256, 160, 320, 32, 128, 128),  # 4e -> 832
    ),
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),  # 5a, 5b: 7x7 -> 832, 1024
)


class ConvReLU(nn.Module):
    """Convolution with bias followed by ReLU: every convolution of GoogLeNet (no BatchNorm)."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    act: Callable = nn.relu
    conv_impl: str = "xla"  # how the convolution is computed (archbench.archs._conv)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = _conv.conv_class(self.conv_impl)(
            self.features,
            self.kernel_size,
            self.strides,
            padding="SAME",
            **_logical.conv("conv_in", "conv_out"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        return self.act(conv(x))


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-5x5; 3x3 max-pool-1x1) joined on channels."""

    widths: Widths
    conv: Callable  # ConvReLU with dtypes bound

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n1x1, reduce3, n3x3, reduce5, n5x5, pool_proj = self.widths
        b1 = self.conv(n1x1, (1, 1))(x)
        b3 = self.conv(reduce3, (1, 1))(x)
        b3 = self.conv(n3x3, (3, 3))(b3)
        b5 = self.conv(reduce5, (1, 1))(x)
        b5 = self.conv(n5x5, (5, 5))(b5)
        bp = max_pool(x, (3, 3), padding="SAME")
        bp = self.conv(pool_proj, (1, 1))(bp)
        return jnp.concatenate([b1, b3, b5, bp], axis=-1)  # (B, H, W, sum of branch widths)


class GoogLeNet(nn.Module):
    """GoogLeNet without its auxiliary classifiers: stem, Inception stages, pool, dropout, linear.

    The local response normalisations of the paper's Fig. 3 are left out (Table 1 lists none;
    they have no parameters), as in torchvision.
    """

    stages: Sequence[Sequence[Widths]] = TABLE_1
    stem_widths: tuple[int, int, int] = (64, 64, 192)  # conv 7x7/2; conv 3x3 reduce, 3x3
    num_classes: int = 1000
    dropout: float = 0.4
    conv_impl: str = "xla"  # how convolutions are computed (archbench.archs._conv)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = partial(
            ConvReLU, conv_impl=self.conv_impl, dtype=self.dtype, param_dtype=self.param_dtype
        )
        pool = partial(max_pool, window_shape=(3, 3), strides=(2, 2), padding="SAME")
        c1, r2, c2 = self.stem_widths
        x = conv(c1, (7, 7), 2)(x)  # (B, 112, 112, 64) at 224x224
        x = pool(x)  # (B, 56, 56, 64)
        x = conv(r2, (1, 1))(x)  # (B, 56, 56, 64)
        x = conv(c2, (3, 3))(x)  # (B, 56, 56, 192)
        x = pool(x)  # (B, 28, 28, 192)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = pool(x)  # (B, 14, 14, 480) before stage 4, (B, 7, 7, 832) before stage 5
            for widths in stage:
                x = InceptionBlock(widths, conv)(x)
        x = jnp.mean(x, axis=(1, 2))  # (B, 1024): the 7x7 average pool at 224x224
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(
            self.num_classes,
            **_logical.dense(("conv_out",), ("classes",)),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)


def scaled(stages: Sequence[Sequence[Widths]], divisor: int) -> tuple[tuple[Widths, ...], ...]:
    """Table 1 with every width divided by `divisor` (at least 1)."""
    return tuple(
        tuple(tuple(max(1, w // divisor) for w in widths) for widths in stage) for stage in stages
    )


register(
    ArchSpec(
        name="inception",
        family="Inception",
        module=GoogLeNet,
        task="classify",
        variants=_conv.VARIANTS,
        sizes={
            "tiny": Size(
                {
                    "stages": (((4, 4, 4, 2, 2, 2),), ((4, 4, 4, 2, 2, 2),)),
                    "stem_widths": (8, 8, 8),
                    "num_classes": 10,
                },
                CIFAR,
            ),
            # Table 1 at a quarter of the widths on 64x64 images (final map 2x2), 10 classes.
            "small": Size(
                {"stages": scaled(TABLE_1, 4), "stem_widths": (16, 16, 48), "num_classes": 10},
                InputSpec("image", (64, 64, 3)),
                source="Szegedy et al. 2015, Table 1, widths / 4",
            ),
            # 6,990,272 weights + 8,280 biases. Table 1's params column counts weights in units
            # of 1024 and sums to 6,797.7K; the weights here are 6,826.4K (+0.4%). Most rows
            # agree to 1%; conv 7x7/2 (9.2K vs 2.7K), 4c (497.5K vs 463K), 4d (590.5K vs 580K),
            # 5a (1,018K vs 1,072K) and 5b (1,409K vs 1,388K) do not, though their widths are
            # the table's. The total with biases is that of the BVLC Caffe reference model
            # (bvlc_googlenet deploy.prototxt, without auxiliary heads), as CaffeJS counts it.
            "base": Size(
                {},
                IMAGENET,
                canonical="GoogLeNet",
                published_params=6_998_552,
                source="Szegedy et al. 2015, Table 1; count of BVLC Caffe bvlc_googlenet (deploy)",
            ),
        },
    )
)
