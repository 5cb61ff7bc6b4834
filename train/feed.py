"""The training loop's data feed: device batches in the order of `train.data.batches`.

A split small enough is put on the device once and each epoch's batches are gathered there;
a larger one streams from the host through a background thread (`Prefetcher`).

On several devices every batch is placed with a batch sharding (a `jax.sharding.NamedSharding`
splitting its leading axis over the mesh, `engine.sharding.Layout.batch`): a split kept on the
devices is held whole on each of them and every device gathers only its rows of each batch.
`sharding=None` is one device, the default one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


class Prefetcher:
    """Device batches of `iterator`, put on the device by a background thread `depth` ahead.

    The loop's wait for a batch is then the time `next` blocks: nothing when the thread keeps
    ahead of the train step. Batches keep the iterator's order.
    """

    _END = object()

    def __init__(self, iterator: Iterator[dict], depth: int = 2, sharding=None):
        self._sharding = sharding
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._fill, args=(iterator,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, iterator: Iterator[dict]) -> None:
        try:
            for batch in iterator:
                if not self._put(place(batch, self._sharding)):
                    return
            self._put(self._END)
        except BaseException as e:  # raised again in the consumer's thread
            self._put(e)

    def next(self) -> dict | None:
        """The next batch, on the device and ready; None at the end of the iterator (and on
        every call after it, or after its error was raised: the thread has put its last item)."""
        if self._ended:
            return None
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        if item is self._END:
            self._ended = True
            return None
        return jax.block_until_ready(item)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# A split smaller than this is put on the device once and each epoch's batches are gathered
# there (one gather per CHUNK steps): no host copy or transfer per step. Larger splits stream
# through a Prefetcher.
DEVICE_SPLIT_MAX_BYTES = 1 << 30
CHUNK_STEPS = 64


def batch_shards(sharding: NamedSharding | None) -> int:
    """How many pieces `sharding` splits a batch's leading axis into (1 for None)."""
    if sharding is None:
        return 1
    n = len(sharding.device_set)
    return n // sharding.shard_shape((n,))[0]


def replicated(sharding: NamedSharding) -> NamedSharding:
    """Every array whole on each device of `sharding`'s mesh."""
    return NamedSharding(sharding.mesh, P())


def place(batch: dict, sharding: NamedSharding | None) -> dict:
    """`batch` (host arrays) on the devices: split by `sharding`, or whole on each of its
    devices when its shards do not divide the batch (an evaluation's last batch); None: the
    default device."""
    if sharding is not None and len(batch["y"]) % batch_shards(sharding):
        sharding = replicated(sharding)
    return jax.device_put(batch, sharding)


def _gather_batches(x: jax.Array, y: jax.Array, index: jax.Array) -> tuple[dict, ...]:
    """K batches {"x": (B, ...), "y": (B, ...)} for index (K, B), as K separate arrays each:
    taking a batch is then a tuple lookup, not an indexing op dispatched per step."""
    return tuple({"x": x[i], "y": y[i]} for i in index)


_gather = jax.jit(_gather_batches)
_SHARDED_GATHERS: dict[NamedSharding, Callable] = {}


def _gatherer(sharding: NamedSharding | None) -> Callable:
    """The jitted gather whose batches come out with `sharding` (None: the default device)."""
    if sharding is None:
        return _gather
    if sharding not in _SHARDED_GATHERS:
        _SHARDED_GATHERS[sharding] = jax.jit(_gather_batches, out_shardings=sharding)
    return _SHARDED_GATHERS[sharding]


def on_device(split, sharding: NamedSharding | None = None):
    """The split's arrays on the device (whole on each device of `sharding`'s mesh), or None
    if it is too large (or not plain arrays)."""
    if not isinstance(split.x, np.ndarray) or split.x.nbytes > DEVICE_SPLIT_MAX_BYTES:
        return None
    return jax.device_put((split.x, split.y), None if sharding is None else replicated(sharding))


class EpochFeed:
    """The device batches of one training epoch, in the order of `data.batches`.

    Making one starts the epoch's data work at once: the permutation and the gather of the
    first chunk, dispatched on the device, or the prefetch thread. `fit` makes the next
    epoch's feed while the device evaluates the test split, so an epoch's first step finds
    its batch under way; `prep_s` is the host time making it took. Iterate it for the batches.
    Close it after the epoch's clock stops: that frees the last chunk's arrays (or stops the
    thread).

    Args:
      split: the split (host arrays).
      device_split: `on_device(split)`, or None to stream host batches through a Prefetcher.
      batch_size, seed, epoch: as `data.batches` (which drops the remainder).
      sharding: the batches' sharding (`device_split` must then be `on_device(split, sharding)`),
        or None for the default device.
    """

    def __init__(
        self, split, device_split, batch_size: int, *, seed: int, epoch: int, sharding=None
    ):
        from archbench.train import data  # late: `archbench train --list` does not need TFDS

        start = time.perf_counter()
        self._prefetcher: Prefetcher | None = None
        self._held: tuple = ()  # the chunk of device batches being consumed
        self._next = 0  # the position in it of the next batch
        self._chunks: list[np.ndarray] = []  # index (K, B) of the chunks not yet gathered
        if device_split is None:
            batches = data.batches(split, batch_size, seed=seed, epoch=epoch)
            self._prefetcher = Prefetcher(batches, sharding=sharding)
        else:
            steps = data.steps_per_epoch(len(split.y), batch_size)
            order = data.permutation(len(split.y), seed=seed, epoch=epoch)
            index = order[: steps * batch_size].reshape(steps, batch_size)
            self._device_split = device_split
            self._gather = _gatherer(sharding)
            self._chunks = [
                index[s : s + CHUNK_STEPS] for s in range(CHUNK_STEPS, steps, CHUNK_STEPS)
            ]
            self._chunks.reverse()  # popped from the end
            self._held = self._gather(*device_split, index[:CHUNK_STEPS])  # dispatched
        self.prep_s = time.perf_counter() - start

    def __iter__(self) -> EpochFeed:
        return self

    def __next__(self) -> dict:
        if self._prefetcher is not None:
            if (batch := self._prefetcher.next()) is None:
                raise StopIteration
            return batch
        if self._next == len(self._held):
            if not self._chunks:
                raise StopIteration  # the chunk stays held until close()
            self._held, self._next = self._gather(*self._device_split, self._chunks.pop()), 0
        batch = self._held[self._next]
        self._next += 1
        return batch

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
        self._held, self._chunks = (), []


def warm_up_gathers(device_split, steps: int, batch_size: int, sharding=None) -> None:
    """Compile the gathers of the two chunk shapes one epoch of `steps` steps uses."""
    index = np.zeros((steps, batch_size), np.int32)
    for k in {min(steps, CHUNK_STEPS), steps % CHUNK_STEPS} - {0}:
        jax.block_until_ready(_gatherer(sharding)(*device_split, index[:k]))
