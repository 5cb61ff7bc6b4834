"""Check what the training feed costs: one epoch of train steps, fed four ways, side by side.

    python -m archbench.checks.feed [RECIPE] [--rounds 100]

Each round runs one epoch of the recipe's `jit_train_step` per setup, the setups in a new
random order every round (so drift on a shared machine hits them all alike):

  reused  the first epoch's batches again: no data work at all, the floor
  order   as reused, plus the epoch's permutation (`train.data.permutation`)
  gather  as reused, plus one gather of a chunk of batches on the device, thrown away
  feed    a `train.feed.EpochFeed` made, used and closed inside the epoch's clock

It prints each setup's median epoch time and its ratio to `reused`: `feed / reused` is the
whole cost of the feed, including work that lands inside the steps. `archbench train` makes
each epoch's feed while the previous epoch's test split is evaluated, so its data wait in
`metrics.jsonl` (the time the loop blocks for a batch) is less than this. Exit status 2 on bad
input.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import jax
import numpy as np

from archbench.errors import UserError
from archbench.text import format_table
from archbench.train import data, feed, recipes
from archbench.train.fit import initial_state, load_splits
from archbench.train.steps import jit_train_step

SETUPS = ("reused", "order", "gather", "feed")


def check(recipe: recipes.Recipe, rounds: int, data_dir: str | None = None):
    """(steps per epoch, a row per setup: its median epoch time over `rounds` interleaved
    rounds and the ratio to `reused`)."""
    train, _ = load_splits(recipe, data_dir)
    steps = data.steps_per_epoch(len(train.y), recipe.batch)
    state, _ = initial_state(recipe, train.x, steps * recipe.epochs)
    device_train = feed.on_device(train)
    setups = SETUPS if device_train is not None else ("reused", "feed")  # no gather to time
    if device_train is not None:
        feed.warm_up_gathers(device_train, steps, recipe.batch)
    reused = list(feed.EpochFeed(train, device_train, recipe.batch, seed=0, epoch=0))
    chunk = np.arange(min(steps, feed.CHUNK_STEPS) * recipe.batch, dtype=np.int32)
    chunk = chunk.reshape(-1, recipe.batch)

    def epoch(setup: str, e: int) -> float:
        nonlocal state
        start = time.perf_counter()
        batches, thrown = reused, None
        if setup == "order":
            data.permutation(len(train.y), seed=recipe.seed, epoch=e)
        elif setup == "gather":
            thrown = feed._gather(*device_train, chunk)
        elif setup == "feed":
            batches = feed.EpochFeed(train, device_train, recipe.batch, seed=recipe.seed, epoch=e)
        for batch in batches:
            state, metrics = jit_train_step(state, batch)
        if setup == "feed":
            batches.close()
        del batches, thrown  # the thrown chunk is freed here, as the feed frees its own
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    for setup in setups:  # compile and warm up
        epoch(setup, 0)
    times: dict[str, list[float]] = {s: [] for s in setups}
    for e in range(1, rounds + 1):
        for setup in random.sample(setups, len(setups)):
            times[setup].append(epoch(setup, e))
    floor = statistics.median(times["reused"])
    return steps, [
        {
            "setup": s,
            "epoch_ms": f"{1e3 * statistics.median(times[s]):.3f}",
            "vs_reused": f"{statistics.median(times[s]) / floor:.3f}",
        }
        for s in setups
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m archbench.checks.feed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("recipe", nargs="?", default="mlp-mnist1d", help="a recipe name")
    parser.add_argument("--rounds", type=int, default=100, help="epochs of each setup (100)")
    parser.add_argument("--data-dir", help="as `archbench train --data-dir`")
    args = parser.parse_args(argv)
    try:
        if args.rounds < 1:
            raise UserError(f"--rounds must be at least 1, not {args.rounds}")
        recipe = recipes.get(args.recipe)
        jax.config.update("jax_default_prng_impl", "rbg")  # as the CLI
        steps, rows = check(recipe, args.rounds, args.data_dir)
    except UserError as e:
        print(f"check_feed: error: {e}", file=sys.stderr)
        return 2
    print(
        f"{recipe.name}: {steps} steps an epoch, batch {recipe.batch}, {args.rounds} rounds, "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    )
    print(format_table(rows, ["setup", "epoch_ms", "vs_reused"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
