"""The cell's fields are declared once (archbench.engine.fields), and everything that names
cells takes them from there: Cell and its id, `archbench run`'s options, the pytest matrix's
options, archbench.measure's keyword arguments, the record's keys and the results' CELL_KEYS.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

import archbench
from archbench.cli import run_cmd
from archbench.engine import fields
from archbench.engine.cell import DERIVED_KEYS, IDENTITY_KEYS, Cell, cell_keys, from_id
from archbench.engine.outcome import RESULT_KEYS
from archbench.errors import UserError
from archbench.matrix import cells, conftest, results

# Options of `archbench run` and of the matrix that are not fields of a cell: how the run is
# done, not which cells it has. A new option that names a cell field belongs in the table.
RUN_SETTINGS = {
    "--out", "--resume", "--overwrite", "--compile-only", "--device-memory",
    "--target-topology", "--target-s", "--profile", "--dump-hlo", "--plugin", "--split",
    "--coordinator", "--num-processes", "--process-id", "--distributed",
    "--distributed-timeout", "-h", "--help",
}  # fmt: skip
MATRIX_SETTINGS = {
    "--split", "--target-s", "--compile-only", "--device-memory", "--target-topology",
    "--plugin", "--archbench-profile", "--dump-hlo", "--archbench-out", "--archbench-resume",
    "--archbench-progress",
}  # fmt: skip
OPTIONS = {f.option for f in fields.FIELDS}


def test_cell_is_the_table():
    assert tuple(f.name for f in dataclasses.fields(Cell)) == fields.NAMES
    defaults = {f.name: f.default for f in dataclasses.fields(Cell) if f.name != "arch"}
    assert defaults == {f.name: f.default for f in fields.FIELDS if f.name != "arch"}


def test_run_options_are_the_table_and_settings():
    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    options = {o for action in parser._actions for o in action.option_strings}
    assert options >= OPTIONS
    assert options - OPTIONS == RUN_SETTINGS


def test_matrix_options_are_the_table_and_settings():
    added = []

    class Group:
        def addoption(self, *names, **kwargs):
            added.extend(names)

    class Parser:
        def getgroup(self, *args, **kwargs):
            return Group()

    conftest.pytest_addoption(Parser())
    assert set(added) >= OPTIONS
    assert set(added) - OPTIONS == MATRIX_SETTINGS


def test_measure_takes_the_fields():
    params = inspect.signature(archbench.measure).parameters
    assert list(params) == ["arch", "size", *fields.NAMES[2:], "target_s"]
    with pytest.raises(UserError, match="no field colour"):
        archbench.measure("mlp", "tiny", colour="red")


def test_record_keys_are_the_table_and_derived_keys():
    assert ("cell_id", *fields.NAMES, *DERIVED_KEYS) == IDENTITY_KEYS
    assert RESULT_KEYS[: len(IDENTITY_KEYS)] == IDENTITY_KEYS
    assert set(cell_keys(Cell("mlp", "tiny"))) == set(IDENTITY_KEYS)
    assert results.CELL_KEYS == fields.NAMES


# One cell per field with a value other than its default: the id says it, and reads back.
OTHER = {
    "devices": 2,
    "seq_len": 64,
    "sharding": "fsdp+tp",
    "mesh": "data=1,model=2",
    "variant": "einsum",
    "remat": "full",
    "batch": "auto",
    "dtype": "bfloat16",
    "mode": "infer",
    "size": "base",
    "xla_options": "cpu-no-ynn-reduce",  # "-" in a name: its id part is "xcpu_no_ynn_reduce"
}


@pytest.mark.parametrize("name", [f.name for f in fields.FIELDS if f.name != "arch"])
def test_id_round_trip(name):
    generate = {"mode": "generate", "prompt_len": 6, "gen_len": 5}
    base = generate if name in generate else {}
    plain = Cell(**{"arch": "gpt", "size": "tiny", **{k: v for k, v in base.items() if k != name}})
    field = fields.BY_NAME[name]
    other = OTHER.get(name) or next((c for c in field.choices or () if c != field.default), None)
    cell = Cell(**{"arch": "gpt", "size": "tiny", **base, name: base.get(name, other)})
    assert from_id(cell.id) == cell
    assert cell.id != plain.id
    assert len(cell.id.split("-")) - len(plain.id.split("-")) == (0 if field.always else 1)


def test_id_is_stable():
    # ids are the resume key of results files: those of earlier releases must not change
    assert Cell("mlp", "small", "train", 32).id == "mlp-small-train-b32-float32-d1"
    cell = Cell(
        "gpt", "tiny", "train", 4, "float32", 4, 128, None, None, "fsdp+tp", "data=2,model=2"
    )
    assert cell.id == "gpt-tiny-train-b4-float32-d4-t128-sfsdp+tp-mdata2model2"
    generate = Cell("gpt", "tiny", "generate", 2, prompt_len=6, gen_len=5, variant="einsum")
    assert generate.id == "gpt-tiny-generate-b2-float32-d1-p6-g5-veinsum"


@pytest.mark.parametrize(
    "text", ["mlp-small-train", "mlp-small-train-32-float32", "mlp-small-train-b32-float32-q1"]
)
def test_bad_ids(text):
    with pytest.raises(UserError, match="bad cell"):
        from_id(text)


def test_select_makes_one_cell_per_value_where_it_applies():
    chosen = cells.select(
        arch="gpt,mlp", size="tiny", mode="train,infer", variant="xla,einsum", remat="none,full"
    )
    gpt_train = [c for c in chosen if c.arch == "gpt" and c.mode == "train"]
    assert {(c.variant, c.remat) for c in gpt_train} == {
        (v, r) for v in ("xla", "einsum") for r in ("none", "full")
    }
    # mlp has neither variants nor remat, and infer cells no remat: they keep the default
    assert {(c.variant, c.remat) for c in chosen if c.arch == "mlp"} == {(None, None)}
    assert {c.remat for c in chosen if c.mode == "infer"} == {None}
