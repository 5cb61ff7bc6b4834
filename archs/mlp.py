"""MLP: a stack of dense layers over the flattened input."""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _logical
from archbench.archs.inputs import IMAGE_28, MNIST1D
from archbench.archs.registry import ArchSpec, Size, register


class MLP(nn.Module):
    """Multi-layer perceptron classifier."""

    hidden: Sequence[int]
    num_classes: int
    act: Callable = nn.relu
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        names = _logical.hidden_layers(len(self.hidden))  # None, mlp, embed, ...
        dense = lambda n, i, o: nn.Dense(  # noqa: E731
            n, **_logical.dense((i,), (o,)), dtype=self.dtype, param_dtype=self.param_dtype
        )
        x = x.reshape(x.shape[0], -1)  # (B, H*W*C)
        for width, inputs, outputs in zip(self.hidden, names, names[1:], strict=False):
            x = self.act(dense(width, inputs, outputs)(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return dense(self.num_classes, names[-1], "classes")(x)  # (B, classes)


register(
    ArchSpec(
        name="mlp",
        family="MLP",
        module=MLP,
        task="classify",
        sizes={
            "tiny": Size({"hidden": (32,), "num_classes": 10}, IMAGE_28),
            "small": Size({"hidden": (512, 512), "num_classes": 10}, IMAGE_28),
            # Fashion-MNIST benchmark table (zalandoresearch/fashion-mnist README), MLPClassifier
            # with hidden layers 256-128-100 and ReLU: 88.3% test accuracy.
            # 784*256+256 + 256*128+128 + 128*100+100 + 100*10+10 = 247,766 parameters.
            "base": Size(
                {"hidden": (256, 128, 100), "num_classes": 10},
                IMAGE_28,
                canonical="Fashion-MNIST MLP 256-128-100",
                published_params=247_766,
                source="Xiao et al. 2017, Fashion-MNIST benchmark table",
            ),
            # MLPBase of greydanus/mnist1d: 40 -> 100 -> 100 -> 10, 4,100 + 10,100 + 1,010 =
            # 15,210 parameters (its quickstart's count; Table 1: 68% test accuracy). The
            # original adds a skip around the second layer, h + relu(W2 h); this plain stack
            # has the same parameters without it.
            "mnist1d": Size(
                {"hidden": (100, 100), "num_classes": 10},
                MNIST1D,
                canonical="MNIST-1D MLP (without its skip connection)",
                published_params=15_210,
                source="Greydanus 2020, Scaling down deep learning (MNIST-1D), MLPBase",
            ),
        },
    )
)
