"""LSTM (Hochreiter & Schmidhuber 1997) with the forget gate of Gers, Schmidhuber & Cummins 2000."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs._recurrent import TINY, VARIANTS, RecurrentClassifier, RecurrentLayer
from archbench.archs.inputs import MNIST1D, ROWS_28
from archbench.archs.registry import ArchSpec, Size, register


def forget_bias_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """Gate biases [i, f, g, o], zero except the forget gate at 1 (Keras' unit_forget_bias)."""
    hidden = shape[0] // 4
    return jnp.zeros(shape, dtype).at[hidden : 2 * hidden].set(1)


class LSTMLayer(RecurrentLayer):
    """LSTM layer, gates [i, f, g, o] with one bias each (Keras' count, not PyTorch's two).

    i, f, o = sigmoid(W_{i,f,o} x_t + U_{i,f,o} h_{t-1} + b_{i,f,o})
    g = tanh(W_g x_t + U_g h_{t-1} + b_g)
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        u = self.recurrent_kernel(4)  # (H, 4H)
        w, b = self.input_kernel(x.shape[-1], 4, forget_bias_init)
        mix = self.mix(w, b, u)

        def step(carry, inp_t):  # inp_t: W x_t + b, (B, 4H), or x_t when fused
            c, h = carry  # (B, H) each
            i, f, g, o = jnp.split(mix(inp_t, h), 4, axis=-1)  # (B, H) each
            c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
            h = nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h

        zeros = self.zeros(x.shape[0])
        return self.scan(step, (zeros, zeros), x, w, b)  # (B, T, H)


class LSTM(RecurrentClassifier):
    """LSTM classifier: stacked LSTM layers, a dense head on the last hidden state."""

    layer_cls = LSTMLayer


register(
    ArchSpec(
        name="lstm",
        family="LSTM",
        module=LSTM,
        task="classify",
        variants=VARIANTS,
        sizes={
            "tiny": Size({"hidden": (16,)}, TINY),
            # 4 x (28*128 + 128*128 + 128) + 128*10 + 10 = 81,674 parameters.
            "small": Size({"hidden": (128,)}, ROWS_28, source="row-by-row MNIST, 128 units"),
            # LSTM(50) -> LSTM(50) -> Dense(10) on the rows of a 28x28 image. Keras'
            # model.summary: 4 x (28*50 + 50*50 + 50) = 15,800; 4 x (50*50 + 50*50 + 50) =
            # 20,200; 50*10 + 10 = 510; total 36,510.
            "base": Size(
                {"hidden": (50, 50)},
                ROWS_28,
                canonical="2-layer LSTM(50) row classifier",
                published_params=36_510,
                source="Keras model.summary of LSTM(50)-LSTM(50)-Dense(10) on 28x28 rows",
            ),
            # The MNIST-1D GRU baseline's layout (bidirectional, 6 units, linear head on all 40
            # steps) with LSTM cells; not a published model.
            # 2 x 4 x (1*6 + 6*6 + 6) + 40*12*10 + 10 = 384 + 4,810 = 5,194 parameters.
            "mnist1d": Size(
                {"hidden": (6,), "bidirectional": True, "readout": "flatten"},
                MNIST1D,
                source="layout of the MNIST-1D GRU baseline (greydanus/mnist1d) with LSTM cells",
            ),
        },
    )
)
