"""train.data: the IDX builder on small IDX files written here, catalog loads under
`tfds.testing.mock_data`, errors, batches, MNIST-1D, chars, synthetic data and transforms."""

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from archbench.archs import InputSpec, UserError
from archbench.train import data, idx_builder, local_data

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache and no dataset directories from the environment."""
    monkeypatch.setenv("ARCHBENCH_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    for source in idx_builder.SOURCES.values():
        monkeypatch.delenv(source.env, raising=False)
    return tmp_path / "cache"


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_dataset(directory: Path, sizes=(30, 10), gz=True, seed=0) -> dict:
    """Four IDX files of random 28x28 images; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    arrays = {}
    for split, n in zip(("train", "test"), sizes, strict=True):
        prefix = idx_builder.SPLIT_PREFIX[split]
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
        arrays[split] = (images, labels)
    return arrays


def forbid_prepare(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the dataset was prepared again")

    monkeypatch.setattr(idx_builder.IdxImages, "download_and_prepare", fail)


# ---- the IDX builder ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_idx_round_trip_is_prepared_once_then_reused(tmp_path, cache, monkeypatch, gz):
    arrays = write_dataset(tmp_path / "src", gz=gz)
    for split, (images, labels) in arrays.items():
        s = data.load("mnist", split, data_dir=tmp_path / "src")
        assert s.x.shape == (len(labels), 28, 28, 1) and s.x.dtype == np.float32
        assert s.y.dtype == np.int32
        np.testing.assert_array_equal(s.y, labels)  # in the IDX file's order
        np.testing.assert_array_equal(np.rint(s.x[..., 0] * 255).astype(np.uint8), images)
    prepared = cache / "tfds" / "idx_images" / "mnist" / "1.0.0"
    assert any(prepared.glob("*.array_record*"))

    forbid_prepare(monkeypatch)
    for npz in prepared.glob("arrays-*.npz"):  # read the array_record shards again
        npz.unlink()
    again = data.load("mnist", "train", data_dir=tmp_path / "src")
    np.testing.assert_array_equal(again.y, arrays["train"][1])
    # The prepared data serves without its source, through the environment variable too.
    monkeypatch.setenv("ARCHBENCH_MNIST_DIR", str(tmp_path / "gone"))
    assert len(data.load("mnist", "test")) == len(arrays["test"][1])


def test_changed_idx_files_are_prepared_again(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHBENCH_KMNIST_DIR", str(tmp_path / "src"))
    write_dataset(tmp_path / "src", sizes=(12, 4), seed=1)
    first = data.load("kmnist", "test")
    new = write_dataset(tmp_path / "src", sizes=(12, 5), seed=2)
    second = data.load("kmnist", "test")
    assert len(first) == 4
    np.testing.assert_array_equal(second.y, new["test"][1])


def _bad_magic(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[2] = 0x0D  # float data, not unsigned bytes
    path.write_bytes(gzip.compress(bytes(raw)))


def _truncated_data(path: Path) -> None:
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-7]))


def _truncated_gzip(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-20])


@pytest.mark.parametrize("corrupt", [_bad_magic, _truncated_data, _truncated_gzip])
def test_corrupt_idx_file_names_the_path(tmp_path, corrupt):
    write_dataset(tmp_path / "src", sizes=(4, 2))
    bad = tmp_path / "src" / "t10k-images-idx3-ubyte.gz"
    corrupt(bad)
    with pytest.raises(UserError, match="corrupt IDX file") as error:
        data.load("fashion_mnist", "train", data_dir=tmp_path / "src")
    assert str(bad) in str(error.value) and "\n" not in str(error.value)


def test_missing_directory_says_how_to_get_the_data(tmp_path):
    with pytest.raises(UserError) as error:
        data.load("fashion_mnist", "train", data_dir=tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere") in message and "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(UserError, match=r"ARCHBENCH_MNIST_DIR is not set"):
        data.load("mnist", "train")


def test_missing_idx_file_is_named(tmp_path):
    write_dataset(tmp_path / "src", sizes=(4, 2))
    (tmp_path / "src" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte"):
        data.load("mnist", "test", data_dir=tmp_path / "src")


def test_unknown_dataset_or_split_lists_the_valid_ones():
    with pytest.raises(UserError) as error:
        data.load("fashon_mnist", "train")
    assert all(name in str(error.value) for name in data.DATASETS)
    with pytest.raises(UserError, match="train, test"):
        data.load("mnist1d", "validation")


# ---- TFDS catalog ------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(data, "_network_reachable", lambda *a, **k: False)


def test_catalog_dataset_through_mock_data(monkeypatch, cache, offline):
    tfds = pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.core.data_sources import base

    # mock_data mocks the data source's __getitem__ properly, but sets __getitems__ as a plain
    # MagicMock attribute that is called without `self` (tfds 4.9.10): read item by item.
    monkeypatch.setattr(
        base.BaseDataSource, "__getitems__", lambda self, keys: [self[k] for k in keys]
    )
    with tfds.testing.mock_data(num_examples=12):
        s = data.load("tfds:mnist", "train")
        also = data.load("cifar10", "test")  # a catalog name not in DATASETS: the fallback
    assert s.x.shape == (12, 28, 28, 1) and s.x.dtype == np.float32
    assert s.x.min() >= 0 and s.x.max() <= 1
    assert s.y.dtype == np.int32 and set(s.y) <= set(range(10))
    assert also.x.shape == (12, 32, 32, 3)
    assert not (cache / "arrays").exists()  # mock data is never cached


def test_catalog_dataset_offline_and_unprepared_is_one_line(offline, tmp_path):
    with pytest.raises(UserError) as error:
        data.load("tfds:mnist", "train", data_dir=tmp_path / "tfds")
    message = str(error.value)
    assert "offline" in message and str(tmp_path / "tfds") in message and "\n" not in message


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (ModuleNotFoundError("No module named 'importlib_resources'"), "pip install"),
        (ModuleNotFoundError("In <Image>:\nNo module named 'tensorflow'"), "needs TensorFlow"),
        (ConnectionError("Max retries exceeded\nwith url"), "Max retries exceeded"),
    ],
)
def test_catalog_prepare_failures_are_one_line(monkeypatch, tmp_path, error, hint):
    tfds = pytest.importorskip("tensorflow_datasets")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(data, "_network_reachable", lambda *a, **k: True)
    monkeypatch.setattr(tfds, "data_source", fail)
    with pytest.raises(UserError, match=hint) as raised:
        data.load("tfds:mnist", "train", data_dir=tmp_path)
    assert "\n" not in str(raised.value)


# ---- batches -----------------------------------------------------------------------------------


def _numbered(n: int) -> data.ArraySplit:
    return data.ArraySplit(
        np.arange(n, dtype=np.float32)[:, None] * 10, np.arange(n, dtype=np.int32)
    )


def test_batches_depend_on_seed_and_epoch_and_cover_each_example_once():
    split = _numbered(103)
    epoch = lambda **kw: [b["y"] for b in data.batches(split, 10, **kw)]  # noqa: E731
    first = epoch(seed=1, epoch=0)
    assert len(first) == data.steps_per_epoch(103, 10) == 10
    assert all(len(b) == 10 for b in first)
    assert len(np.unique(np.concatenate(first))) == 100  # 3 dropped, none repeated
    assert [b.tolist() for b in epoch(seed=1, epoch=0)] == [b.tolist() for b in first]
    assert np.concatenate(epoch(seed=1, epoch=1)).tolist() != np.concatenate(first).tolist()
    assert np.concatenate(epoch(seed=2, epoch=0)).tolist() != np.concatenate(first).tolist()
    every = epoch(seed=1, epoch=0, drop_remainder=False)
    assert sorted(np.concatenate(every).tolist()) == list(range(103)) and len(every[-1]) == 3
    ordered = np.concatenate(epoch(seed=1, epoch=0, shuffle=False, drop_remainder=False))
    assert ordered.tolist() == list(range(103))
    resumed = epoch(seed=1, epoch=0, start=4)
    assert [b.tolist() for b in resumed] == [b.tolist() for b in first[4:]]
    batch = next(data.batches(split, 10, seed=1, epoch=0))
    np.testing.assert_array_equal(batch["x"][:, 0], batch["y"] * 10)  # x and y stay paired


def test_batch_larger_than_split_is_an_error():
    with pytest.raises(UserError, match="batch size 20"):
        next(data.batches(_numbered(5), 20, seed=0, epoch=0))


# ---- MNIST-1D and chars ------------------------------------------------------------------------


def test_mnist1d_is_generated_and_cached(monkeypatch):
    np.random.seed(123)
    random.seed(123)
    before = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    monkeypatch.setattr(local_data, "MNIST1D_SAMPLES", 200)  # the paper's 5000 take ~5 s
    train, test = data.load("mnist1d", "train"), data.load("mnist1d", "test")
    assert (np.random.random(), random.random()) == before  # global generators untouched
    assert train.x.shape == (160, 40, 1) and test.x.shape == (40, 40, 1)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int32
    assert set(train.y) <= set(range(10))

    def fail(*args):
        raise AssertionError("generated again")

    monkeypatch.setattr(local_data, "make_mnist1d", fail)
    np.testing.assert_array_equal(data.load("mnist1d", "train").x, train.x)


def test_text_windows_shift_by_one(tmp_path):
    text = bytes(range(32, 127)) * 3
    (tmp_path / "t.txt").write_bytes(text)
    train = data.load_text(tmp_path / "t.txt", "train", seq_len=8)
    test = data.load("chars", "test", data_dir=tmp_path / "t.txt", seq_len=8)
    cut = int(len(text) * 0.9)
    assert train.x.shape == ((cut - 1) // 8, 8) and train.x.dtype == train.y.dtype == np.int32
    np.testing.assert_array_equal(train.y[:, :-1], train.x[:, 1:])
    np.testing.assert_array_equal(train.y[:-1, -1], train.x[1:, 0])
    assert bytes(train.x.ravel().astype(np.uint8)) == text[: train.x.size]
    assert bytes(test.x[0].astype(np.uint8)) == text[cut : cut + 8]


def test_stdlib_corpus_is_deterministic(monkeypatch):
    monkeypatch.setattr(local_data, "STDLIB_CORPUS_BYTES", 50_000)
    corpus = local_data.stdlib_corpus(50_000)
    assert len(corpus) == 50_000 and corpus == local_data.stdlib_corpus(50_000)
    split = data.load("chars", "train", seq_len=64)
    assert split.x.shape == ((45_000 - 1) // 64, 64)
    assert bytes(split.x[0].astype(np.uint8)) == corpus[:64]
    assert data.DATASETS["chars"].input.vocab_size == 256


# ---- synthetic data and transforms -------------------------------------------------------------

SPECS = {
    "image": (InputSpec("image", (8, 8, 3)), "classify", 5),
    "sequence": (InputSpec("sequence", (12, 4)), "classify", 3),
    "tokens": (InputSpec("tokens", (16,), vocab_size=50), "lm", 50),
    "seq2seq": (InputSpec("seq2seq", (6, 7), vocab_size=20), "seq2seq", 20),
}


@pytest.mark.parametrize("kind", SPECS)
def test_synthetic_fits_the_spec(kind):
    spec, task, outputs = SPECS[kind]
    s = data.synthetic(spec, task, outputs, 40, seed=3)
    if kind == "seq2seq":
        assert {k: v.shape for k, v in s.x.items()} == {"src": (40, 6), "tgt": (40, 7)}
        assert all(v.dtype == np.int32 for v in s.x.values())
    else:
        assert s.x.shape == (40, *spec.shape)
        assert s.x.dtype == (np.int32 if kind == "tokens" else np.float32)
    assert s.y.dtype == np.int32 and s.y.min() >= 0 and s.y.max() < outputs
    assert s.y.shape == ((40,) if task == "classify" else (40, spec.tokens_per_example))
    again = data.synthetic(spec, task, outputs, 40, seed=3)
    np.testing.assert_array_equal(again.y, s.y)
    batch = next(data.batches(s, 8, seed=0, epoch=0))
    assert len(batch["y"]) == 8


def test_pad_rows_and_standardize():
    s = data.ArraySplit(np.ones((3, 28, 28, 1), np.float32), np.zeros(3, np.int32))
    padded = data.pad_to(s, 32)
    assert padded.x.shape == (3, 32, 32, 1) and padded.x[:, 2:30, 2:30].all()
    assert padded.x[:, :2].sum() == 0 and padded.x[:, :, 30:].sum() == 0
    assert data.rows(s).x.shape == (3, 28, 28)
    mean, std = data.mean_std(padded)
    z = data.standardize(padded, mean, std)
    assert z.x.dtype == np.float32 and abs(float(z.x.mean())) < 1e-5
    with pytest.raises(UserError):
        data.pad_to(s, 20)


# ---- real data ---------------------------------------------------------------------------------


needs_debian = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason=f"no {DEBIAN_FASHION_MNIST}: `apt-get install dataset-fashion-mnist` installs it",
)


@needs_debian
def test_real_fashion_mnist_idx_files():
    train_x, train_y = idx_builder.read_split(DEBIAN_FASHION_MNIST, "train")
    test_x, test_y = idx_builder.read_split(DEBIAN_FASHION_MNIST, "test")
    assert train_x.shape == (60000, 28, 28, 1) and test_x.shape == (10000, 28, 28, 1)
    assert train_y.min() == 0 and train_y.max() == 9
    assert np.bincount(test_y).tolist() == [1000] * 10
    assert train_y[:5].tolist() == [9, 0, 0, 3, 0]  # the published file's first labels


@pytest.mark.slow
@needs_debian
def test_real_fashion_mnist_through_tfds(monkeypatch):
    # The user's cache, not a temporary one (undo the autouse fixture): the first run prepares
    # the 70k images (~30 s on 2 CPU cores) and reads them into .npz arrays (~15 s); later
    # runs load in about a second.
    monkeypatch.undo()
    train, test = data.load("fashion_mnist", "train"), data.load("fashion_mnist", "test")
    assert train.x.shape == (60000, 28, 28, 1) and test.x.shape == (10000, 28, 28, 1)
    assert train.y.min() == 0 and train.y.max() == 9
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert 0.285 < data.mean_std(train)[0] < 0.287  # 0.2860, the published mean
