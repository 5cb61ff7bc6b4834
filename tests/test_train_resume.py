"""Issue 23: stopping and resuming training (Ctrl-C during a save, what --resume says, the
checkpoint cadence, a shortened run's verdict). Tiny synthetic data, as tests/test_fit.py."""

from __future__ import annotations

import json
import signal

import jax
import optax
import pytest

from archbench import archs
from archbench.cli.main import main
from archbench.train import checkpoint as checkpoint_module
from archbench.train import recipes
from archbench.train.checkpoint import Checkpoints
from archbench.train.fit import resume_message
from archbench.train.steps import create_train_state
from tests import test_fit

KEY = jax.random.key(0)


def _tiny_state():
    spec = archs.get("mlp")
    return create_train_state(spec.build("tiny"), spec.size("tiny").input, optax.sgd(0.1), KEY)


def test_ctrl_c_during_a_save_waits_for_the_checkpoint(tmp_path, monkeypatch):
    """A SIGINT that lands inside a checkpoint's save is raised once the save is done: the
    checkpoint is whole, and no orbax thread is left writing into a closed manager (which
    printed "RuntimeError: cannot schedule new futures after shutdown" after the interrupt)."""
    real = checkpoint_module.state_tree

    def state_tree(state):  # called inside the save, as orbax starts on it
        signal.raise_signal(signal.SIGINT)
        return real(state)

    state = _tiny_state()
    # Python's default_int_handler, or SIG_IGN where the suite was started in the background
    before = signal.getsignal(signal.SIGINT)
    with Checkpoints(tmp_path) as ckpt:
        ckpt.save(1, state, {"epoch": 1})
        monkeypatch.setattr(checkpoint_module, "state_tree", state_tree)
        with pytest.raises(KeyboardInterrupt):
            ckpt.save(2, state, {"epoch": 2})
        assert signal.getsignal(signal.SIGINT) is before  # the save's own handler is gone
        assert ckpt.latest_epoch() == 2 and ckpt.meta(2) == {"epoch": 2}


data, cli_recipes = test_fit.data, test_fit.cli_recipes  # the "toy" dataset and recipes


def test_resume_says_what_it_does(cli_recipes, tmp_path, capsys):
    """--resume on a directory with no checkpoint (or none at all) starts at epoch 1, and
    says so; on a finished run it says that."""
    run = tmp_path / "never-made"
    argv = ["train", "toy-mlp", "--out", str(run), "--resume", "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"archbench: --resume: no checkpoint in {run}: starting at epoch 1 of 1" in err
    assert main(argv) == 0
    assert f"the run in {run} finished at epoch 1 of 1" in capsys.readouterr().err


def test_resume_names_the_checkpoint_and_the_epochs_run_again(tmp_path):
    """A run killed at epoch 16 of a recipe that saves every 10 epochs resumes after epoch 10:
    the message says so, and that epochs 11-16 run again, and why."""
    recipe = test_fit.toy_recipe(name="every10", epochs=60, checkpoint_every=10)
    lines = [{"kind": "step", "step": 1, "epoch": 1}]
    lines += [{"kind": "epoch", "step": 6 * e, "epoch": e, "split": "test"} for e in range(1, 17)]
    text = "\n".join(map(json.dumps, lines)) + '\n{"kind": "epo'  # torn by the kill
    (tmp_path / "metrics.jsonl").write_text(text)
    line = resume_message(recipe, tmp_path, {"epoch": 10}, 60)
    assert line == (
        "resuming every10 from its checkpoint of epoch 10: starting at epoch 11 of 60; "
        "epochs 11-16 run again (every10 saves a checkpoint every 10 epochs)"
    )
    line = resume_message(recipe, tmp_path, None, 60)
    assert line.startswith(f"--resume: no checkpoint in {tmp_path}: starting at epoch 1 of 60")
    assert "epochs 1-16 run again" in line


def test_a_shortened_run_says_its_band_is_for_the_whole_recipe(data, tmp_path, monkeypatch, capsys):
    """`--epochs 1` of a longer recipe: "OUTSIDE the expected band" says the run was shortened
    (a resume without --epochs keeps the length the run was started with, and says it too)."""
    recipe = test_fit.toy_recipe(name="toy-long", epochs=3, expected=(2.0, 3.0))
    monkeypatch.setitem(recipes.RECIPES, recipe.name, recipe)
    argv = ["train", "toy-long", "--out", str(tmp_path), "--no-progress"]
    assert main([*argv, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "OUTSIDE the expected 200.0-300.0% (a band for the recipe's 3 epochs; this run" in out
    assert "shortened to 1 with --epochs)" in out
    assert main([*argv, "--resume"]) == 0
    assert "shortened to 1 with --epochs)" in capsys.readouterr().out
    assert "lengthened to 5" in recipes.check_message(recipe, 0.5, 5)
    assert recipes.check_message(recipe, 0.5, 3) == recipes.check_message(recipe, 0.5)
