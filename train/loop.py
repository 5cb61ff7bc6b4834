"""One epoch of a fit: the timed train steps, the evaluation, and their metric records.

`Run.train_epoch` dispatches `train.steps.jit_train_step` (on several devices, the same
`train_step` jitted to keep the state's shardings) over one epoch's batches
(a `train.feed.EpochFeed`) and times how long the loop waits for each of them;
`start_evaluation` dispatches the eval steps over the test split and `Run.test_record` collects
them. Both check for NaN or infinite values and return the epoch's JSONL record.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from archbench.errors import UserError
from archbench.train.feed import EpochFeed, place
from archbench.train.recipes import Recipe
from archbench.train.steps import TrainState, jit_eval_step, jit_train_step

LOG_KEYS = (
    "kind", "step", "epoch", "split", "loss", "accuracy", "lr",
    "examples_per_s", "wall_s", "data_wait_s",
)  # fmt: skip


class TrainingDiverged(UserError):
    """The loss or the parameters became NaN or infinite; the message names the step."""


def data_module():
    """The data module (imported late: the CLI's --list and --help do not need it)."""
    return importlib.import_module("archbench.train.data")


# ---- metrics -----------------------------------------------------------------------------------


class MetricsLog:
    """Append-only JSONL file of metrics, one flushed line per record."""

    def __init__(self, path: Path, keep_through_step: int | None):
        self.path = path
        kept = []
        if keep_through_step is not None and path.exists():  # a resumed run: drop what the
            lines = path.read_text().splitlines()  # restored checkpoint does not cover
            for i, line in enumerate(lines, 1):
                step = _step(path, i, line, last=i == len(lines))
                if step is not None and step <= keep_through_step:
                    kept.append(line + "\n")
        path.write_text("".join(kept))
        self._file = path.open("a")

    def write(self, record: dict) -> None:
        record = {k: _plain(v) for k, v in record.items()}
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:  # a full disk: say which file (a file object's error does not)
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):  # every line was flushed, or its error raised
            self._file.close()


def last_logged_epoch(path: Path) -> int:
    """The last epoch `path` (a metrics.jsonl) has a record of; 0 for none (or no file).
    Lines that are not records (one torn by a kill) are skipped: this only informs."""
    last = 0
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError, TypeError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("kind") == "epoch":
                    last = max(last, int(record.get("epoch") or 0))
    return last


def _step(path: Path, number: int, line: str, last: bool) -> int | None:
    """The step of metrics line `number`; None for a blank line, or for a last line torn by a
    kill in the middle of writing it (dropped: its step is redone). Any other line that is not
    a record is a UserError naming the file and line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        if last:
            return None
        raise UserError(f"{path}:{number}: not a JSON line; fix or remove it to resume") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise UserError(f"{path}:{number}: not a metrics record (no integer 'step')")
    return record["step"]


def _plain(v):
    if isinstance(v, np.generic | jax.Array):
        return v.item()
    return v


def bpc(loss: float) -> float:
    return loss / math.log(2)


# ---- evaluation --------------------------------------------------------------------------------


def start_evaluation(state: TrainState, split, batch_size: int, sharding=None) -> dict:
    """Dispatch the eval steps over the whole split (remainder batch included); the host is
    free until `finish_evaluation` waits for their results. With a batch `sharding` (several
    devices), each batch is placed with it (`train.feed.place`)."""
    start = time.perf_counter()
    batches = data_module().batches(
        split, batch_size, seed=0, epoch=0, shuffle=False, drop_remainder=False
    )
    if sharding is not None:
        batches = (place(batch, sharding) for batch in batches)
    pending = [(len(batch["y"]), jit_eval_step(state, batch)) for batch in batches]
    return {"pending": pending, "start": start}


def finish_evaluation(started: dict) -> dict[str, float]:
    """Loss and accuracy of `start_evaluation`'s split, weighted by batch size, and the
    seconds since it started."""
    totals = {"loss": 0.0, "accuracy": 0.0}
    n = 0
    for size, metrics in jax.device_get(started["pending"]):
        for k in totals:
            totals[k] += size * float(metrics[k])
        n += size
    seconds = time.perf_counter() - started["start"]
    return {**{k: v / n for k, v in totals.items()}, "examples": n, "seconds": seconds}


def evaluate(state: TrainState, split, batch_size: int, sharding=None) -> dict[str, float]:
    """Loss and accuracy over the whole split (remainder batch included), weighted by size."""
    return finish_evaluation(start_evaluation(state, split, batch_size, sharding))


# ---- the loop ----------------------------------------------------------------------------------


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


class Run:
    """One invocation of `train.fit.fit`: its recipe, files and clocks, and its epochs."""

    def __init__(
        self, recipe, config, out_dir, schedule, log, ckpt, wall_offset, progress,
        step=jit_train_step,
    ):  # fmt: skip
        self.recipe = recipe
        self.step = step  # the jitted train_step (with the state's shardings on several devices)
        self.config = config
        self.out_dir = out_dir
        self.schedule = schedule
        self.log = log
        self.ckpt = ckpt
        self.progress = progress
        self.start = time.perf_counter() - wall_offset
        self.last_saved: int | None = ckpt.latest_epoch()

    def wall_s(self) -> float:
        return time.perf_counter() - self.start

    def lr(self, step: int) -> float:
        """The learning rate of the update that produced `step` (optax counts from 0)."""
        return float(self.schedule(max(step - 1, 0)))

    def diverged(self, what: str, step: int, epoch: int) -> TrainingDiverged:
        where = (
            f"epoch {self.last_saved} in {self.ckpt.directory}"
            if self.last_saved is not None
            else "none written"
        )
        return TrainingDiverged(
            f"{self.recipe.name}: {what} at step {step} (epoch {epoch}); training stopped, "
            f"last good checkpoint: {where}"
        )

    def flush(self, window: list, epoch: int, sums: dict, bar) -> tuple[float, float]:
        """Check the train metrics of `window`, [(step, metrics)], add them to `sums`; their means."""
        host = jax.device_get([m for _, m in window])
        for (step, _), m in zip(window, host, strict=True):
            if not np.isfinite(m["loss"]):
                raise self.diverged(f"loss is {float(m['loss'])}", step, epoch)
            sums["loss"] += float(m["loss"])
            sums["accuracy"] += float(m["accuracy"])
            sums["steps"] += 1
        loss = float(np.mean([m["loss"] for m in host]))
        accuracy = float(np.mean([m["accuracy"] for m in host]))
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.4f}", refresh=False)
        return loss, accuracy

    def train_epoch(self, state: TrainState, feed: EpochFeed, epoch: int, steps: int):
        """One epoch of train steps over `feed`, which it closes; returns the new state and the
        epoch's train record."""
        with contextlib.closing(feed):
            state, record = self._train_epoch(state, feed, epoch, steps)
        record["data_prep_s"] = feed.prep_s
        return state, record

    def _train_epoch(self, state: TrainState, batches: Iterator[dict], epoch: int, steps: int):
        sums = {"loss": 0.0, "accuracy": 0.0, "steps": 0}
        bar = tqdm(
            total=steps,
            desc=f"{self.recipe.name} epoch {epoch}/{self.config['epochs']}",
            disable=not (self.progress and sys.stderr.isatty()),
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        epoch_start = window_start = time.perf_counter()
        # wait: time the loop spends getting the next batch (gathered on the device, or put
        # there by the prefetch thread and ready). stall: the part of it during which the
        # device had no step to run (the previous step had already finished), an upper bound
        # on the time the device actually waited for data.
        epoch_time = {"wait": 0.0, "stall": 0.0}
        window_time = dict(epoch_time)
        window: list = []
        step = int(state.step)

        t = time.perf_counter()
        batch = next(batches, None)
        window_time["wait"] = window_time["stall"] = time.perf_counter() - t
        while batch is not None:
            state, metrics = self.step(state, batch)  # dispatched, runs asynchronously
            step += 1
            window.append((step, metrics))
            t = time.perf_counter()
            batch = next(batches, None)  # while the step just dispatched runs
            fetch_s = time.perf_counter() - t
            window_time["wait"] += fetch_s
            if metrics["loss"].is_ready():  # the step ended before the batch was ready
                window_time["stall"] += fetch_s
            bar.update()
            if step % self.recipe.log_every == 0 or batch is None:
                self._log_window(window, window_time, window_start, epoch, sums, bar)
                for k, v in window_time.items():
                    epoch_time[k] += v
                window, window_start = [], time.perf_counter()
                window_time = dict.fromkeys(window_time, 0.0)
        bar.close()
        seconds = time.perf_counter() - epoch_start
        if not bool(_all_finite((state.params, state.batch_stats))):
            raise self.diverged("parameters are not finite", step, epoch)
        return state, self._epoch_record(step, epoch, sums, epoch_time, seconds)

    def _log_window(self, window: list, time_s: dict, start: float, epoch: int, sums, bar):
        """Log the train steps of `window` (since `start`) as one "step" record."""
        loss, accuracy = self.flush(window, epoch, sums, bar)
        examples_per_s = len(window) * self.recipe.batch / (time.perf_counter() - start)
        step = window[-1][0]
        record = self._record(
            "step", step, epoch, "train", loss, accuracy, examples_per_s, time_s["wait"]
        )
        record["data_stall_s"] = time_s["stall"]
        self.log.write(record)

    def _epoch_record(self, step: int, epoch: int, sums: dict, time_s: dict, seconds: float):
        """The epoch's train record: its steps' mean metrics, throughput and data waits."""
        n = max(sums["steps"], 1)
        record = self._record(
            "epoch", step, epoch, "train", sums["loss"] / n, sums["accuracy"] / n,
            sums["steps"] * self.recipe.batch / seconds, time_s["wait"],
        )  # fmt: skip
        record.update(
            data_stall_s=time_s["stall"],
            data_wait_frac=time_s["wait"] / seconds,
            data_stall_frac=time_s["stall"] / seconds,
            train_s=seconds,
            steps=sums["steps"],
        )
        return record

    def _record(self, kind, step, epoch, split, loss, accuracy, examples_per_s, wait_s) -> dict:
        record = {
            "kind": kind,
            "step": step,
            "epoch": epoch,
            "split": split,
            "loss": loss,
            "accuracy": accuracy,
            "lr": self.lr(step),
            "examples_per_s": examples_per_s,
            "wall_s": self.wall_s(),
            "data_wait_s": wait_s,
        }
        if self.recipe.metric == "bits_per_char":
            record["bits_per_char"] = bpc(loss)
        return record

    def test_record(self, started: dict, step: int, epoch: int) -> dict:
        """The test record of `start_evaluation`'s results, the state at `step`."""
        ev = finish_evaluation(started)
        if not np.isfinite(ev["loss"]):
            raise self.diverged(f"test loss is {ev['loss']}", step, epoch)
        record = self._record(
            "epoch", step, epoch, "test", ev["loss"], ev["accuracy"],
            ev["examples"] / ev["seconds"], 0.0,
        )  # fmt: skip
        record["eval_s"] = ev["seconds"]
        return record


def epoch_line(recipe: Recipe, train: dict, test: dict, epochs: int) -> str:
    metric = (
        f"test bits/char {test['bits_per_char']:.3f}"
        if recipe.metric == "bits_per_char"
        else f"test acc {test['accuracy']:.4f}"
    )
    return (
        f"{recipe.name} epoch {train['epoch']}/{epochs}: train loss {train['loss']:.4f} "
        f"acc {train['accuracy']:.4f} | test loss {test['loss']:.4f} {metric} | "
        f"{train['examples_per_s']:.0f} ex/s, data wait {100 * train['data_wait_frac']:.1f}% "
        f"(stall {100 * train['data_stall_frac']:.1f}%), "
        f"{train['wall_s']:.0f} s"
    )
