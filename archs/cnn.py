"""Two-conv CNN of the Flax and TensorFlow tutorials (the Flax "Quick start" MNIST model)."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from archs.registry import ArchSpec, InputSpec, Size, register


class CNN(nn.Module):
    """Two 3x3 conv + 2x2 average-pool stages, a hidden dense layer, then the classes."""

    features: tuple[int, int] = (32, 64)  # channels of the two convolutions
    hidden: int = 256
    num_classes: int = 10
    act: Callable = nn.relu
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dense = lambda n: nn.Dense(n, dtype=self.dtype, param_dtype=self.param_dtype)  # noqa: E731
        for width in self.features:
            x = nn.Conv(
                width, (3, 3), padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype
            )(x)  # (B, H, W, width)
            x = self.act(x)
            x = nn.avg_pool(x, (2, 2), (2, 2))  # (B, H/2, W/2, width)
        x = x.reshape(x.shape[0], -1)  # (B, 7*7*64) on 28x28 input
        x = self.act(dense(self.hidden)(x))
        return dense(self.num_classes)(x)


IMAGE_28 = InputSpec("image", (28, 28, 1))

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

register(
    ArchSpec(
        name="cnn",
        family="CNN",
        module=CNN,
        task="classify",
        sizes={
            "tiny": Size({"features": (4, 8), "hidden": 16}, IMAGE_28),
            "small": TUTORIAL,
            "base": TUTORIAL,
        },
    )
)
