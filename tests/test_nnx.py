"""Flax NNX models in archbench: the NNX twin of `mlp` against the Linen one, and the adapter's
BatchNorm, Dropout and train switch inside the one train step."""

import textwrap

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import archbench
from archbench.archs import InputSpec
from archbench.checks.nnx import TWIN, MLPTwin, register_twin
from archbench.cli.main import main
from archbench.engine.aot import compile_only
from archbench.engine.cell import Cell
from archbench.train.steps import create_train_state, jit_train_step, predict, synthetic_batch

# own_registry: the fixture that takes back what each test registers
from tests.test_plugins import ok_cells, own_registry  # noqa: F401


def test_twin_has_the_parameters_and_flops_of_mlp():
    register_twin()
    assert archbench.get(TWIN).module.nnx_class is MLPTwin
    for size in ("tiny", "small", "base"):
        assert archbench.param_count(TWIN, size) == archbench.param_count("mlp", size)
    for mode in ("train", "infer"):
        linen, twin = (compile_only(Cell(a, "tiny", mode, 8, "float32")) for a in ("mlp", TWIN))
        assert linen["status"] == twin["status"] == "compiled", (linen, twin)
        assert twin["flops_per_step"] == linen["flops_per_step"] > 0
        assert twin["params"] == linen["params"]


def test_nnx_plugin_file_is_measured_by_run(tmp_path):
    path = tmp_path / "twin.py"
    path.write_text(
        textwrap.dedent(
            """
            from archbench.checks.nnx import register_twin

            register_twin("twin")
            """
        ),
        encoding="utf-8",
    )
    out = tmp_path / "r.json"
    argv = ["run", "--plugin", str(path), "--arch", "twin", "--size", "tiny"]
    argv += ["--mode", "train", "--batch", "4", "--target-s", "0.1", "--out", str(out)]
    assert main(argv) == 0
    assert ok_cells(out) == {"twin-tiny-train-b4-float32-d1": "ok"}


class Normed(nnx.Module):
    """BatchNorm and Dropout, switched by .train() / .eval() (no `train` argument)."""

    def __init__(self, features, num_classes, dtype=jnp.float32, param_dtype=jnp.float32, *,
                 rngs):  # fmt: skip
        self.dense = nnx.Linear(features, 16, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(16, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.head(self.drop(self.norm(self.dense(x.reshape(x.shape[0], -1)))))


class Switched(Normed):
    """The same, told by a `train` argument."""

    def __call__(self, x, *, train: bool = False):
        self.norm.use_running_average = not train
        self.drop.deterministic = not train
        return super().__call__(x)


@pytest.mark.parametrize("cls", [Normed, Switched])
def test_batchnorm_and_dropout_follow_train(cls):
    inputs = InputSpec("sequence", (3, 2))
    spec = archbench.register(
        "normed",
        cls,
        sizes={s: {"features": 6, "num_classes": 4} for s in ("tiny", "small")},
        input=inputs,
    )
    module = spec.build("tiny")
    state = create_train_state(module, inputs, optax.sgd(0.1), jax.random.key(0))
    assert set(state.params) == {"dense", "norm", "head"}
    assert set(state.batch_stats["norm"]) == {"mean", "var"}
    batch = synthetic_batch(inputs, "classify", 4, 8, jax.random.key(1))
    infer = jax.jit(predict)
    assert jnp.array_equal(infer(state, batch["x"]), infer(state, batch["x"]))  # no dropout
    kernel = jnp.array(state.params["dense"]["kernel"])  # a copy: the step donates the state
    new, metrics = jit_train_step(state, batch)
    assert jnp.isfinite(metrics["loss"])
    assert not jnp.allclose(new.batch_stats["norm"]["mean"], 0)  # statistics updated
    assert not jnp.allclose(new.params["dense"]["kernel"], kernel)
    # train mode draws dropout from the step's key: two keys, two outputs
    apply = jax.jit(
        lambda v, x, key: module.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )[0]
    )
    variables = {"params": new.params, "batch_stats": new.batch_stats}
    outs = [apply(variables, batch["x"], jax.random.key(k)) for k in (1, 2)]
    assert not jnp.allclose(*outs)
