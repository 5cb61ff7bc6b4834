"""Recipes of the modern families and the time to target: the first test evaluation at or past
a recipe's target, in `train.recipe_spec`, the training report and `archbench train`'s line."""

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from archbench.report import curves
from archbench.train import data, recipes
from archbench.train.fit import build_module, input_spec_for
from archbench.train.recipe_spec import Constant, Optimizer, Recipe, time_to_target

# where Debian's dataset-fashion-mnist puts the files (.ci/run installs it)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MODERN = ("vit-fashion", "mixer-fashion", "llama-chars", "mamba-chars")
# The parameter counts each recipe's comment states.
PARAMS = {"vit-fashion": 19_658, "mixer-fashion": 11_722, "llama-chars": 131_392,
          "mamba-chars": 28_128}  # fmt: skip


def log(tests, *, metric="accuracy"):
    """A metrics log as fit writes it: per epoch a train window, a train epoch line and a test
    line; tests = [(value, wall_s, eval_s)], value an accuracy or a bits/char."""
    records = []
    for epoch, (value, wall, eval_s) in enumerate(tests, 1):
        step = 100 * epoch
        if metric == "accuracy":
            test = {"loss": 1.0, "accuracy": value}
        else:
            test = {"loss": value * math.log(2), "accuracy": 0.1}
        # Train lines (better than any target) must never count.
        train = {"kind": "step", "split": "train", "step": step, "epoch": epoch, "loss": 0.0,
                 "accuracy": 1.0, "wall_s": wall - 1}  # fmt: skip
        records += [train, {**train, "kind": "epoch", "train_s": 1.0}]
        records.append({"kind": "epoch", "split": "test", "step": step, "epoch": epoch,
                        "wall_s": wall, "eval_s": eval_s, **test})  # fmt: skip
    return records


def test_time_to_target_is_the_first_crossing():
    records = log([(0.80, 10.0, 1.0), (0.87, 20.0, 2.0), (0.84, 30.0, 1.0), (0.90, 40.0, 1.0)])
    reached = time_to_target(records, "accuracy", 0.85)
    # Epoch 2 crosses first (epoch 3 falls back below); seconds leave both evaluations out.
    assert (reached.step, reached.epoch, reached.value) == (200, 2, 0.87)
    assert reached.seconds == pytest.approx(20.0 - 1.0 - 2.0)
    assert time_to_target(records, "accuracy", 0.87).step == 200  # "at or past" the target
    assert time_to_target(records, "accuracy", 0.95) is None  # not reached
    # Lower is better for bits per character, computed from the test loss.
    bpc = log([(3.1, 60.0, 5.0), (2.6, 120.0, 5.0), (2.4, 180.0, 5.0)], metric="bits_per_char")
    reached = time_to_target(bpc, "bits_per_char", 2.5)
    assert (reached.step, reached.seconds) == (300, pytest.approx(180.0 - 15.0))
    assert reached.value == pytest.approx(2.4)
    assert time_to_target(bpc, "bits_per_char", 2.0) is None
    assert time_to_target(bpc, "bits_per_char", 3.1).step == 100
    # An older log without eval_s: the record's wall time as it stands.
    old = [{k: v for k, v in r.items() if k != "eval_s"} for r in records]
    assert time_to_target(old, "accuracy", 0.85).seconds == 20.0


def write_run(path, records, recipe):
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / "final.json").write_text(json.dumps({"recipe": recipe}))  # a renamed directory
    return path


def test_training_report_and_cli_line_show_the_time_to_target(tmp_path):
    gpt = recipes.get("gpt-chars")  # target 2.5 bits/char
    assert gpt.target == 2.5
    fast = log([(2.9, 300.0, 9.0), (2.45, 600.0, 9.0), (2.3, 900.0, 9.0)], metric="bits_per_char")
    slow = log([(3.0, 300.0, 9.0), (2.7, 600.0, 9.0), (2.6, 900.0, 9.0)], metric="bits_per_char")
    runs = [
        curves.load_training_run(write_run(tmp_path / "seed1", fast, "gpt-chars")),
        curves.load_training_run(write_run(tmp_path / "seed2", slow, "gpt-chars")),
    ]
    assert runs[0].band.target == 2.5 and runs[0].band.metric == "bits_per_char"
    table = curves.training_table(runs)
    col = {c: table.columns.index(c) for c in ("target", "steps to target", "time to target")}
    first, second = ([cell.text for cell in row] for row in table.rows)
    assert [first[i] for i in col.values()] == ["2.5", "200", "582 s"]  # 600 - 2 evaluations
    assert [second[i] for i in col.values()] == ["2.5", "not reached", ""]
    assert table.rows[1][col["steps to target"]].cls == "fail"
    assert "epoch 2" in table.rows[0][col["steps to target"]].title
    # A run without a known recipe has no target: empty cells, no error.
    other = curves.TrainingRun("other", tmp_path, fast, None)
    assert [c.text for c in curves.training_table([other]).rows[0][-3:]] == ["", "", ""]

    assert recipes.target_message(gpt, tmp_path / "seed1") == (
        "gpt-chars: target test bits per char 2.50 bits/char reached at step 200 (epoch 2) "
        "after 582 s, evaluation time left out"
    )
    assert recipes.target_message(gpt, tmp_path / "seed2").endswith("2.50 bits/char not reached")
    plain = Recipe("t", "mlp", "tiny", "toy", Optimizer("sgd"), Constant(0.1), 1, 8, (0, 1), "")
    assert recipes.target_message(plain, tmp_path / "seed1") is None


def test_every_recipe_has_a_target_easier_than_its_band():
    for recipe in recipes.RECIPES.values():
        lo, hi = recipe.expected
        assert recipe.target is not None, recipe.name
        assert recipe.target < lo if recipe.metric == "accuracy" else recipe.target > hi
    with pytest.raises(ValueError, match="harder than its band"):
        Recipe("t", "mlp", "tiny", "toy", Optimizer("sgd"), Constant(0.1), 1, 8, (0.8, 0.9), "",
               target=0.95)  # fmt: skip


@pytest.mark.parametrize("name", MODERN)
def test_modern_recipe_builds_for_its_data(name):
    """The module takes the dataset's examples and its outputs cover the labels, from shapes
    alone (no compilation): logits (B, 10) for images, (B, T, 256) for bytes."""
    recipe = recipes.get(name)
    if recipe.dataset == "fashion_mnist" and not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip(f"no {DEBIAN_FASHION_MNIST}: `apt-get install dataset-fashion-mnist`")
    split = data.load(recipe.dataset, "test")
    x, y = split.x[:4], split.y[:4]
    module = build_module(recipe)
    spec = input_spec_for(recipe, split.x)
    assert spec.shape == x.shape[1:]
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    logits = jax.eval_shape(module.apply, variables, x)
    classes = 256 if recipe.metric == "bits_per_char" else 10
    assert logits.shape == (*y.shape, classes) and int(np.max(split.y)) < classes
    params = variables["params"]
    assert sum(p.size for p in jax.tree.leaves(params)) == PARAMS[name]
    opt_state = jax.eval_shape(recipe.optimizer(recipe.schedule(100)).init, params)
    assert jax.tree.leaves(opt_state)
    assert name in recipes.names() and recipe.source and recipe.target is not None
