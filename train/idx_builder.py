"""MNIST-format IDX files on disk, prepared once into a TFDS array_record dataset.

`IdxImages` is a `tfds.core.GeneratorBasedBuilder` with one config per dataset
(fashion_mnist, mnist, kmnist). It reads the four IDX files (gzipped or not) from a directory
that is already on disk (TFDS's "manual dir") and writes array_record shards into a TFDS data
dir; `tfds` reads them back with `as_data_source` (random access, no TensorFlow). Images are
stored as raw uint8 tensors, not PNG: TFDS encodes `tfds.features.Image` with
`tf.image.encode_png`, which needs TensorFlow.

File format (http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero bytes, a type
byte (0x08 = unsigned byte), the number of dimensions, one uint32 per dimension, then the data.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from archbench.errors import UserError

SPLIT_PREFIX = {"train": "train", "test": "t10k"}  # file prefix of each split
IMAGE_SHAPE = (28, 28, 1)
_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxSource:
    """Where one IDX dataset comes from and how to get it."""

    title: str
    env: str  # environment variable naming its directory
    default_dir: str | None  # where a system package installs it, if one does
    get: str  # one line: how to obtain the files
    labels: tuple[str, ...]
    homepage: str
    citation: str


# fmt: off
FASHION_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# fmt: on

SOURCES: dict[str, IdxSource] = {
    "fashion_mnist": IdxSource(
        title="Fashion-MNIST (Xiao et al. 2017)",
        env="ARCHBENCH_FASHION_MNIST_DIR",
        default_dir="/usr/share/datasets/fashion-mnist",
        get="`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the 4 IDX files "
        "from https://github.com/zalandoresearch/fashion-mnist in a directory and set "
        "ARCHBENCH_FASHION_MNIST_DIR",
        labels=FASHION_LABELS,
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        citation="Xiao, Rasul, Vollgraf. Fashion-MNIST. arXiv:1708.07747, 2017.",
    ),
    "mnist": IdxSource(
        title="MNIST (LeCun et al. 1998)",
        env="ARCHBENCH_MNIST_DIR",
        default_dir=None,
        get="put the 4 IDX files of http://yann.lecun.com/exdb/mnist/ (or a mirror) in a "
        "directory and set ARCHBENCH_MNIST_DIR",
        labels=tuple(str(d) for d in range(10)),
        homepage="http://yann.lecun.com/exdb/mnist/",
        citation="LeCun, Bottou, Bengio, Haffner. Gradient-based learning applied to "
        "document recognition. Proc. IEEE, 1998.",
    ),
    "kmnist": IdxSource(
        title="Kuzushiji-MNIST (Clanuwat et al. 2018)",
        env="ARCHBENCH_KMNIST_DIR",
        default_dir=None,
        get="put the 4 MNIST-format files of https://github.com/rois-codh/kmnist in a "
        "directory and set ARCHBENCH_KMNIST_DIR",
        labels=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        homepage="https://github.com/rois-codh/kmnist",
        citation="Clanuwat et al. Deep Learning for Classical Japanese Literature. "
        "arXiv:1812.01718, 2018.",
    ),
}


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array in IDX file `path` (gzipped or not), checked to have `ndim` dims."""
    raw = path.read_bytes()
    try:
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:  # BadGzipFile is an OSError; truncated gzip an EOFError
        raise UserError(f"corrupt IDX file {path}: bad gzip data ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != _UBYTE or raw[3] != ndim:
        raise UserError(
            f"corrupt IDX file {path}: bad magic number {raw[:4].hex() or 'empty'} "
            f"(want 0000{_UBYTE:02x}{ndim:02x}: unsigned bytes, {ndim} dims)"
        )
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4")) if len(raw) >= header else ()
    if len(shape) != ndim or len(raw) - header != int(np.prod(shape)):
        raise UserError(
            f"corrupt IDX file {path}: header says shape {shape}, "
            f"but it holds {max(len(raw) - header, 0)} data bytes (truncated?)"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def idx_files(source_dir: Path, split: str) -> tuple[Path, Path]:
    """The (images, labels) files of `split` in `source_dir`: train-* or t10k-*, .gz or not."""
    prefix = SPLIT_PREFIX[split]
    found = []
    for kind, n in (("images", 3), ("labels", 1)):
        names = [f"{prefix}-{kind}{sep}idx{n}-ubyte{ext}" for sep in "-." for ext in ("", ".gz")]
        path = next((source_dir / m for m in names if (source_dir / m).is_file()), None)
        if path is None:
            raise FileNotFoundError(source_dir / names[1])
        found.append(path)
    return found[0], found[1]


def read_split(source_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) uint8 and labels (N,) uint8 of `split` read from IDX files."""
    images_path, labels_path = idx_files(source_dir, split)
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.shape[1:] != IMAGE_SHAPE[:2]:
        raise UserError(f"{images_path}: images are {images.shape[1:]}, expected {IMAGE_SHAPE[:2]}")
    if len(images) != len(labels):
        raise UserError(f"{labels_path}: {len(labels)} labels for {len(images)} images")
    if labels.size and labels.max() >= 10:
        raise UserError(f"corrupt IDX file {labels_path}: label {labels.max()} is not in 0..9")
    return images[..., None], labels


def fingerprint(source_dir: Path) -> str:
    """SHA-256 over the four IDX files as stored: prepared data is redone when they change."""
    digest = hashlib.sha256()
    for split in SPLIT_PREFIX:
        for path in idx_files(source_dir, split):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


class IdxImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """28x28 grey images with 10 classes from MNIST-format IDX files already on disk."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar = {"1.0.0": "Raw uint8 tensors with the IDX index of each example."}
    BUILDER_CONFIGS: ClassVar = [
        tfds.core.BuilderConfig(name=name, description=source.title)
        for name, source in SOURCES.items()
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "; ".join(f"{n}: {s.get}" for n, s in SOURCES.items())
    # TFDS looks for a checksums file beside a builder's code with `importlib_resources`, which
    # tfds 4.9.10 does not install on Python >= 3.9 (tensorflow/datasets#11212). This builder
    # downloads nothing, so it has no checksums: no code path, no lookup.
    code_path = None

    @property
    def source(self) -> IdxSource:
        return SOURCES[self.builder_config.name]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.source.title}, read from MNIST-format IDX files.",
            features=tfds.features.FeaturesDict(
                {
                    # Tensor, not Image: encoding an Image feature needs TensorFlow.
                    "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=self.source.labels),
                    "index": np.int64,  # position in the IDX file: restores the file order
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.source.homepage,
            citation=self.source.citation,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        source_dir = Path(dl_manager.manual_dir)
        self.info.metadata["source_dir"] = str(source_dir)
        self.info.metadata["source_sha256"] = fingerprint(source_dir)
        return {split: self._generate_examples(source_dir, split) for split in SPLIT_PREFIX}

    def _generate_examples(self, source_dir: Path, split: str):
        images, labels = read_split(source_dir, split)
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i]), "index": i}


def source_dir_for(name: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The IDX directory of `name`: `data_dir`, else $ARCHBENCH_<NAME>_DIR, else the system one."""
    source = SOURCES[name]
    for candidate in (data_dir, os.environ.get(source.env), source.default_dir):
        if candidate:
            return Path(candidate).expanduser()
    return None


def missing_error(name: str, source_dir: Path | None) -> UserError:
    source = SOURCES[name]
    where = f"no IDX files at {source_dir}" if source_dir else f"${source.env} is not set"
    return UserError(f"{name}: {where}; to get the data: {source.get}")


def prepared_builder(name: str, source_dir: Path | None, tfds_dir: Path) -> IdxImages:
    """The builder of `name` in `tfds_dir`, prepared from `source_dir` if not done already.

    Prepared data is reused as long as the IDX files it came from are unchanged (or gone);
    when `source_dir` holds different files, the dataset is prepared again.
    """
    builder = IdxImages(config=name, data_dir=os.fspath(tfds_dir), file_format="array_record")
    have_source = source_dir is not None and source_dir.is_dir()
    if have_source:
        try:
            sha = fingerprint(source_dir)
        except FileNotFoundError as e:
            raise UserError(
                f"{name}: missing IDX file {e.args[0]} (.gz or not); to get the data: "
                f"{SOURCES[name].get}"
            ) from None
    if builder.is_prepared():
        if not have_source or builder.info.metadata.get("source_sha256") == sha:
            return builder
        shutil.rmtree(builder.data_dir)  # the files changed: prepare again
        builder = IdxImages(config=name, data_dir=os.fspath(tfds_dir), file_format="array_record")
    elif not have_source:
        raise missing_error(name, source_dir)
    for split in SPLIT_PREFIX:  # fail on a corrupt file here, not half way through TFDS
        read_split(source_dir, split)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(source_dir))
    )
    return builder
