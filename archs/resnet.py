"""ResNet (He et al. 2016, "Deep residual learning for image recognition"), ImageNet and CIFAR."""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _conv, _logical, _remat
from archbench.archs._pooling import max_pool
from archbench.archs.inputs import CIFAR, IMAGENET
from archbench.archs.registry import ArchSpec, Size, register

ModuleDef = Any
NORM_DTYPES = ("float32", "compute")

# He et al. initialise convolutions as in He et al. 2015 (sec 2.2): zero-mean normal with
# variance 2 / fan, here fan-out as in torchvision.
he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def shortcut(x: jax.Array, features: int, strides: int, kind: str, conv, norm) -> jax.Array:
    """The identity, or where the shape changes a 1x1 projection ("projection", option B) or
    a subsample zero-padded in channels ("pad", option A, no parameters)."""
    if x.shape[-1] == features and strides == 1:
        return x
    if kind == "projection":
        return norm(name="proj_bn")(conv(features, (1, 1), strides, padding=0, name="proj_conv")(x))
    if kind == "pad":
        x = x[:, ::strides, ::strides, :]  # (B, H/s, W/s, C_in)
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))
    raise ValueError(f"shortcut {kind!r} not in ('projection', 'pad')")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34 and the CIFAR nets)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    shortcut: str = "projection"
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.act(self.norm()(self.conv(self.features, (3, 3), self.strides, padding=1)(x)))
        y = self.norm()(self.conv(self.features, (3, 3), padding=1)(y))  # (B, H/s, W/s, F)
        residual = shortcut(x, self.features, self.strides, self.shortcut, self.conv, self.norm)
        return self.act(residual + y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's "v1.5"), 1x1 expand to 4x width."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    shortcut: str = "projection"
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.features * self.expansion
        y = self.act(self.norm()(self.conv(self.features, (1, 1), padding=0)(x)))
        y = self.act(self.norm()(self.conv(self.features, (3, 3), self.strides, padding=1)(y)))
        y = self.norm()(self.conv(out, (1, 1), padding=0)(y))  # (B, H/s, W/s, 4F)
        residual = shortcut(x, out, self.strides, self.shortcut, self.conv, self.norm)
        return self.act(residual + y)


class ResNet(nn.Module):
    """Residual network: a stem, stages of residual blocks (stride 2 from the second stage on),
    global average pooling and a linear classifier."""

    stage_sizes: Sequence[int]  # blocks per stage
    block_cls: ModuleDef = BasicBlock
    widths: Sequence[int] = (64, 128, 256, 512)  # block width per stage (x4 out for Bottleneck)
    stem: str = "imagenet"  # "imagenet": 7x7/2 conv + 3x3/2 max-pool; "cifar": one 3x3 conv
    shortcut: str = "projection"  # "projection" (option B) or "pad" (option A)
    num_classes: int = 1000
    act: Callable = nn.relu
    remat: str = "none"  # each block's rematerialisation policy (archbench.archs._remat)
    conv_impl: str = "xla"  # how convolutions are computed (archbench.archs._conv)
    # BatchNorm's statistics and normalisation: "float32" (Flax's default: promoted, then cast
    # back to the compute dtype) or "compute" (in the compute dtype, e.g. bfloat16).
    norm_dtype: str = "float32"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.norm_dtype not in NORM_DTYPES:
            raise ValueError(f"norm_dtype {self.norm_dtype!r} not in {NORM_DTYPES}")
        conv = _conv.conv_class(
            self.conv_impl,
            use_bias=False,
            **_logical.conv("conv_in", "conv_out", kernel_init=he_normal),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            force_float32_reductions=self.norm_dtype == "float32",
            **_logical.norm("conv_out"),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        if self.stem == "imagenet":
            x = conv(self.widths[0], (7, 7), 2, padding=3, name="stem_conv")(x)  # (B, 112, 112, 64)
            x = self.act(norm(name="stem_bn")(x))
            x = max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))  # (B, 56, 56, 64)
        elif self.stem == "cifar":
            x = conv(self.widths[0], (3, 3), padding=1, name="stem_conv")(x)  # (B, 32, 32, 16)
            x = self.act(norm(name="stem_bn")(x))
        else:
            raise ValueError(f"stem {self.stem!r} not in ('imagenet', 'cifar')")
        block = _remat.block(self.block_cls, self.remat)  # BatchNorm's flag is bound in `norm`
        for i, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for j in range(blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = block(width, conv, norm, self.act, strides, self.shortcut)(x)
            # (B, H / 2**i, W / 2**i, width * expansion) after stage i (relative to its input)
        x = jnp.mean(x, axis=(1, 2))  # (B, C): global average pool, 7x7 at 224x224
        return nn.Dense(
            self.num_classes,
            **_logical.dense(("conv_out",), ("classes",)),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )(x)


CIFAR_STYLE = {"block_cls": BasicBlock, "stem": "cifar", "shortcut": "pad", "num_classes": 10}
# The ImageNet counts are those of torchvision's resnet18/34/50, He et al.'s Table 1 models
# with 1x1 projection shortcuts where shapes change (option B) and BatchNorm scale and bias.
HE_TABLE_1 = "He et al. 2016, Table 1; exact count as torchvision's resnet{}"

register(
    ArchSpec(
        name="resnet",
        family="ResNet",
        module=ResNet,
        task="classify",
        # The convolutions' implementations, and BatchNorm's in float32 or the compute dtype
        # (the same in float32); one kind at a time, the other at its default.
        variants={
            **_conv.VARIANTS,
            "bn-f32": {"norm_dtype": "float32"},
            "bn-compute": {"norm_dtype": "compute"},
        },
        sizes={
            "tiny": Size({**CIFAR_STYLE, "stage_sizes": (1, 1, 1), "widths": (4, 8, 16)}, CIFAR),
            # ResNet-20 of sec 4.2: 6n+2 layers with n=3, widths 16/32/64, identity shortcuts
            # with zero padding (option A) as the paper uses on CIFAR-10: 269,722 parameters
            # (Table 6 rounds to 0.27M).
            "small": Size(
                {**CIFAR_STYLE, "stage_sizes": (3, 3, 3), "widths": (16, 32, 64)},
                CIFAR,
                canonical="ResNet-20 (CIFAR-10)",
                source="He et al. 2016, sec 4.2 and Table 6 (0.27M)",
            ),
            "r18": Size(
                {"stage_sizes": (2, 2, 2, 2), "block_cls": BasicBlock},
                IMAGENET,
                canonical="ResNet-18",
                published_params=11_689_512,
                source=HE_TABLE_1.format(18),
            ),
            "r34": Size(
                {"stage_sizes": (3, 4, 6, 3), "block_cls": BasicBlock},
                IMAGENET,
                canonical="ResNet-34",
                published_params=21_797_672,
                source=HE_TABLE_1.format(34),
            ),
            "base": Size(
                {"stage_sizes": (3, 4, 6, 3), "block_cls": Bottleneck},
                IMAGENET,
                canonical="ResNet-50",
                published_params=25_557_032,
                source=HE_TABLE_1.format(50),
            ),
        },
    )
)
