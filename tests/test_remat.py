"""Rematerialisation as a matrix axis (`--remat none,full,dots`): the same model and gradients,
less memory for more FLOPs, and the report's section."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from archbench import archs
from archbench.archs import UserError
from archbench.cli.main import main
from archbench.engine import aot
from archbench.engine.cell import Cell, build, from_id, remat_archs
from archbench.matrix import cells
from archbench.train.steps import loss_and_metrics, synthetic_batch


def _loss_and_grads(arch: str, remat: str):
    """Loss and gradients of one train forward pass of `arch` tiny (dropout, batch statistics
    and sown losses as the train step has them), and the shapes of all its variables."""
    spec = archs.get(arch)
    module = spec.build("tiny", remat=remat)
    batch = synthetic_batch(
        spec.size("tiny").input, spec.task, spec.num_outputs("tiny"), 2, jax.random.key(1)
    )
    variables = module.init(jax.random.key(0), batch["x"])

    def loss(params):
        logits, updates = module.apply(
            {**variables, "params": params},
            batch["x"],
            train=True,
            mutable=["batch_stats", "losses"],
            rngs={"dropout": jax.random.key(3)},
        )
        aux = sum(jnp.sum(a) for a in jax.tree.leaves(updates.get("losses", {})))
        return loss_and_metrics(logits, batch["y"])[0] + aux

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    return value, grads, jax.tree.map(jnp.shape, variables)


@pytest.mark.parametrize("arch", ["gpt", "resnet"])
def test_remat_changes_neither_parameters_nor_loss_nor_gradients(arch):
    none_loss, none_grads, none_shapes = _loss_and_grads(arch, "none")
    for remat in ("full", "dots"):
        loss, grads, shapes = _loss_and_grads(arch, remat)
        assert shapes == none_shapes  # the same names (auto-named ResNet blocks too), shapes
        np.testing.assert_allclose(loss, none_loss, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(none_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert archs.get(arch).build("tiny").remat == "none"  # the module's default


def test_remat_is_a_cell_axis_of_train_cells_of_families_that_have_it():
    assert {"gpt", "encoder", "transformer", "llama", "moe", "vit", "mixer"} <= set(remat_archs())
    assert "mamba" not in remat_archs()  # its `remat` is the selective scan's own flag
    requests = cells.select(arch="gpt,mlp", size="tiny", mode="train,infer", remat="none,full")
    got = sorted((r.arch, r.mode, str(r.remat)) for r in requests)
    assert got == [
        ("gpt", "infer", "None"),
        ("gpt", "train", "full"),
        ("gpt", "train", "none"),
        ("mlp", "infer", "None"),
        ("mlp", "train", "None"),
    ]
    for r in requests:
        assert from_id(r.id) == r  # the id carries the policy, and reads back
    assert "gpt-tiny-train-b32-float32-d1-rfull" in {r.id for r in requests}
    assert build(Cell("gpt", "tiny", "train", 8, "float32", remat="dots")).remat == "dots"
    assert build(Cell("mlp", "tiny", "train", 8, "float32")) is not None  # no remat passed


@pytest.mark.parametrize(
    ("arch", "mode", "remat", "expect"),
    [
        ("gpt", "train", "some", "unknown remat 'some'; valid: none, full, dots"),
        ("mlp", "train", "full", "applies to train cells of .*gpt"),
        ("gpt", "infer", "full", "applies to train cells of"),
    ],
)
def test_bad_remat_is_a_one_line_error(arch, mode, remat, expect, tmp_path, capsys):
    with pytest.raises(UserError, match=expect):
        cells.select(arch=arch, size="tiny", mode=mode, remat=remat)
    argv = ["run", "--arch", arch, "--size", "tiny", "--mode", mode, "--remat", remat]
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "remat" in err
    with pytest.raises(UserError, match="remat"):
        aot.compile_only(Cell(arch, "tiny", mode, 4, "float32", remat=remat))


def test_compile_only_full_remat_trades_memory_for_flops():
    none, full = (
        aot.compile_only(Cell("gpt", "tiny", "train", 8, "float32", remat=r))
        for r in ("none", "full")
    )
    assert none["status"] == full["status"] == "compiled"
    assert full["temp_bytes"] < none["temp_bytes"]  # activations recomputed, not kept
    assert full["flops_per_step"] > none["flops_per_step"]  # ... at the price of FLOPs
    assert full["model_flops_per_step"] == none["model_flops_per_step"] == none["flops_per_step"]


def test_run_times_each_policy_and_reports_them(tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["run", "--arch", "gpt", "--size", "tiny", "--mode", "train", "--batch", "4"]
    argv += ["--remat", "none,full", "--target-s", "0.1", "--out", str(out)]
    assert main(argv) == 0
    rows = {
        r["extra_info"]["remat"]: r["extra_info"] for r in json.loads(out.read_text())["benchmarks"]
    }
    assert set(rows) == {"none", "full"}
    none, full = rows["none"], rows["full"]
    assert none["status"] == full["status"] == "ok"
    assert none["params"] == full["params"]
    assert full["model_flops_per_step"] == none["flops_per_step"] < full["flops_per_step"]
    for r in (none, full):  # MFU counts the model's FLOPs, HFU the executed ones
        assert r["mfu"] == pytest.approx(r["hfu"] * r["model_flops_per_step"] / r["flops_per_step"])
    capsys.readouterr()
    assert main(["report", str(out), "--table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    column = lines[0].split().index("remat")
    assert {line.split()[column] for line in lines[2:]} == {"none", "full"}
    md = tmp_path / "r.md"
    assert main(["report", str(out), "--md", str(md)]) == 0
    text = md.read_text()
    assert "## Rematerialisation" in text
    section = text.split("## Rematerialisation")[1].split("\n## ")[0]
    assert "| full |" in section and "| none |" in section and "1.00×" in section
    assert "b=4 fp32 remat none" in text and "b=4 fp32 remat full" in text  # main table rows
