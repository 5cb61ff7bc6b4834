"""A cell is resolved once: its registry lookups all made in one place on the way of measuring
it (issue 21)."""

import sys

import pytest

import archbench
from archbench.archs import registry
from archbench.engine import cell as cell_mod
from archbench.engine.cell import Cell
from archbench.engine.plan import resolve

LOOKUPS = {"get", "size", "variant", "builder", "build"}  # what the registry answers of a name


def registry_lookups(call) -> list[tuple[str, str]]:
    """(calling function, lookup) for each lookup that code outside the registry makes while
    `call()` runs, in order; its result is dropped."""
    asked = []

    def profile(frame, event, arg):
        code = frame.f_code
        if event == "call" and code.co_filename == registry.__file__ and code.co_name in LOOKUPS:
            caller = frame.f_back.f_code
            if caller.co_filename != registry.__file__:
                asked.append((caller.co_name, code.co_name))

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return asked


def test_the_lookup_counter_sees_lookups_from_outside_the_registry():
    assert registry_lookups(lambda: registry.get("mlp").size("tiny")) == [
        ("<lambda>", "get"),
        ("<lambda>", "size"),
    ]
    assert registry_lookups(lambda: registry.param_count("mlp", "tiny")) == []  # its own


def test_measuring_a_cell_asks_the_registry_in_one_place_once():
    records = []
    asked = registry_lookups(
        lambda: records.append(
            archbench.measure("mlp", "tiny", mode="train", batch=8, target_s=0.05)
        )
    )
    assert records[0]["status"] == "ok"
    assert records[0]["params"] == archbench.param_count("mlp", "tiny")
    assert asked == [
        ("resolve", "get"),
        ("resolve", "size"),
        ("resolve", "variant"),
        ("resolve", "builder"),
    ]


def test_a_plan_holds_the_keys_and_builds_its_twins_from_its_size():
    plan = resolve(Cell("gru", "tiny", "train", 4, "bfloat16", seq_len=12))
    assert plan.inputs.shape[0] == 12 and plan.keys["params"] == plan.params
    assert plan.keys == cell_mod.cell_keys(plan.cell)
    assert plan.twin(unroll=12).unroll == 12 and plan.twin().dtype == plan.module.dtype
    assert plan.with_batch(8).cell.batch == 8 and plan.with_batch(8).module is plan.module
    with pytest.raises(ValueError, match="variant"):
        plan.twin(variant="no-such-variant")
