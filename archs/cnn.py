"""Plain CNN: a stack of convolutions over 1-D or 2-D inputs, optional pooling, a dense head.

Two published models are sizes of it: the two-conv CNN of the Flax and TensorFlow tutorials
(the Flax "Quick start" MNIST model) and the 1-D ConvBase of MNIST-1D (Greydanus 2020).
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _logical
from archbench.archs._conv import VARIANTS, conv_class
from archbench.archs.inputs import IMAGE_28, MNIST1D
from archbench.archs.registry import ArchSpec, Size, register


class CNN(nn.Module):
    """Convolutions (one kernel width per layer), each followed by the activation and a pool."""

    features: Sequence[int] = (32, 64)  # channels of each convolution
    kernels: Sequence[int] = (3, 3)  # kernel width of each convolution, in every spatial dim
    strides: int = 1
    padding: str | int = "SAME"  # "SAME", "VALID" or zeros on each side
    pool: int = 2  # average-pool window and stride after each convolution; 1 for none
    hidden: Sequence[int] = (256,)  # dense layers before the classes
    num_classes: int = 10
    act: Callable = nn.relu
    conv_impl: str = "xla"  # how convolutions are computed (archbench.archs._conv)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dims = x.ndim - 2  # (B, H, W, C) images: 2; (B, T, F) sequences: 1
        pad = self.padding if isinstance(self.padding, str) else [(self.padding,) * 2] * dims
        dense = lambda n, i, o: nn.Dense(  # noqa: E731
            n, **_logical.dense((i,), (o,)), dtype=self.dtype, param_dtype=self.param_dtype
        )
        for width, k in zip(self.features, self.kernels, strict=True):
            x = conv_class(self.conv_impl)(
                width,
                (k,) * dims,
                strides=self.strides,
                padding=pad,
                **_logical.conv("conv_in", "conv_out", window=dims),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
            )(x)  # (B, H', W', width)
            x = self.act(x)
            if self.pool > 1:
                x = nn.avg_pool(x, (self.pool,) * dims, (self.pool,) * dims)
        x = x.reshape(x.shape[0], -1)  # (B, 7*7*64) for the tutorial CNN on 28x28
        names = _logical.hidden_layers(len(self.hidden))  # None, mlp, embed, ...
        for width, inputs, outputs in zip(self.hidden, names, names[1:], strict=False):
            x = self.act(dense(width, inputs, outputs)(x))
        return dense(self.num_classes, names[-1], "classes")(x)  # (B, classes)


# Conv 3*3*1*32+32 = 320; conv 3*3*32*64+64 = 18,496; dense 3136*256+256 = 803,072;
# output 256*10+10 = 2,570: 824,458 parameters, as Flax's `nn.tabulate` of the tutorial model
# reports.
TUTORIAL = Size(
    {},
    IMAGE_28,
    canonical="Flax/TensorFlow tutorial CNN",
    published_params=824_458,
    source="Flax documentation, Quick start (the MNIST CNN)",
)

# ConvBase of greydanus/mnist1d (notebooks/models.py): Conv1d(1, 25, 5, stride 2, padding 1),
# then two Conv1d(25, 25, 3, stride 2, padding 1), ReLU after each, flatten (5*25 = 125 on
# 40 steps) and Linear(125, 10): 150 + 1,900 + 1,900 + 1,260 = 5,210 parameters, the count
# its quickstart notebook prints. The paper's Table 1 gives it 94% test accuracy.
CONVBASE = Size(
    {
        "features": (25, 25, 25),
        "kernels": (5, 3, 3),
        "strides": 2,
        "padding": 1,
        "pool": 1,
        "hidden": (),
    },
    MNIST1D,
    canonical="MNIST-1D CNN",
    published_params=5_210,
    source="Greydanus 2020, Scaling down deep learning (MNIST-1D), ConvBase",
)

register(
    ArchSpec(
        name="cnn",
        family="CNN",
        module=CNN,
        task="classify",
        variants=VARIANTS,
        sizes={
            "tiny": Size({"features": (4, 8), "hidden": (16,)}, IMAGE_28),
            "small": TUTORIAL,
            "base": TUTORIAL,
            "mnist1d": CONVBASE,
        },
    )
)
