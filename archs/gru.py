"""GRU (Cho et al. 2014, "Learning phrase representations using RNN encoder-decoder")."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from archbench.archs import _logical
from archbench.archs._recurrent import TINY, VARIANTS, RecurrentClassifier, RecurrentLayer
from archbench.archs.inputs import MNIST1D, ROWS_28
from archbench.archs.registry import ArchSpec, Size, register


class GRULayer(RecurrentLayer):
    """GRU layer in the cuDNN / PyTorch / Keras reset_after=True form, gates [r, z, n].

    r = sigmoid(W_r x_t + b_r + U_r h_{t-1} + c_r)
    z = sigmoid(W_z x_t + b_z + U_z h_{t-1} + c_z)
    n = tanh(W_n x_t + b_n + r * (U_n h_{t-1} + c_n))   # reset applied after the matmul
    h_t = (1 - z) * n + z * h_{t-1}
    An input bias b and a recurrent bias c per gate, 6H biases as PyTorch and cuDNN count them
    (b_r + c_r and b_z + c_z are redundant, but c_n is not: r multiplies it).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        u = self.recurrent_kernel(3)  # (H, 3H)
        c = self.param(
            "recurrent_bias",
            _logical.named(nn.initializers.zeros, "gates"),
            (3 * self.hidden,),
            self.param_dtype,
        ).astype(self.dtype)  # (3H,)
        w, b = self.input_kernel(x.shape[-1], 3)

        def hoisted(h, xw_t):  # xw_t = W x_t + b, (B, 3H)
            x_r, x_z, x_n = jnp.split(xw_t, 3, axis=-1)  # (B, H) each
            h_r, h_z, h_n = jnp.split(h @ u + c, 3, axis=-1)  # (B, H) each
            r = nn.sigmoid(x_r + h_r)
            z = nn.sigmoid(x_z + h_z)
            n = jnp.tanh(x_n + r * h_n)
            h = (1 - z) * n + z * h
            return h, h

        zeros = self.zeros(x.shape[0])
        if not self.fused:
            return self.scan(hoisted, zeros, x, w, b)  # (B, T, H)

        # Fused, r and z take one matmul of [x_t, h] against [W; U] (their 2H columns); n
        # keeps W_n x_t and U_n h apart, as the reset gate multiplies only the second.
        two = 2 * self.hidden
        mix_rz = self.mix(w[:, :two], b[:two], u[:, :two])

        def fused(h, x_t):  # x_t, (B, F)
            r, z = jnp.split(nn.sigmoid(mix_rz(x_t, h) + c[:two]), 2, axis=-1)  # (B, H) each
            n = jnp.tanh(x_t @ w[:, two:] + b[two:] + r * (h @ u[:, two:] + c[two:]))
            h = (1 - z) * n + z * h
            return h, h

        return self.scan(fused, zeros, x, w, b)  # (B, T, H)


class GRU(RecurrentClassifier):
    """GRU classifier: stacked (optionally bidirectional) GRU layers and a dense head."""

    layer_cls = GRULayer


register(
    ArchSpec(
        name="gru",
        family="GRU",
        module=GRU,
        task="classify",
        variants=VARIANTS,
        sizes={
            "tiny": Size({"hidden": (16,)}, TINY),
            # 3 x (28*128 + 128*128 + 2*128) + 128*10 + 10 = 61,962 parameters.
            "small": Size({"hidden": (128,)}, ROWS_28, source="row-by-row MNIST, 128 units"),
            # GRUBase of greydanus/mnist1d (notebooks/models.py): torch.nn.GRU(input_size=1,
            # hidden_size=6, bidirectional=True), then one Linear on the outputs of all 40 steps
            # flattened, (B, 40*12) -> 10. PyTorch's count: 2 x 3 x (1*6 + 6*6 + 6 + 6) = 324,
            # plus 480*10 + 10 = 4,810; the quickstart notebook prints 5,134 (~92% test accuracy).
            "mnist1d": Size(
                {"hidden": (6,), "bidirectional": True, "readout": "flatten"},
                MNIST1D,
                canonical="MNIST-1D GRU",
                published_params=5_134,
                source="Greydanus 2020, 'Scaling down deep learning'; greydanus/mnist1d GRUBase",
            ),
        },
    )
)
