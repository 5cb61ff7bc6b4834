"""Implementation variants of the recurrent, convolutional and BatchNorm layers (issue 15):
each computes the default's model, with the same parameters, outputs and gradients."""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from archbench import archs
from archbench.archs import _conv
from archbench.archs.inputs import InputSpec
from archbench.archs.resnet import CIFAR_STYLE
from archbench.cli.main import main
from archbench.engine.aot import compile_only
from archbench.engine.cell import Cell

BATCH = 3
RECURRENT = ("rnn", "deep_rnn", "lstm", "gru")
CONV = ("cnn", "lenet5", "resnet", "inception")


@functools.cache
def _run(arch: str, size: str, variant: str | None, inputs: InputSpec | None = None):
    """(initial variables, logits, loss gradients) of one training-mode step: one program.
    `inputs` replaces the size's input shape (a shorter sequence)."""
    spec = archs.get(arch)
    module = spec.build(size, **spec.variant(variant))
    inputs = inputs or spec.size(size).input
    x = inputs.example(jax.random.key(1), BATCH)
    labels = jnp.arange(BATCH) % spec.num_outputs(size)

    @jax.jit
    def step(key):
        variables = module.init(key, x, train=False)
        rest = {k: v for k, v in variables.items() if k != "params"}

        def loss(params):
            logits, _ = module.apply(
                {"params": params, **rest},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(2)},
            )
            logits = logits.astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

        (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return variables, logits, grads

    return step(jax.random.key(0))


def _assert_same_model(arch: str, size: str, variant: str, inputs: InputSpec | None = None):
    variables, logits, grads = _run(arch, size, variant, inputs)
    ref_variables, ref_logits, ref_grads = _run(arch, size, None, inputs)
    # The same tree, names and shapes, with the same initial values (batch_stats included):
    # the same random draws, scaled by two different programs, so equal to float32 rounding
    # (a different draw would differ by tenths).
    assert jax.tree.structure(variables) == jax.tree.structure(ref_variables)
    same = functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-7)
    jax.tree.map(same, variables, ref_variables)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    close = functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-4)
    jax.tree.map(close, grads, ref_grads)


def test_families_declare_their_variants():
    for arch in RECURRENT:
        assert set(archs.get(arch).variants) == {
            "hoisted",
            "fused",
            "unroll2",
            "unroll4",
            "unroll8",
        }
    for arch in CONV:
        assert {"xla", "nchw", "im2col"} <= set(archs.get(arch).variants)
    assert {"bn-f32", "bn-compute"} <= set(archs.get("resnet").variants)
    assert archs.get("lstm").build("tiny").fused  # the default: the step's one matmul
    assert not archs.get("lstm").build("tiny", **archs.get("lstm").variant("hoisted")).fused


@pytest.mark.parametrize(
    ("arch", "size", "variant"),
    [
        ("lstm", "tiny", "hoisted"),  # against the default, fused
        ("lstm", "tiny", "unroll4"),  # 8 steps: two loop iterations of 4
        ("rnn", "tiny", "hoisted"),
        ("gru", "tiny", "hoisted"),
        ("gru", "mnist1d", "hoisted"),  # one feature, bidirectional: the reversed scan, F = 1
    ],
)
def test_recurrent_variants_compute_the_same_model(arch, size, variant):
    short = InputSpec("sequence", (6, 1)) if size == "mnist1d" else None  # 6 of its 40 steps
    _assert_same_model(arch, size, variant, short)


@pytest.mark.parametrize(
    ("arch", "size", "variant"),
    [
        ("cnn", "tiny", "nchw"),
        ("cnn", "tiny", "im2col"),
    ],
)
def test_conv_variants_compute_the_same_model(arch, size, variant):
    _assert_same_model(arch, size, variant)


@pytest.mark.parametrize("impl", ["nchw", "im2col"])
@pytest.mark.parametrize(
    ("shape", "fields"),
    [
        ((2, 9, 9, 3), {"kernel_size": (3, 3), "strides": 2, "padding": "SAME"}),
        ((2, 8, 8, 3), {"kernel_size": (7, 7), "strides": 2, "padding": 3, "use_bias": False}),
        ((2, 12, 12, 2), {"kernel_size": (5, 5), "padding": "VALID"}),
        ((2, 8, 8, 3), {"kernel_size": (1, 1), "strides": 2, "padding": 0}),
        ((2, 40, 1), {"kernel_size": (5,), "strides": 2, "padding": ((1, 1),)}),  # 1-D
    ],
)
def test_conv_layer_matches_flax_conv(impl, shape, fields):
    """Every padding form the families use, 1-D and 2-D, strided: the same parameters, the
    same outputs and the same gradients as nn.Conv."""
    x = jax.random.normal(jax.random.key(1), shape)
    ours, ref = _conv.conv_class(impl, features=4, **fields)(), nn.Conv(4, **fields)
    variables = ref.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(0), x), variables)

    @functools.partial(jax.jit, static_argnums=0)
    def outputs(module, variables, x):
        def loss(v, x):
            return jnp.sum(jnp.sin(module.apply(v, x)))

        return module.apply(variables, x), jax.grad(loss, argnums=(0, 1))(variables, x)

    close = functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5)
    jax.tree.map(close, outputs(ours, variables, x), outputs(ref, variables, x))


def _primitives(arch: str, variant: str | None) -> dict[str, list]:
    """The convolutions' dimension numbers, and the matmul count, of a traced forward pass."""
    spec = archs.get(arch)
    module = spec.build("tiny", **spec.variant(variant))
    x = spec.size("tiny").input.example(jax.random.key(1), 2)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), x))
    jaxpr = jax.make_jaxpr(lambda v: module.apply(v, x))(variables)
    found = {"conv": [], "dot": []}
    for eqn in jaxpr.eqns:  # flat: Linen modules trace inline
        if eqn.primitive.name == "conv_general_dilated":
            found["conv"].append(eqn.params["dimension_numbers"].lhs_spec)
        elif eqn.primitive.name == "dot_general":
            found["dot"].append(eqn.outvars[0].aval.shape)
    return found


@pytest.mark.parametrize("arch", CONV)
def test_every_convolution_of_a_family_takes_its_variant(arch):
    """Cheap (traced, not compiled): each family routes all its convolutions through the
    variant, channels-first for nchw and none left for im2col."""
    default, nchw, im2col = (_primitives(arch, v) for v in (None, "nchw", "im2col"))
    assert default["conv"] and all(spec == (0, 3, 1, 2) for spec in default["conv"])  # NHWC
    assert len(nchw["conv"]) == len(default["conv"])
    assert all(spec == (0, 1, 2, 3) for spec in nchw["conv"])  # NCHW
    assert not im2col["conv"]
    assert len(im2col["dot"]) == len(default["dot"]) + len(default["conv"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batchnorm_in_the_compute_dtype(dtype):
    """The same in float32; in bfloat16 slightly different outputs (the statistics really are
    taken in bfloat16) and the same float32 batch_stats. One ResNet block on 8x8 images."""
    spec = archs.get("resnet")
    x = jax.random.normal(jax.random.key(1), (BATCH, 8, 8, 3))
    out = {}
    for variant in ("bn-f32", "bn-compute"):
        config = {**CIFAR_STYLE, "stage_sizes": (1,), "widths": (4,), **spec.variant(variant)}
        module = spec.module(**config, dtype=jnp.dtype(dtype))
        variables = module.init(jax.random.key(0), x)
        train = jax.jit(lambda v, m=module: m.apply(v, x, train=True, mutable=["batch_stats"]))
        logits, stats = train(variables)
        out[variant] = variables, logits.astype(jnp.float32), stats
    (ref_vars, ref, ref_stats), (variables, got, stats) = out["bn-f32"], out["bn-compute"]
    jax.tree.map(np.testing.assert_array_equal, variables, ref_vars)
    assert jax.tree.map(lambda a: a.dtype, stats) == jax.tree.map(lambda a: a.dtype, ref_stats)
    if dtype == "float32":
        np.testing.assert_array_equal(got, ref)
        jax.tree.map(np.testing.assert_array_equal, stats, ref_stats)
    else:
        assert not np.array_equal(got, ref)
        np.testing.assert_allclose(got, ref, atol=0.05 * float(jnp.abs(ref).max()))


def test_conv_variants_count_the_default_models_flops():
    """nchw lowers to the same convolutions; im2col's matmul also multiplies the padding's
    zeros (XLA counts a convolution's valid taps only), so its model FLOPs, which MFU uses,
    are the default's."""
    records = {
        v: compile_only(Cell("cnn", "tiny", "infer", 4, "float32", variant=v))
        for v in (None, "nchw", "im2col")
    }
    flops = records[None]["flops_per_step"]
    assert all(r["status"] == "compiled" for r in records.values())
    assert records["nchw"]["flops_per_step"] == pytest.approx(flops, rel=0.02)
    assert records["im2col"]["flops_per_step"] > flops
    assert {r["model_flops_per_step"] for r in records.values()} == {flops}


def test_run_times_recurrent_variants_as_cells(tmp_path):
    out = tmp_path / "r.json"
    argv = ["run", "--arch", "lstm", "--size", "tiny", "--mode", "infer", "--batch", "4"]
    assert (
        main([*argv, "--variant", "hoisted,unroll4", "--target-s", "0.1", "--out", str(out)]) == 0
    )
    rows = {
        r["extra_info"]["variant"]: r["extra_info"]
        for r in json.loads(out.read_text())["benchmarks"]
    }
    assert set(rows) == {"hoisted", "unroll4"}
    assert all(r["status"] == "ok" and r["flops_source"] == "xla-unrolled" for r in rows.values())
    # unroll4 is counted unrolled, as the default is: its FLOPs are the default's.
    hoisted, default = rows["hoisted"]["flops_per_step"], rows["unroll4"]["flops_per_step"]
    assert hoisted == pytest.approx(default, rel=0.05)
    assert (
        rows["hoisted"]["model_flops_per_step"]
        == rows["unroll4"]["model_flops_per_step"]
        == default
    )
