"""Every registered architecture is checked the same way; a new family is tested on registration."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archbench import archs
from archbench.train.steps import create_train_state, first_argmax, jit_train_step, synthetic_batch

ALL = archs.names()
PUBLISHED = [(n, s) for n, s in archs.cells() if archs.get(n).size(s).published_params is not None]


def _tiny(name, dtype=jnp.float32):
    spec = archs.get(name)
    return spec, spec.build("tiny", dtype=dtype), spec.size("tiny").input


def test_registry_has_every_required_family():
    families = {archs.get(n).family for n in ALL}
    required = {
        "MLP", "CNN", "LeNet-5", "ResNet", "Inception", "RNN", "LSTM", "GRU",
        "Transformer encoder", "Transformer decoder", "Transformer encoder-decoder",
        "Vision Transformer", "MLP-Mixer", "Llama decoder", "Mamba (selective SSM)",
        "Mixture of Experts",
    }  # fmt: skip
    assert required <= families, f"missing: {required - families}"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", ALL)
def test_tiny_forward_shape_and_finite(name, dtype):
    spec, module, input_spec = _tiny(name, dtype)
    batch = 2
    x = input_spec.example(jax.random.key(1), batch)
    variables = archs.init_variables(module, input_spec, jax.random.key(0))
    logits = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
    outputs = spec.num_outputs("tiny")
    expected = (
        (batch, outputs)
        if spec.task == "classify"
        else (batch, input_spec.tokens_per_example, outputs)
    )
    assert logits.shape == expected
    assert logits.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(logits.astype(jnp.float32))))
    # Parameters stay float32 whatever the compute dtype.
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}


@pytest.mark.parametrize("name", ALL)
def test_tiny_train_steps_lower_the_loss(name):
    spec, module, input_spec = _tiny(name)
    state = create_train_state(module, input_spec, optax.adam(3e-3), jax.random.key(0))
    batch = synthetic_batch(input_spec, spec.task, spec.num_outputs("tiny"), 8, jax.random.key(1))
    losses = []
    for _ in range(8):
        state, metrics = jit_train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_parameters(name):
    _, module, input_spec = _tiny(name)
    a = archs.init_variables(module, input_spec, jax.random.key(7))["params"]
    b = archs.init_variables(module, input_spec, jax.random.key(7))["params"]
    c = archs.init_variables(module, input_spec, jax.random.key(8))["params"]
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True)
    )


@pytest.mark.parametrize(("name", "size"), PUBLISHED, ids=[f"{n}-{s}" for n, s in PUBLISHED])
def test_published_parameter_counts(name, size):
    published = archs.get(name).size(size)
    params, active = archs.param_counts(name, size)
    assert params == published.published_params
    # a sparse model's parameters per token (Mixtral: 2 of 8 experts); a dense one uses all
    assert active == (published.published_active_params or params)


def test_every_family_has_a_canonical_size():
    by_family = {}
    for n, s in archs.cells():
        by_family.setdefault(archs.get(n).family, []).append(archs.get(n).size(s).canonical)
    assert all(any(c for c in cs) for cs in by_family.values()), by_family


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(archs.UnknownNameError, match=r"valid: .*lenet5"):
        archs.get("lenet6")
    with pytest.raises(archs.UnknownNameError, match="valid: tiny, small"):
        archs.get("lenet5").size("huge")


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6)])
def test_first_argmax_is_jnp_argmax(shape):
    # small integers: many rows hold their maximum more than once, and the first one counts
    logits = jax.random.randint(jax.random.key(0), shape, 0, 3).astype(jnp.float32)
    np.testing.assert_array_equal(first_argmax(logits), jnp.argmax(logits, -1))
    logits = jax.random.normal(jax.random.key(1), shape)
    np.testing.assert_array_equal(first_argmax(logits), jnp.argmax(logits, -1))
