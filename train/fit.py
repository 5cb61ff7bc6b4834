"""The fit loop: train a recipe epoch by epoch, evaluate, log JSONL metrics, checkpoint, resume.

`fit(recipe, out_dir=...)` runs `train.steps.jit_train_step` over shuffled batches (seeded by
the recipe's seed and the epoch, so a resumed run sees the same batches as an unbroken one),
evaluates the whole test split with `jit_eval_step` after every epoch, and saves an orbax
checkpoint after every `recipe.checkpoint_every` epochs. The next epoch's feed (its
permutation and first gather, `train.feed.EpochFeed`) is made while the device evaluates, so
the epoch's first step does not wait for it. out_dir holds:

  metrics.jsonl   one JSON line per logged train window ("kind": "step") and one per epoch
                  and split ("kind": "epoch", split "train" or "test")
  checkpoints/    orbax checkpoints, one per saved epoch
  final.json      the final metrics, once the last epoch is done

On several devices `fit(..., placement=...)` takes a placement from the caller (the CLI
builds an `engine.sharding.Layout`; train does not import engine): an object whose
`.state(abstract_state, logical_axes)` gives a sharding for every array of the train state
(`logical_axes`: `archs.logical_axes(module, input_spec)`, its parameters' names) and whose
`.batch` is the batch's `NamedSharding`. The state is created already split
(`jax.jit(init, out_shardings=...)`), every train and test batch is placed with the batch
sharding, and the global batch stays the recipe's, so the curve is one device's up to float
reassociation. Checkpoints hold the arrays as they are split; a resumed run restores them
onto its own placement, whatever the device count of the run that saved them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from archbench import archs
from archbench.archs.inputs import InputSpec
from archbench.errors import UserError
from archbench.train.checkpoint import Checkpoints
from archbench.train.feed import EpochFeed, batch_shards, on_device, place, warm_up_gathers
from archbench.train.loop import (
    MetricsLog,
    Run,
    bpc,
    data_module,
    epoch_line,
    last_logged_epoch,
    start_evaluation,
)
from archbench.train.recipes import Recipe
from archbench.train.steps import TrainState, create_train_state, jit_train_step, train_step

# ---- inputs ------------------------------------------------------------------------------------


# Input transforms by name (a recipe's `transform`), from the data module.
TRANSFORMS: dict[str, Callable] = {
    "pad32": lambda data, split: data.pad_to(split, 32),  # 28x28 -> 32x32, LeNet-5's input
    "rows": lambda data, split: data.rows(split),  # (N, 28, 28, 1) -> 28 rows of 28 features
}


def load_splits(recipe: Recipe, data_dir: str | None = None):
    """The recipe's (train, test) splits, transformed into the model's input shape."""
    data = data_module()
    splits = []
    for split in ("train", "test"):
        s = data.load(recipe.dataset, split, data_dir=data_dir)
        if recipe.transform is not None:
            s = TRANSFORMS[recipe.transform](data, s)
        splits.append(s)
    return tuple(splits)


def input_spec_for(recipe: Recipe, x: np.ndarray) -> InputSpec:
    """The InputSpec of examples shaped like x[0], of the kind the architecture's size takes."""
    size_input = archs.get(recipe.arch).size(recipe.size).input
    vocab = recipe.overrides.get("vocab_size", size_input.vocab_size)
    return InputSpec(size_input.kind, tuple(x.shape[1:]), vocab)


def build_module(recipe: Recipe):
    spec = archs.get(recipe.arch)
    if recipe.size not in spec.sizes:
        raise UserError(
            f"recipe {recipe.name} needs size {recipe.size!r} of architecture {recipe.arch!r}, "
            f"which is not registered (valid: {', '.join(spec.sizes)})"
        )
    return spec.build(recipe.size, **recipe.overrides)


def _copy_tree(tree):
    return jax.tree.map(jnp.copy, tree)


_copy = jax.jit(_copy_tree)


_INIT_CACHE: dict[tuple, tuple] = {}


def initial_state(recipe: Recipe, x: np.ndarray, total_steps: int, placement=None):
    """A fresh train state for inputs shaped like x[0], and the learning-rate schedule.

    With a `placement` (see the module's docstring; hashable) every array is created with its
    sharding, so no device ever holds more than its share.
    """
    state, schedule, _ = _start(recipe, x, total_steps, placement)
    return state, schedule


def _start(recipe: Recipe, x: np.ndarray, total_steps: int, placement):
    """`initial_state`'s state and schedule, and the step functions for that state:
    {"step": the jitted train step, "copy": a jitted copy of the state}.

    Everything is cached per configuration and placement: the train state holds the optimizer,
    so reusing it lets repeated fits in one process (a resume, the tests) reuse the compiled
    train and eval steps. With a placement, the train step and the copy give their state the
    placement's shardings: left to itself, XLA may hand back an equal sharding written
    differently (P("data") for P("data", None)), and the next step would compile again.
    """
    config = recipe.config()
    del config["recipe"], config["epochs"], config["batch"], config["metric"]
    key = (json.dumps([config, total_steps, x.shape[1:], str(x.dtype)], default=str), placement)
    if key not in _INIT_CACHE:
        schedule = recipe.schedule(total_steps)
        module, spec = build_module(recipe), input_spec_for(recipe, x)
        tx = recipe.optimizer(schedule)

        def create(key):
            return create_train_state(module, spec, tx, key)

        # Jitted: one compilation instead of one per initializer op.
        if placement is None:
            init, steps = jax.jit(create), {"step": jit_train_step, "copy": _copy}
        else:
            shapes = jax.eval_shape(create, jax.random.key(0))
            shardings = placement.state(shapes, archs.logical_axes(module, spec))
            init = jax.jit(create, out_shardings=shardings)
            step = jax.jit(train_step, donate_argnums=0, out_shardings=(shardings, None))
            steps = {
                "step": placement.traced(step),
                "copy": jax.jit(_copy_tree, out_shardings=shardings),
            }
        _INIT_CACHE[key] = (init, schedule, steps)
    init, schedule, steps = _INIT_CACHE[key]
    return init(jax.random.key(recipe.seed)), schedule, steps


def load_state(
    recipe: Recipe, out_dir: str | Path, *, data_dir: str | None = None, placement=None
) -> TrainState:
    """The train state of the latest checkpoint in out_dir (e.g. to evaluate a trained model),
    its arrays placed by `placement` (None: the default device), whatever placement saved it."""
    with Checkpoints(Path(out_dir) / "checkpoints") as ckpt:
        latest = ckpt.latest_epoch()
        if latest is None:
            raise UserError(f"no checkpoint in {out_dir}")
        meta = ckpt.meta(latest)
        train, _ = load_splits(recipe, data_dir)
        steps = meta["config"]["epochs"] * (len(train.y) // recipe.batch)
        like, _ = initial_state(recipe, train.x, steps, placement)
        return ckpt.restore(latest, like)


def _warm_up(
    state: TrainState, train, device_train, batch_size: int, steps: int, sharding, fns: dict
) -> float:
    """Compile the train step and the batch gathers before the clocks start (the step on a
    copy of the state: it donates its input)."""
    start = time.perf_counter()
    batch = place(next(data_module().batches(train, batch_size, seed=0, epoch=0)), sharding)
    if device_train is not None:
        warm_up_gathers(device_train, steps, batch_size, sharding)
    copy = fns["copy"](state)
    jax.block_until_ready(fns["step"](copy, batch))
    return time.perf_counter() - start


def _resume_config(recipe: Recipe, meta: dict, epochs: int | None, out_dir: Path) -> dict:
    """The config of the run stored in out_dir, checked against `recipe` and `epochs`."""
    if meta["recipe"] != recipe.name:
        raise UserError(
            f"--resume: {out_dir} holds a run of recipe {meta['recipe']!r}, not {recipe.name!r}; "
            "choose another --out"
        )
    stored = meta["config"]
    config = recipe.config(stored["epochs"] if epochs is None else epochs)
    changed = sorted(k for k in config if stored.get(k) != config[k])
    if changed:
        diffs = "; ".join(f"{k}: {stored.get(k)!r} -> {config[k]!r}" for k in changed)
        raise UserError(f"--resume: the run in {out_dir} was started with other settings ({diffs})")
    return config


def fit(
    recipe: Recipe,
    *,
    out_dir: str | Path,
    epochs: int | None = None,
    resume: bool = False,
    progress: bool = True,
    data_dir: str | None = None,
    placement=None,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train `recipe` and return its final metrics.

    Args:
      recipe: the recipe to train.
      out_dir: run directory for metrics.jsonl, checkpoints/ and final.json.
      epochs: overrides recipe.epochs (the learning-rate schedule spans the new length).
      resume: continue the run saved in out_dir from its latest checkpoint; the result equals
        an unbroken run. Without it, a directory that holds checkpoints is refused.
      progress: a line per epoch on stderr, and a tqdm progress bar when stderr is a terminal.
      data_dir: passed to the data loader.
      placement: where the state and batches live on several devices (the module's
        docstring; e.g. `engine.sharding.layout("fsdp", jax.devices()[:2])`); None is one
        device. A resumed run may use another placement than the run it continues.
      say: called with one line on what `resume` does (the epoch it continues from, or that
        there is no checkpoint to continue); None: nothing is said.
    Returns:
      {"recipe", "metric", "value", "epoch", "step", "test_loss", "test_accuracy",
       "train_loss", "train_accuracy", "wall_s", "data_wait_frac", "out_dir"}.
    Raises:
      UserError: bad recipe/run-directory combinations; TrainingDiverged on NaN or inf.
    """
    out_dir = Path(out_dir)
    sharding = None if placement is None else placement.batch
    _check(recipe, epochs, sharding)  # before any file exists
    out_dir.mkdir(parents=True, exist_ok=True)
    with Checkpoints(out_dir / "checkpoints") as ckpt:
        meta, config = _opening(ckpt, recipe, epochs, resume, out_dir)
        if resume and say is not None:
            say(resume_message(recipe, out_dir, meta, config["epochs"]))
        train, test = load_splits(recipe, data_dir)
        steps_per_epoch = _steps_per_epoch(recipe, train)
        total_steps = config["epochs"] * steps_per_epoch
        state, schedule, fns = _start(recipe, train.x, total_steps, placement)
        if meta is not None:
            state = ckpt.restore(meta["epoch"], state)
            if meta["epoch"] >= config["epochs"]:
                return _final(recipe, meta, out_dir)
        log = MetricsLog(out_dir / "metrics.jsonl", int(state.step) if meta else None)
        run = Run(
            recipe, config, out_dir, schedule, log, ckpt,
            meta["wall_s"] if meta else 0.0, progress, step=fns["step"],
        )  # fmt: skip
        try:
            first = meta["epoch"] + 1 if meta is not None else 1
            meta = _train_epochs(run, state, (train, test), first, steps_per_epoch, sharding, fns)
        finally:
            log.close()
    return _final(recipe, meta, out_dir)


def _check(recipe: Recipe, epochs: int | None, sharding) -> None:
    """Refuse a bad epoch count, an architecture size that is not registered, or a batch that
    does not split evenly over the devices it is sharded across."""
    if epochs is not None and epochs < 1:
        raise UserError(f"epochs must be at least 1, not {epochs}")
    build_module(recipe)
    shards = batch_shards(sharding)
    if recipe.batch % shards:
        raise UserError(
            f"{recipe.name}: batch {recipe.batch} is not divisible by the {shards} batch shards "
            f"of {len(sharding.device_set)} devices; use a device count that divides it"
        )


def _steps_per_epoch(recipe: Recipe, train) -> int:
    """Whole batches in the train split: the steps of one epoch (none is a UserError)."""
    steps = len(train.y) // recipe.batch
    if steps == 0:
        raise UserError(f"{recipe.name}: {len(train.y)} training examples < batch {recipe.batch}")
    return steps


def _opening(ckpt: Checkpoints, recipe: Recipe, epochs, resume: bool, out_dir: Path):
    """(meta of the latest checkpoint or None, the run's config): what out_dir holds, checked
    against `resume`, the recipe and `epochs`."""
    latest = ckpt.latest_epoch()
    meta = ckpt.meta(latest) if latest is not None else None
    if meta is None:
        return None, recipe.config(epochs)
    if not resume:
        raise UserError(
            f"{out_dir} already holds a run of {meta['recipe']!r} (epoch {latest}); "
            "pass --resume to continue it, or choose another --out"
        )
    return meta, _resume_config(recipe, meta, epochs, out_dir)


def _train_epochs(run: Run, state, splits, first: int, steps: int, sharding, fns: dict) -> dict:
    """Train epochs `first`..the last, each evaluated, logged and checkpointed at the recipe's
    cadence; the meta of the last epoch."""
    recipe, total = run.recipe, run.config["epochs"]
    train, test = splits
    device_train = on_device(train, sharding)

    def feed(epoch: int) -> EpochFeed:
        return EpochFeed(
            train, device_train, recipe.batch, seed=recipe.seed, epoch=epoch, sharding=sharding
        )

    batches = None
    try:
        compile_s = _warm_up(state, train, device_train, recipe.batch, steps, sharding, fns)
        batches = feed(first)
        for epoch in range(first, total + 1):
            state, train_rec = run.train_epoch(state, batches, epoch, steps)
            if epoch == first:
                train_rec["compile_s"] = compile_s
            train_rec["devices"] = 1 if sharding is None else len(sharding.device_set)
            evaluation = start_evaluation(state, test, recipe.eval_batch, sharding)
            # The next epoch's data work, on the host while the device evaluates.
            batches = feed(epoch + 1) if epoch < total else None
            test_rec = run.test_record(evaluation, int(state.step), epoch)
            meta = _end_epoch(run, state, epoch, train_rec, test_rec)
    finally:
        if batches is not None:
            batches.close()
    return meta


def _end_epoch(run: Run, state, epoch: int, train_rec: dict, test_rec: dict) -> dict:
    """Log the epoch's records, checkpoint at the recipe's cadence and say the epoch's line;
    the epoch's meta (what a checkpoint stores beside the state)."""
    recipe, total = run.recipe, run.config["epochs"]
    run.log.write(train_rec)
    run.log.write(test_rec)
    meta = {
        "epoch": epoch,
        "step": int(state.step),
        "recipe": recipe.name,
        "config": run.config,
        "wall_s": run.wall_s(),
        "train": train_rec,
        "test": test_rec,
    }
    if epoch % recipe.checkpoint_every == 0 or epoch == total:
        run.ckpt.save(epoch, state, meta)
        run.last_saved = epoch
    if run.progress:
        print(epoch_line(recipe, train_rec, test_rec, total), file=sys.stderr)
    return meta


def resume_message(recipe: Recipe, out_dir: Path, meta: dict | None, total: int) -> str:
    """What --resume does with out_dir: the checkpoint it continues from, or that there is
    none; and the logged epochs past it that run again, with the recipe's cadence."""
    done = 0 if meta is None else meta["epoch"]
    if done >= total:
        return f"--resume: the run in {out_dir} finished at epoch {done} of {total}"
    if meta is None:
        line = f"--resume: no checkpoint in {out_dir}: starting at epoch 1 of {total}"
    else:
        line = (
            f"resuming {recipe.name} from its checkpoint of epoch {done}: starting at epoch "
            f"{done + 1} of {total}"
        )
    logged = last_logged_epoch(out_dir / "metrics.jsonl")
    if logged > done:
        every = recipe.checkpoint_every
        cadence = "after every epoch" if every == 1 else f"every {every} epochs"
        again = f"epoch {logged}" if logged == done + 1 else f"epochs {done + 1}-{logged}"
        line += f"; {again} run again ({recipe.name} saves a checkpoint {cadence})"
    return line


def _metric_value(recipe: Recipe, test: dict) -> float:
    return bpc(test["loss"]) if recipe.metric == "bits_per_char" else test["accuracy"]


def _final(recipe: Recipe, meta: dict, out_dir: Path) -> dict[str, Any]:
    train, test = meta["train"], meta["test"]
    final = {
        "recipe": recipe.name,
        "metric": recipe.metric,
        "value": _metric_value(recipe, test),
        "expected": list(recipe.expected),
        "epoch": meta["epoch"],
        "step": meta["step"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "wall_s": meta["wall_s"],
        "data_wait_frac": train["data_wait_frac"],
        "data_stall_frac": train["data_stall_frac"],
        "out_dir": str(out_dir),
    }
    (out_dir / "final.json").write_text(json.dumps(final, indent=1) + "\n")
    return final


__all__ = ["TRANSFORMS", "fit", "initial_state", "load_splits", "load_state"]
