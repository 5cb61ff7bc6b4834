"""LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition")."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _logical
from archbench.archs._conv import VARIANTS, conv_class
from archbench.archs.inputs import InputSpec
from archbench.archs.registry import ArchSpec, Size, register


class LeNet5(nn.Module):
    """LeNet-5: two conv/subsample stages, a 5x5 conv to 120 maps, then 84 units and the classes.

    As is usual today, subsampling is average pooling without trainable coefficients and C3
    connects to all six S2 maps, which gives the commonly quoted 61,706 parameters on 32x32x1.
    """

    num_classes: int = 10
    widths: tuple[int, int, int, int] = (6, 16, 120, 84)  # C1, C3, C5, F6
    act: Callable = nn.tanh
    conv_impl: str = "xla"  # how convolutions are computed (archbench.archs._conv)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        c1, c3, c5, f6 = self.widths
        conv = lambda n: conv_class(self.conv_impl)(  # noqa: E731
            n, (5, 5), padding="VALID", **_logical.conv("conv_in", "conv_out"),
            dtype=self.dtype, param_dtype=self.param_dtype,
        )  # fmt: skip
        x = self.act(conv(c1)(x))  # (B, 28, 28, 6) on 32x32 input
        x = nn.avg_pool(x, (2, 2), (2, 2))  # (B, 14, 14, 6)
        x = self.act(conv(c3)(x))  # (B, 10, 10, 16)
        x = nn.avg_pool(x, (2, 2), (2, 2))  # (B, 5, 5, 16)
        x = self.act(conv(c5)(x))  # (B, 1, 1, 120)
        x = x.reshape(x.shape[0], -1)
        dense = lambda n, i, o: nn.Dense(  # noqa: E731
            n, **_logical.dense((i,), (o,)), dtype=self.dtype, param_dtype=self.param_dtype
        )
        x = self.act(dense(f6, None, "mlp")(x))  # (B, 84): F6, an MLP's hidden units
        return dense(self.num_classes, "mlp", "classes")(x)


IMAGE_32 = InputSpec("image", (32, 32, 1))

register(
    ArchSpec(
        name="lenet5",
        family="LeNet-5",
        module=LeNet5,
        task="classify",
        variants=VARIANTS,
        sizes={
            "tiny": Size({"widths": (2, 4, 8, 8)}, IMAGE_32),
            "small": Size({}, IMAGE_32, canonical="LeNet-5", published_params=61_706),
            # C1 156 + C3 2,416 + C5 48,120 + F6 10,164 + output 850 = 61,706.
            "base": Size(
                {},
                IMAGE_32,
                canonical="LeNet-5",
                published_params=61_706,
                source="LeCun et al. 1998, Fig. 2",
            ),
        },
    )
)
