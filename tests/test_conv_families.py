"""Family-specific checks of the convolutional nets: CNN, ResNet and GoogLeNet (Inception-v1).

The big ImageNet sizes are traced with jax.eval_shape only: nothing is allocated or compiled.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archbench import archs
from archbench.archs.resnet import BasicBlock, Bottleneck


def key(seed: int) -> jax.Array:
    # XLA:CPU compiles threefry slowly (about a second per distinct shape on two cores);
    # the "rbg" generator compiles in a fraction of that and is as good for these checks.
    return jax.random.key(seed, impl="rbg")


def _block_outputs(name: str, size: str, prefix: str, **overrides) -> list[tuple[int, ...]]:
    """Output shapes, in call order, of the direct submodules named `prefix`_i (batch 1)."""
    spec = archs.get(name)
    module = spec.build(size, **overrides)
    input_spec = spec.size(size).input
    variables = jax.eval_shape(
        lambda k: archs.init_variables(module, input_spec, k), jax.random.key(0)
    )
    x = jax.ShapeDtypeStruct((1, *input_spec.shape), jnp.float32)
    _, state = jax.eval_shape(
        lambda v, x: module.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables,
        x,
    )
    blocks = {k: v for k, v in state["intermediates"].items() if k.startswith(prefix + "_")}
    ordered = sorted(blocks, key=lambda k: int(k.rsplit("_", 1)[1]))
    return [blocks[k]["__call__"][0].shape for k in ordered]


@pytest.mark.parametrize(
    ("size", "block", "out"),
    [("r18", "BasicBlock", 512), ("r34", "BasicBlock", 512), ("base", "Bottleneck", 2048)],
)
def test_resnet_imagenet_stages_halve_the_map_down_to_7x7(size, block, out):
    config = archs.get("resnet").size(size).config
    assert config["block_cls"].__name__ == block
    shapes = _block_outputs("resnet", size, block)
    assert len(shapes) == sum(config["stage_sizes"])
    expected = []
    for i, blocks in enumerate(config["stage_sizes"]):
        side = 56 // 2**i  # stem: 224 -> 112 (7x7/2 conv) -> 56 (3x3/2 max-pool)
        width = (64 * 2**i) * (4 if block == "Bottleneck" else 1)
        expected += [(1, side, side, width)] * blocks
    assert shapes == expected
    assert shapes[-1] == (1, 7, 7, out)


def test_resnet20_uses_parameter_free_shortcuts():
    # Option A (He et al. 2016, sec 4.2): zero-padded identity shortcuts, so no projections.
    params = jax.eval_shape(
        lambda k: archs.init_variables(
            archs.get("resnet").build("small"), archs.get("resnet").size("small").input, k
        ),
        jax.random.key(0),
    )["params"]
    assert not any("proj" in jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(params))
    assert archs.param_count("resnet", "small") == 269_722
    # Option B adds a 1x1 conv and its BatchNorm at the two widening blocks (16->32, 32->64).
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    option_b = archs.get("resnet").build("small", shortcut="projection")
    shapes = jax.eval_shape(
        lambda k: archs.init_variables(option_b, archs.get("resnet").size("small").input, k),
        jax.random.key(0),
    )
    assert archs.count_params(shapes["params"]) == 269_722 + projections


def _init(name: str, size: str, **overrides):
    """(module, input spec, variables) of a small size, initialised under jit (one compile)."""
    spec = archs.get(name)
    module = spec.build(size, **overrides)
    input_spec = spec.size(size).input
    init = jax.jit(lambda k: archs.init_variables(module, input_spec, k))
    return module, input_spec, init(key(0))


def test_resnet_batchnorm_statistics_update_in_train_mode_only():
    module, input_spec, variables = _init("resnet", "tiny")
    x = input_spec.example(key(1), 4) * 3.0 + 1.0

    @jax.jit
    def stats_after(x):
        _, train = module.apply(variables, x, train=True, mutable=["batch_stats"])
        _, frozen = module.apply(variables, x, train=False, mutable=["batch_stats"])
        return train["batch_stats"], frozen["batch_stats"]

    updated, frozen = stats_after(x)
    before = jax.tree.leaves(variables["batch_stats"])
    assert all(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(updated), strict=True))
    jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], frozen)
    # Eval mode uses running statistics: an example's logits do not depend on its batch.
    logits = jax.jit(lambda x: module.apply(variables, x, train=False))
    np.testing.assert_allclose(logits(x[:1])[0], logits(x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_resnet_bottleneck_with_projections_and_imagenet_stem_runs(dtype):
    module, input_spec, variables = _init(
        "resnet",
        "tiny",
        dtype=dtype,
        block_cls=Bottleneck,
        stem="imagenet",
        shortcut="projection",
        stage_sizes=(1, 1),
        widths=(4, 8),
    )
    assert "proj_conv" in variables["params"]["Bottleneck_0"]  # 4 -> 16 channels
    logits = jax.jit(module.apply)(variables, input_spec.example(key(1), 2))
    assert logits.shape == (2, 10) and logits.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(logits.astype(jnp.float32))))
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype("float32")}


def test_resnet20_is_made_of_basic_blocks():
    assert archs.get("resnet").size("small").config["block_cls"] is BasicBlock


def test_inception_follows_table_1():
    # Szegedy et al. 2015, Table 1: output size and depth of inception 3a ... 5b.
    shapes = _block_outputs("inception", "base", "InceptionBlock")
    sides = [28] * 2 + [14] * 5 + [7] * 2
    depths = [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert shapes == [(1, s, s, d) for s, d in zip(sides, depths, strict=True)]


def test_inception_weights_and_biases_match_the_caffe_reference():
    spec = archs.get("inception")
    module = spec.build("base")
    params = jax.eval_shape(
        lambda k: archs.init_variables(module, spec.size("base").input, k), jax.random.key(0)
    )["params"]
    counts = {"kernel": 0, "bias": 0}
    for path, leaf in jax.tree.leaves_with_path(params):
        counts[path[-1].key] += int(np.prod(leaf.shape))
    # BVLC bvlc_googlenet deploy.prototxt without auxiliary heads: every conv has a bias.
    assert counts == {"kernel": 6_990_272, "bias": 8_280}


def test_inception_dropout_only_in_train_mode():
    module, input_spec, variables = _init("inception", "tiny")
    x = input_spec.example(key(1), 2)

    @jax.jit
    def logits(dropout_key):
        rngs = {"dropout": dropout_key}
        return (
            module.apply(variables, x, train=False, rngs=rngs),
            module.apply(variables, x, train=True, rngs=rngs),
        )

    (eval_a, train_a), (eval_b, train_b) = logits(key(0)), logits(key(1))
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(train_a, train_b)
