"""A cell is resolved once: one registry lookup on the way of measuring it (issue 21)."""

import archbench
from archbench import archs
from archbench.archs import registry
from archbench.engine import cell as cell_mod
from archbench.engine.cell import Cell
from archbench.engine.plan import resolve


def test_measuring_a_cell_looks_the_registry_up_once_and_validates_once(monkeypatch):
    calls = {"get": 0, "validate": 0, "build": 0}
    real_get, real_validate = registry.get, cell_mod.validate
    real_build = registry.ArchSpec.build

    def counted(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(registry, "get", counted("get", real_get))
    monkeypatch.setattr(archs, "get", registry.get)
    monkeypatch.setattr("archbench.engine.plan.validate", counted("validate", real_validate))
    monkeypatch.setattr(registry.ArchSpec, "build", counted("build", real_build))
    record = archbench.measure("mlp", "tiny", mode="train", batch=8, target_s=0.05)
    assert record["status"] == "ok" and record["params"] == archbench.param_count("mlp", "tiny")
    assert calls == {"get": 2, "validate": 1, "build": 2}  # the measure's own; param_count's


def test_a_plan_holds_the_keys_and_builds_its_twins_from_its_spec():
    plan = resolve(Cell("gru", "tiny", "train", 4, "bfloat16", seq_len=12))
    assert plan.inputs.shape[0] == 12 and plan.keys["params"] == plan.params
    assert plan.keys == cell_mod.cell_keys(plan.cell)
    assert plan.twin(unroll=12).unroll == 12 and plan.twin().dtype == plan.module.dtype
    assert plan.with_batch(8).cell.batch == 8 and plan.with_batch(8).module is plan.module
