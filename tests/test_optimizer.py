"""The optimizer as a matrix axis (--optimizer): one train cell per optimizer, its state bytes
per parameter in the record, and a report section that sets them side by side."""

from __future__ import annotations

import math

import jax
import pytest

from archbench import archs
from archbench.engine import aot, fields
from archbench.engine.cell import Cell, from_id
from archbench.errors import UserError
from archbench.matrix import cells
from archbench.report import axes


def test_optimizer_is_an_axis_of_train_cells():
    chosen = cells.select(
        arch="mlp", size="tiny", mode="train,infer", optimizer="adamw,adafactor,sgd,lion"
    )
    train = [c for c in chosen if c.mode == "train"]
    assert [c.optimizer for c in train] == ["adamw", "adafactor", "sgd", "lion"]
    assert [c.optimizer for c in chosen if c.mode == "infer"] == ["adamw"]  # one, the default
    assert from_id(train[2].id) == train[2] and train[2].id.endswith("-osgd")
    assert Cell("mlp", "tiny").id == "mlp-tiny-train-b32-float32-d1"  # the default: no tag
    with pytest.raises(UserError, match="unknown optimizer 'adam'; valid: adamw"):
        cells.select(arch="mlp", size="tiny", optimizer="adam")
    with pytest.raises(UserError, match="--optimizer applies to --mode train"):
        cells.select(arch="mlp", size="tiny", mode="infer", optimizer="sgd")


@pytest.fixture(scope="module")
def records():
    return {
        name: aot.compile_only(Cell("mlp", "tiny", "train", 8, optimizer=name))
        for name in fields.OPTIMIZERS
    }


def test_state_bytes_per_parameter_follow_each_optimizer(records):
    params = archs.param_count("mlp", "tiny")
    per = {name: r["opt_state_bytes_per_param"] for name, r in records.items()}
    assert all(r["status"] == "compiled" and r["optimizer"] == n for n, r in records.items())
    # float32 moments: Adam's two are 8 bytes a parameter, Lion's one 4, plain SGD keeps none
    # (a step count of a few bytes in all is the only other state)
    assert per["adamw"] * params == pytest.approx(8 * params, abs=16)
    assert per["lion"] * params == pytest.approx(4 * params, abs=16)
    assert per["sgd"] * params == pytest.approx(0, abs=16)
    # Adafactor keeps a row and a column vector for each matrix whose two sides are both at
    # least 128 (optax's min_dim_size_to_factor), the full second moment of anything smaller
    shapes = jax.eval_shape(lambda k: archs.init_variables(*_model("small"), k), jax.random.key(0))
    big = aot.compile_only(Cell("mlp", "small", "train", 8, optimizer="adafactor"))
    factored = sum(
        4 * (sum(a.shape) if a.ndim == 2 and min(a.shape) >= 128 else math.prod(a.shape))
        for a in jax.tree.leaves(shapes["params"])
    )
    assert big["opt_state_bytes"] == pytest.approx(factored, abs=64)
    assert big["opt_state_bytes_per_param"] < 0.1  # mlp small is nearly all large matrices


def _model(size):
    spec = archs.get("mlp")
    return spec.build(size), spec.size(size).input


def test_report_sets_the_optimizers_side_by_side(records):
    rows = []
    for name, r in records.items():
        row = {**r, "run": "a", "status": "ok", "step_time_s": 0.1 if name == "adamw" else 0.05}
        rows.append(row)
    table = axes.axis_table(fields.BY_NAME["optimizer"], rows)
    assert table is not None
    assert [row[2].text for row in table.rows] == list(fields.OPTIMIZERS)
    ratios = [row[4].text for row in table.rows]  # step time against adamw's
    assert ratios == ["1.00×", "0.50×", "0.50×", "0.50×"]
    only_default = [r for r in rows if r["optimizer"] == "adamw"]
    assert axes.axis_table(fields.BY_NAME["optimizer"], only_default) is None
