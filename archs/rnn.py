"""Simple (Elman) recurrent networks (Elman 1990, "Finding structure in time"), one and stacked."""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs._recurrent import TINY, VARIANTS, RecurrentClassifier, RecurrentLayer
from archbench.archs.inputs import MNIST1D, ROWS_28, InputSpec
from archbench.archs.registry import ArchSpec, Size, register


def identity_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """The identity matrix (IRNN recurrent kernel, Le et al. 2015); `key` is unused."""
    return jnp.eye(*shape, dtype=dtype)


class ElmanLayer(RecurrentLayer):
    """Elman layer: h_t = act(W x_t + U h_{t-1} + b), one bias vector as in Keras' SimpleRNN."""

    act: Callable = jnp.tanh

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        u = self.recurrent_kernel(1)  # (H, H)
        w, b = self.input_kernel(x.shape[-1], 1)
        mix = self.mix(w, b, u)

        def step(h, inp_t):  # inp_t: W x_t + b, (B, H), or x_t when fused
            h = self.act(mix(inp_t, h))  # (B, H)
            return h, h

        return self.scan(step, self.zeros(x.shape[0]), x, w, b)  # (B, T, H)


class ElmanRNN(RecurrentClassifier):
    """Elman RNN classifier: one or more stacked Elman layers, a dense head on the last state."""

    layer_cls = ElmanLayer

    act: Callable = jnp.tanh

    def layer_kwargs(self) -> dict:
        return {"act": self.act}


PIXELS_784 = InputSpec("sequence", (784, 1))  # a 28x28 image read pixel by pixel

# The MNIST-1D GRU baseline's layout (bidirectional, 6 units, linear head on all 40 steps)
# with Elman cells, to compare cells at equal shape. Not a published model.
# 2 x (1*6 + 6*6 + 6) + (40*12*10 + 10) = 96 + 4,810 = 4,906 parameters.
MNIST1D_LAYOUT = {"hidden": (6,), "bidirectional": True, "readout": "flatten"}

register(
    ArchSpec(
        name="rnn",
        family="RNN",
        module=ElmanRNN,
        task="classify",
        variants=VARIANTS,
        sizes={
            "tiny": Size({"hidden": (16,)}, TINY),
            # 28*128 + 128*128 + 128 + 128*10 + 10 = 21,386 parameters.
            "small": Size({"hidden": (128,)}, ROWS_28, source="row-by-row MNIST, 128 units"),
            # IRNN on pixel-by-pixel MNIST (Le, Jaitly & Hinton 2015): 100 ReLU units, identity
            # recurrent kernel, input weights N(0, 0.001), as keras-team/keras examples/mnist_irnn.py
            # reproduces it.
            # 1*100 + 100*100 + 100 + 100*10 + 10 = 11,210 parameters (the paper gives no count).
            "base": Size(
                {
                    "hidden": (100,),
                    "act": nn.relu,
                    "kernel_init": nn.initializers.normal(0.001),
                    "recurrent_init": identity_init,
                },
                PIXELS_784,
                canonical="IRNN, pixel-by-pixel MNIST",
                source="Le, Jaitly & Hinton 2015, arXiv:1504.00941, pixel-by-pixel MNIST",
            ),
            "mnist1d": Size(
                MNIST1D_LAYOUT,
                MNIST1D,
                source="layout of the MNIST-1D GRU baseline (greydanus/mnist1d) with Elman cells",
            ),
        },
    )
)

register(
    ArchSpec(
        name="deep_rnn",
        family="RNN",
        module=ElmanRNN,
        task="classify",
        variants=VARIANTS,
        sizes={
            "tiny": Size({"hidden": (16, 16)}, TINY),
            # Stacked Elman layers, each reading the whole hidden sequence of the one below
            # (El Hihi & Bengio 1996; the "stacked RNN" of Pascanu et al. 2014). Not a published
            # model. 28*128 + 128*128 + 128 + 2 x (128*128*2 + 128) + 1,290 = 87,178 parameters.
            "small": Size(
                {"hidden": (128, 128, 128)},
                ROWS_28,
                source="row-by-row MNIST, 3 stacked layers of 128 units",
            ),
        },
    )
)
