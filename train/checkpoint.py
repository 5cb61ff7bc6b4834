"""Checkpoints of a training run through orbax: the train state plus a JSON record per epoch.

A checkpoint is one orbax step per saved epoch, holding two items:
  state  the TrainState's arrays: step, params, opt_state, batch_stats and the dropout key
         (a typed PRNG key, stored as its raw `jax.random.key_data` and re-wrapped on restore);
  meta   JSON: epoch, recipe name, the run's config, elapsed wall time, the epoch's metrics.
Arrays split over several devices are saved as they are split (each device writes its
shards) and restored onto the shardings of the state given to `restore`. Saving is
synchronous: the fit loop donates the state to the next train step, so orbax must have
finished reading its buffers before `save` returns. A Ctrl-C (SIGINT) during a save takes
effect when the save is done: cut short, orbax's own threads went on writing into a closed
manager and printed their tracebacks after "archbench: interrupted".
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from archbench.train.steps import TrainState


def state_tree(state: TrainState) -> dict[str, Any]:
    """The arrays of `state` as a plain pytree orbax can write (the PRNG key as raw data)."""
    return {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state,
        "batch_stats": state.batch_stats,
        "dropout_key": jax.random.key_data(state.dropout_key),
    }


def tree_state(tree: dict[str, Any], like: TrainState) -> TrainState:
    """Rebuild a TrainState from `state_tree` output, with `like`'s functions and key type."""
    return like.replace(
        step=tree["step"],
        params=tree["params"],
        opt_state=tree["opt_state"],
        batch_stats=tree["batch_stats"],
        dropout_key=jax.random.wrap_key_data(
            tree["dropout_key"], impl=jax.random.key_impl(like.dropout_key)
        ),
    )


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a SIGINT that arrives inside the block, and raise KeyboardInterrupt at its end (in
    the main thread, where Python handles signals; elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


class Checkpoints:
    """The checkpoints of one run directory, numbered by epoch."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
            ),
        )

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def meta(self, epoch: int) -> dict[str, Any]:
        """The JSON record saved with `epoch`."""
        restored = self._manager.restore(
            epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )
        return dict(restored["meta"])

    def save(self, epoch: int, state: TrainState, meta: dict[str, Any]) -> None:
        """Save `epoch`; a failed write (a full disk) is an OSError naming the checkpoint. Orbax
        finalises a checkpoint by renaming its temporary folder, so a save that fails or is
        killed leaves none that `latest_epoch` would pick, and the next save replaces it."""
        with _sigint_deferred():  # a Ctrl-C now: the checkpoint is written first
            self._save(epoch, state, meta)

    def _save(self, epoch: int, state: TrainState, meta: dict[str, Any]) -> None:
        absl, level = logging.getLogger("absl"), logging.getLogger("absl").level
        absl.setLevel(logging.CRITICAL)  # orbax's threads log a failed write with a traceback
        try:
            self._manager.save(
                epoch,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state_tree(state)), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            self._manager.wait_until_finished()
        except ValueError as e:  # tensorstore reports a failed write as ValueError(os_error_code)
            code = re.search(r"os_error_code='?(\d+)", str(e))
            if code is None:
                raise
            errno = int(code.group(1))
            raise OSError(errno, os.strerror(errno), str(self.directory / str(epoch))) from None
        finally:
            absl.setLevel(level)

    def restore(self, epoch: int, like: TrainState) -> TrainState:
        """The state saved at `epoch`, shaped, typed and placed as `like` (a freshly created
        state): orbax reads each array's shards onto `like`'s shardings, whatever devices and
        shardings saved it (a run saved on 2 devices restores onto 1 or 4)."""
        # ShapeDtypeStructs carrying like's shardings: the target StandardRestore places by.
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_tree(like))
        restored = self._manager.restore(
            epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return tree_state(restored["state"], like)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
