"""Issue 23: stopping and resuming training (Ctrl-C during a save, what --resume says, the
checkpoint cadence, a shortened run's verdict). Tiny synthetic data, as tests/test_fit.py."""

from __future__ import annotations

import signal

import jax
import optax
import pytest

from archbench import archs
from archbench.train import checkpoint as checkpoint_module
from archbench.train.checkpoint import Checkpoints
from archbench.train.steps import create_train_state

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
    with Checkpoints(tmp_path) as ckpt:
        ckpt.save(1, state, {"epoch": 1})
        monkeypatch.setattr(checkpoint_module, "state_tree", state_tree)
        with pytest.raises(KeyboardInterrupt):
            ckpt.save(2, state, {"epoch": 2})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert ckpt.latest_epoch() == 2 and ckpt.meta(2) == {"epoch": 2}
