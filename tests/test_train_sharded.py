"""Training on several devices, and checkpoints restored onto another device count.

One subprocess with four simulated CPU devices trains two epochs of mlp-mnist1d (the real
recipe and data, every step logged) on one device, data-parallel on two (the batches streamed
through the prefetch thread) and fully sharded on two (the batches gathered on the devices),
the global batch always the recipe's 100. The fsdp run is killed right after its epoch-1
checkpoint; the test restores that checkpoint onto one device and onto four (fsdp), and
resumes the run on one device and on four. Each sharded run is checked against the
one-device run: its per-step losses to float32 tolerance (the sum over the batch is only
reassociated), its test accuracy within one point (the issue's bar).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from archbench.cli.main import main
from tests import xla_flags

SCRIPT = textwrap.dedent(
    """
    import json, shutil, sys
    from dataclasses import replace
    from pathlib import Path

    import jax, numpy as np

    from archbench.archs import UserError
    from archbench.engine import sharding
    from archbench.train import feed, recipes
    from archbench.train.checkpoint import Checkpoints, state_tree
    from archbench.train.fit import fit, load_splits, load_state

    root = Path(sys.argv[1])
    # Every step logged; a checkpoint every epoch; test batches of 250, which split over two
    # devices but not over four: there each is evaluated whole on every device.
    recipe = replace(
        recipes.get("mlp-mnist1d"), epochs=2, log_every=1, checkpoint_every=1, eval_batch=250
    )
    devices = jax.devices()
    out = {"devices": len(devices)}

    def lines(run):
        text = (root / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in text]

    def layout(strategy, n):
        return sharding.layout(strategy, devices[:n])

    def placed(tree):  # {path: [shard shape, devices]} of every parameter
        leaves = jax.tree_util.tree_leaves_with_path(tree.params)
        return {
            sharding.path_text(p): [list(a.sharding.shard_shape(a.shape)), len(a.sharding.device_set)]
            for p, a in leaves
        }

    class Killed(Exception):
        pass

    save = Checkpoints.save
    saved = {}

    def save_then_die(self, epoch, state, meta):
        save(self, epoch, state, meta)
        saved["values"] = jax.tree.map(np.asarray, state_tree(state))
        saved["placed"] = placed(state)
        raise Killed  # as if the process were killed right after the epoch-1 checkpoint

    fit(recipe, out_dir=root / "one", progress=False)
    feed.DEVICE_SPLIT_MAX_BYTES = 0  # dp streams its batches through the Prefetcher
    fit(recipe, out_dir=root / "dp2", progress=False, placement=layout("dp", 2))
    feed.DEVICE_SPLIT_MAX_BYTES = 1 << 30
    Checkpoints.save = save_then_die
    try:
        fit(recipe, out_dir=root / "fsdp2", progress=False, placement=layout("fsdp", 2))
    except Killed:
        pass
    Checkpoints.save = save
    out["saved_placed"] = saved["placed"]

    # Batches of both feeds carry the batch sharding: 50 examples on each of two devices.
    train, _ = load_splits(recipe)
    batch_sharding = layout("dp", 2).batch
    gathered = feed.EpochFeed(
        train, feed.on_device(train, batch_sharding), 100, seed=0, epoch=1, sharding=batch_sharding
    )
    streamed = feed.EpochFeed(train, None, 100, seed=0, epoch=1, sharding=batch_sharding)
    out["batch_shards"] = [
        [list(b["x"].sharding.shard_shape(b["x"].shape)), len(b["x"].sharding.device_set)]
        for b in (next(gathered), next(streamed))
    ]
    gathered.close()
    streamed.close()

    # The epoch-1 checkpoint restored onto one device and onto four, fully sharded.
    out["restored"] = {}
    for name, placement in (("one", None), ("fsdp4", layout("fsdp", 4))):
        state = load_state(recipe, root / "fsdp2", placement=placement)
        values = jax.tree.map(np.asarray, state_tree(state))
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), values, saved["values"])
        out["restored"][name] = {
            "max_diff": max(jax.tree.leaves(diffs)),
            "step": int(state.step),
            "placed": placed(state),
        }

    # The killed run resumed on one device and on four.
    for name, placement in (("resume1", None), ("resume4", layout("fsdp", 4))):
        shutil.copytree(root / "fsdp2", root / name)
        fit(recipe, out_dir=root / name, resume=True, progress=False, placement=placement)

    for run in ("one", "dp2", "fsdp2", "resume1", "resume4"):
        out[run] = {
            "steps": [x["loss"] for x in lines(run) if x["kind"] == "step"],
            "test": [x["accuracy"] for x in lines(run) if x["split"] == "test"],
            "devices": [x["devices"] for x in lines(run) if x["split"] == "train" and x["kind"] == "epoch"],
        }

    try:
        fit(recipe, out_dir=root / "three", progress=False, placement=layout("dp", 3))
    except UserError as e:
        out["indivisible"] = str(e)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags.with_devices(4),
    }
    root = tmp_path_factory.mktemp("sharded")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _close(a: list[float], b: list[float], rel: float) -> None:
    assert len(a) == len(b)
    assert a == pytest.approx(b, rel=rel)


def test_sharded_runs_follow_the_one_device_curve(runs):
    one = runs["one"]
    assert runs["devices"] == 4 and len(one["steps"]) == 80 and len(one["test"]) == 2
    assert one["test"][0] > 0.25  # it learns (chance is 0.1) in one epoch
    for name in ("dp2", "fsdp2"):
        run = runs[name]
        # The first steps to float32 tolerance; the whole epoch within a looser one, as the
        # reassociated sums drift apart over 40 Adam steps.
        _close(run["steps"][:5], one["steps"][:5], rel=1e-5)
        _close(run["steps"][:40], one["steps"][:40], rel=1e-3)
        assert abs(run["test"][0] - one["test"][0]) <= 0.01, name
        assert run["devices"][0] == 2
    assert runs["dp2"]["test"][1] == pytest.approx(one["test"][1], abs=0.01)


def test_the_state_and_batches_are_split_over_the_devices(runs):
    # fsdp on two devices: each array split along its largest dimension 2 divides
    saved = runs["saved_placed"]
    assert saved["/Dense_1/kernel"] == [[50, 100], 2]  # (100, 100)
    assert saved["/Dense_0/kernel"] == [[40, 50], 2]  # (40, 100)
    assert saved["/Dense_2/bias"] == [[5], 2]  # (10,)
    # a batch of 100 examples (40, 1): 50 on each device, device-gathered and streamed alike
    assert runs["batch_shards"] == [[[50, 40, 1], 2], [[50, 40, 1], 2]]


def test_a_checkpoint_restores_onto_other_device_counts(runs):
    for name, restored in runs["restored"].items():
        assert restored["max_diff"] == 0.0, name  # the saved values, bit for bit
        assert restored["step"] == 40, name
    one, four = runs["restored"]["one"]["placed"], runs["restored"]["fsdp4"]["placed"]
    assert all(devices == 1 for _, devices in one.values())
    assert one["/Dense_1/kernel"] == [[100, 100], 1]
    assert four["/Dense_1/kernel"] == [[25, 100], 4]  # split four ways now
    assert four["/Dense_0/kernel"] == [[40, 25], 4]
    assert four["/Dense_2/bias"] == [[10], 4]  # 4 does not divide 10: whole on each


def test_a_run_killed_on_two_devices_resumes_on_one_and_on_four(runs):
    one = runs["one"]
    for name, devices in (("resume1", 1), ("resume4", 4)):
        run = runs[name]
        assert run["devices"] == [2, devices], name  # epoch 1 on two devices, epoch 2 here
        assert run["steps"][:40] == runs["fsdp2"]["steps"][:40]  # the kept log
        _close(run["steps"], one["steps"], rel=1e-3)
        assert len(run["test"]) == 2 and abs(run["test"][1] - one["test"][1]) <= 0.01, name
    # From the restored state both continue alike, whatever the device count.
    _close(runs["resume4"]["steps"][40:], runs["resume1"]["steps"][40:], rel=1e-4)


def test_a_batch_the_devices_do_not_divide_is_refused(runs):
    assert runs["indivisible"] == (
        "mlp-mnist1d: batch 100 is not divisible by the 3 batch shards of 3 devices; "
        "use a device count that divides it"
    )


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_bad_devices_and_strategies_are_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path), "--no-progress"]
    err = _one_line_error(["train", "mlp-mnist1d", "--devices", "64", *out], capsys)
    assert "--devices must be 1.." in err and "xla_force_host_platform_device_count" in err
    err = _one_line_error(["train", "mlp-mnist1d", "--devices", "0", *out], capsys)
    assert "--devices must be 1.." in err
    err = _one_line_error(["train", "mlp-mnist1d", "--sharding", "zero", *out], capsys)
    assert "unknown sharding 'zero'" in err and "fsdp" in err
    err = _one_line_error(["train", "mlp-mnist1d", "--mesh", "data=2", *out], capsys)
    assert "multiply to 2" in err
    err = _one_line_error(["train", "gru-mnist1d", "--sharding", "tp", *out], capsys)
    assert "--sharding tp cannot train gru" in err and "names none" in err
