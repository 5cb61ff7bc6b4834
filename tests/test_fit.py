"""The fit loop, checkpoints and resume, NaN detection, recipes and `archbench train`.

The loop runs on tiny synthetic data (a tiny MLP on 8x8 inputs, labelled by the sign of a
sum of pixels), so each fit compiles in about a second.
"""

from __future__ import annotations

import gzip
import json
import struct
import threading
from dataclasses import replace

import jax
import numpy as np
import pytest

from archbench.archs.registry import UserError
from archbench.cli.main import main
from archbench.train import data as data_module
from archbench.train import feed as feed_module
from archbench.train import fit as fit_module
from archbench.train import recipes
from archbench.train.checkpoint import Checkpoints
from archbench.train.fit import fit, load_state
from archbench.train.loop import LOG_KEYS, TrainingDiverged
from archbench.train.recipes import Constant, Optimizer, Recipe

N_TRAIN, N_TEST, BATCH = 96, 40, 16  # 6 steps per epoch; the test split has a remainder batch


def _synthetic(data, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    return data.ArraySplit(x, (x[:, :4].sum((1, 2, 3)) > 0).astype(np.int32))  # 2 classes


@pytest.fixture
def data(monkeypatch):
    """train.data with `load` serving the "toy" dataset."""
    real_load = data_module.load

    def load(name, split, *, data_dir=None):
        if name == "toy":
            return _synthetic(data_module, N_TRAIN if split == "train" else N_TEST, split == "test")
        return real_load(name, split, data_dir=data_dir)

    monkeypatch.setattr(data_module, "load", load)
    return data_module


def toy_recipe(name="toy-mlp", **changes) -> Recipe:
    recipe = Recipe(
        name=name,
        arch="mlp",
        size="tiny",
        dataset="toy",
        optimizer=Optimizer("sgd", {"momentum": 0.9}),
        schedule=Constant(0.05),
        epochs=2,
        batch=BATCH,
        expected=(0.0, 1.0),
        source="a test",
        overrides={"dropout": 0.1},  # the dropout key must survive a resume too
        eval_batch=16,
        log_every=4,
    )
    return replace(recipe, **changes)


def _lines(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("feed", ["device", "streamed"])
def test_fit_logs_jsonl_and_checkpoints(data, tmp_path, monkeypatch, feed):
    if feed == "streamed":
        monkeypatch.setattr(feed_module, "DEVICE_SPLIT_MAX_BYTES", 0)
    final = fit(toy_recipe(), out_dir=tmp_path, progress=False)
    lines = _lines(tmp_path)
    assert all(set(LOG_KEYS) <= line.keys() for line in lines)
    steps = [line for line in lines if line["kind"] == "step"]
    epochs = [(line["epoch"], line["split"]) for line in lines if line["kind"] == "epoch"]
    assert [s["step"] for s in steps] == [4, 6, 8, 12]  # every 4 steps and at each epoch's end
    assert epochs == [(1, "train"), (1, "test"), (2, "train"), (2, "test")]
    assert all(line["lr"] == pytest.approx(0.05) for line in lines)
    train_line = next(line for line in lines if line["kind"] == "epoch")
    assert 0 <= train_line["data_stall_frac"] <= train_line["data_wait_frac"] < 1
    assert train_line["compile_s"] > 0
    assert final["epoch"] == 2 and final["step"] == 12 and final["metric"] == "accuracy"
    assert final["value"] == lines[-1]["accuracy"] > 0.6  # above chance (0.5)
    assert json.loads((tmp_path / "final.json").read_text()) == final
    with Checkpoints(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_epoch() == 2
        meta = ckpt.meta(2)
    assert meta["recipe"] == "toy-mlp" and meta["config"]["epochs"] == 2


def test_eval_covers_the_whole_test_split(data):
    from archbench.train.fit import initial_state
    from archbench.train.loop import evaluate

    split = _synthetic(data, N_TEST, 1)
    state, _ = initial_state(toy_recipe(), split.x, 1)
    ev = evaluate(state, split, 16)  # 16 + 16 + 8
    ev_one = evaluate(state, split, N_TEST)
    assert ev["examples"] == N_TEST
    assert ev["loss"] == pytest.approx(ev_one["loss"], rel=1e-5)
    assert ev["accuracy"] == pytest.approx(ev_one["accuracy"])


def _within_seconds(call, seconds: float = 10.0):
    """call()'s result; fails (instead of hanging the suite) if it blocks for `seconds`."""
    out = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"{call} still blocked after {seconds} s"
    return out[0]


def test_prefetcher_keeps_order_and_reraises():
    from archbench.train.feed import Prefetcher

    def gen():
        for i in range(5):
            yield {"x": np.full(2, i)}
        raise UserError("bad batch")

    p = Prefetcher(gen(), depth=2)
    assert [int(p.next()["x"][0]) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="bad batch"):
        p.next()
    assert _within_seconds(p.next) is None  # ended: a further call returns, never blocks
    p.close()
    p = Prefetcher(iter([{"x": np.zeros(1)}]), depth=1)
    assert p.next() is not None and p.next() is None
    assert _within_seconds(p.next) is None
    p.close()
    p = Prefetcher(iter([{"x": np.zeros(1)}] * 10), depth=1)  # closed before it is drained
    p.next()
    p.close()


@pytest.mark.parametrize("chunk_steps", [64, 2])  # one chunk an epoch; a second gathered mid-way
def test_device_and_streamed_batches_equal_data_batches(data, monkeypatch, chunk_steps):
    monkeypatch.setattr(feed_module, "CHUNK_STEPS", chunk_steps)
    split = _synthetic(data, 50, 0)
    want = list(data.batches(split, 16, seed=3, epoch=2))
    for device_split in (feed_module.on_device(split), None):
        feed = feed_module.EpochFeed(split, device_split, 16, seed=3, epoch=2)
        got = list(feed)
        assert _within_seconds(lambda f=feed: next(f, None)) is None  # stays exhausted
        feed.close()
        assert len(got) == len(want) == 3
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(np.asarray(g["x"]), w["x"])
            np.testing.assert_array_equal(np.asarray(g["y"]), w["y"])


class Killed(Exception):
    pass


@pytest.mark.parametrize("feed", ["device", "streamed"])
def test_resume_equals_an_unbroken_run(data, tmp_path, monkeypatch, feed):
    if feed == "streamed":
        monkeypatch.setattr(feed_module, "DEVICE_SPLIT_MAX_BYTES", 0)
    recipe = toy_recipe(epochs=3)
    fit(recipe, out_dir=tmp_path / "straight", progress=False)

    save = Checkpoints.save

    def save_then_die(self, epoch, state, meta):
        save(self, epoch, state, meta)
        if epoch == 2:
            raise Killed  # as if the process were killed right after the checkpoint

    monkeypatch.setattr(Checkpoints, "save", save_then_die)
    with pytest.raises(Killed):
        fit(recipe, out_dir=tmp_path / "broken", progress=False)
    monkeypatch.setattr(Checkpoints, "save", save)
    final = fit(recipe, out_dir=tmp_path / "broken", resume=True, progress=False)

    a = load_state(recipe, tmp_path / "straight")
    b = load_state(recipe, tmp_path / "broken")
    assert int(a.step) == int(b.step) == final["step"] == 18
    for x, y in zip(jax.tree.leaves((a.params, a.opt_state)), jax.tree.leaves((b.params, b.opt_state)), strict=True):  # fmt: skip
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
    assert (jax.random.key_data(a.dropout_key) == jax.random.key_data(b.dropout_key)).all()

    def losses(lines):
        return [(x["kind"], x["step"], x["split"], x["loss"], x["accuracy"]) for x in lines]

    # The resumed log has each line once, the same values as the unbroken one.
    assert losses(_lines(tmp_path / "broken")) == losses(_lines(tmp_path / "straight"))


def test_nan_stops_at_the_step_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    class Poisoned(feed_module.EpochFeed):
        def __init__(self, *args, epoch, **kw):
            super().__init__(*args, epoch=epoch, **kw)
            self.epoch, self.taken = epoch, 0

        def __next__(self):
            batch = super().__next__()
            self.taken += 1
            if self.epoch == 2 and self.taken == 3:  # the 9th step of the run
                batch = {**batch, "x": batch["x"] * np.nan}
            return batch

    monkeypatch.setattr(fit_module, "EpochFeed", Poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 9 \(epoch 2\)") as err:
        fit(toy_recipe(epochs=3), out_dir=tmp_path, progress=False)
    assert "last good checkpoint: epoch 1" in str(err.value) and "\n" not in str(err.value)
    with Checkpoints(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_epoch() == 1
    assert np.isfinite(jax.tree.leaves(load_state(toy_recipe(), tmp_path).params)[0]).all()


def test_huge_learning_rate_diverges_with_a_clear_error(data, tmp_path):
    recipe = toy_recipe(schedule=Constant(1e30))
    with pytest.raises(TrainingDiverged, match=r"at step \d+ \(epoch 1\).*none written"):
        fit(recipe, out_dir=tmp_path, progress=False)


def test_run_directories_are_not_mixed_up(data, tmp_path):
    fit(toy_recipe(epochs=1), out_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match="holds a run of recipe 'toy-mlp', not 'other'"):
        fit(toy_recipe(name="other"), out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(UserError, match="pass --resume"):
        fit(toy_recipe(epochs=1), out_dir=tmp_path, progress=False)
    with pytest.raises(UserError, match="other settings"):
        fit(toy_recipe(batch=8), out_dir=tmp_path, resume=True, progress=False)
    # Resuming a finished run trains nothing and gives its result again.
    again = fit(toy_recipe(epochs=1), out_dir=tmp_path, resume=True, progress=False)
    assert again["epoch"] == 1


def _write_idx(directory, prefix: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = struct.pack(">4B3I", 0, 0, 8, 3, n, 28, 28) + rng.bytes(n * 28 * 28)
    labels = struct.pack(">4BI", 0, 0, 8, 1, n) + bytes(rng.integers(0, 10, n).tolist())
    (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def test_one_step_end_to_end_from_idx_files(tmp_path, monkeypatch):
    """A real recipe's data path (IDX files -> TFDS array_record -> arrays -> pad to 32x32)
    and one train step of LeNet-5, offline.

    Tiny IDX files go through the real TFDS preparation (the project's IDX builder does not
    go through `tfds.testing.mock_data`, which redirects builders to a mock data dir); the
    next test covers the catalog path under mock_data.
    """
    idx = tmp_path / "idx"
    idx.mkdir()
    _write_idx(idx, "train", 8, 0)
    _write_idx(idx, "t10k", 3, 1)
    monkeypatch.setenv("ARCHBENCH_FASHION_MNIST_DIR", str(idx))
    monkeypatch.setenv("ARCHBENCH_DATA_DIR", str(tmp_path / "cache"))
    recipe = replace(recipes.get("lenet5-fashion"), size="tiny", epochs=1, batch=8, eval_batch=2)
    final = fit(recipe, out_dir=tmp_path / "run", progress=False)
    assert final["step"] == 1 and np.isfinite(final["test_loss"])
    test = next(x for x in _lines(tmp_path / "run") if x["split"] == "test")
    assert test["examples_per_s"] > 0 and test["accuracy"] in (0, 1 / 3, 2 / 3, 1)


def test_one_step_end_to_end_under_tfds_mock_data(tmp_path, monkeypatch):
    """A catalog dataset served by `tfds.testing.mock_data` through the real loader and fit."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core.data_sources import base

    # tfds 4.9.10's mock sets __getitems__ as an attribute called without `self`: read item by
    # item, as test_data.py does.
    monkeypatch.setattr(
        base.BaseDataSource, "__getitems__", lambda self, keys: [self[k] for k in keys]
    )
    monkeypatch.setenv("ARCHBENCH_DATA_DIR", str(tmp_path / "cache"))
    recipe = toy_recipe(name="mock-mnist", dataset="tfds:mnist", epochs=1, batch=8, eval_batch=4)
    with tfds.testing.mock_data(num_examples=8):
        final = fit(recipe, out_dir=tmp_path / "run", progress=False)
    assert final["step"] == 1 and np.isfinite(final["test_loss"])
    splits = {line["split"] for line in _lines(tmp_path / "run")}
    assert splits == {"train", "test"}


@pytest.fixture
def cli_recipes(data, monkeypatch):
    for recipe in (
        toy_recipe(epochs=1),
        toy_recipe(name="toy-unreachable", epochs=1, expected=(2.0, 3.0)),
        toy_recipe(name="toy-other", epochs=1),
    ):
        monkeypatch.setitem(recipes.RECIPES, recipe.name, recipe)


def test_cli_check_exit_codes(cli_recipes, tmp_path, capsys):
    args = ["--no-progress", "--check"]
    assert main(["train", "toy-mlp", "--out", str(tmp_path / "a"), *args]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "within the expected 0.0-100.0%" in out[0]
    assert main(["train", "toy-unreachable", "--out", str(tmp_path / "b"), *args]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "OUTSIDE the expected 200.0-300.0%" in out[0]


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_user_errors_are_one_line(cli_recipes, tmp_path, capsys):
    err = _one_line_error(["train", "nosuch"], capsys)
    assert "unknown recipe 'nosuch'" in err and "lenet5-fashion" in err
    assert "--list" in _one_line_error(["train"], capsys)
    assert main(["train", "toy-mlp", "--out", str(tmp_path), "--no-progress"]) == 0
    capsys.readouterr()
    argv = ["train", "toy-other", "--out", str(tmp_path), "--resume", "--no-progress"]
    assert "holds a run of recipe 'toy-mlp'" in _one_line_error(argv, capsys)
    assert "at least 1" in _one_line_error(["train", "toy-mlp", "--epochs", "0"], capsys)


def test_cli_seed_reaches_the_run(cli_recipes, tmp_path, capsys):
    """--seed replaces the recipe's: another seed is another run (its config says so, and
    resuming it from a run of the recipe's own seed is refused)."""
    base = ["train", "toy-mlp", "--no-progress", "--epochs", "1"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--seed", "7"]) == 0
    capsys.readouterr()
    seeds = []
    for d in "ab":
        with Checkpoints(tmp_path / d / "checkpoints") as ckpt:
            seeds.append(ckpt.meta(ckpt.latest_epoch())["config"]["seed"])
    assert seeds == [recipes.get("toy-mlp").seed, 7]
    argv = [*base, "--out", str(tmp_path / "a"), "--resume", "--seed", "7"]
    assert "seed" in _one_line_error(argv, capsys)


def test_cli_list(capsys):
    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    for name in recipes.names():
        assert name in out
    assert main(["train", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["recipe"] for r in rows} == set(recipes.RECIPES)


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_recipes_are_well_formed(name):
    recipe = recipes.get(name)
    total = recipe.epochs * 100
    schedule = recipe.schedule(total)
    assert all(np.isfinite(float(schedule(s))) and float(schedule(s)) >= 0 for s in (0, total))
    recipe.optimizer(schedule)  # builds
    json.dumps(recipe.config())
    lo, hi = recipe.expected
    assert 0 <= lo <= hi <= (1 if recipe.metric == "accuracy" else 8)
    assert recipe.source


@pytest.mark.parametrize("feed", ["device", "streamed"])
def test_check_feed_times_every_setup_against_reused_batches(
    cli_recipes, monkeypatch, capsys, feed
):
    from archbench.checks import feed as check_feed

    if feed == "streamed":  # a split too large for the device: only reused and feed apply
        monkeypatch.setattr(feed_module, "DEVICE_SPLIT_MAX_BYTES", 0)
    assert check_feed.main(["toy-mlp", "--rounds", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"toy-mlp: {N_TRAIN // BATCH} steps an epoch, batch {BATCH}")
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
    want = check_feed.SETUPS if feed == "device" else ("reused", "feed")
    assert tuple(rows) == want and rows["reused"][1] == "1.000"
    assert all(float(ms) > 0 for ms, _ in rows.values())


def test_check_feed_bad_input_is_one_line(capsys):
    from archbench.checks import feed as check_feed

    assert check_feed.main(["no-such-recipe"]) == 2
    assert check_feed.main(["mlp-mnist1d", "--rounds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("check_feed: error:") for line in err)
    assert "valid: " in err[0]
