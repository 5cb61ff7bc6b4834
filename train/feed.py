"""The training loop's data feed: device batches in the order of `train.data.batches`.

A split small enough is put on the device once and each epoch's batches are gathered there;
a larger one streams from the host through a background thread (`Prefetcher`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import jax
import numpy as np


class Prefetcher:
    """Device batches of `iterator`, put on the device by a background thread `depth` ahead.

    The loop's wait for a batch is then the time `next` blocks: nothing when the thread keeps
    ahead of the train step. Batches keep the iterator's order.
    """

    _END = object()

    def __init__(self, iterator: Iterator[dict], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
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
                if not self._put(jax.device_put(batch)):
                    return
            self._put(self._END)
        except BaseException as e:  # raised again in the consumer's thread
            self._put(e)

    def next(self) -> dict | None:
        """The next batch, on the device and ready; None at the end of the iterator."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return None if item is self._END else jax.block_until_ready(item)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# A split smaller than this is put on the device once and each epoch's batches are gathered
# there (one gather per CHUNK steps): no host copy or transfer per step. Larger splits stream
# through a Prefetcher.
DEVICE_SPLIT_MAX_BYTES = 1 << 30
CHUNK_STEPS = 64


@jax.jit
def _gather(x: jax.Array, y: jax.Array, index: jax.Array) -> tuple[dict, ...]:
    """K batches {"x": (B, ...), "y": (B, ...)} for index (K, B), as K separate arrays each:
    taking a batch is then a tuple lookup, not an indexing op dispatched per step."""
    return tuple({"x": x[i], "y": y[i]} for i in index)


def on_device(split):
    """The split's arrays on the device, or None if it is too large (or not plain arrays)."""
    if not isinstance(split.x, np.ndarray) or split.x.nbytes > DEVICE_SPLIT_MAX_BYTES:
        return None
    return jax.device_put((split.x, split.y))


def epoch_batches(split, device_split, batch_size: int, *, seed: int, epoch: int):
    """The device batches of one training epoch, in the order of `data.batches`.

    Args:
      split: the split (host arrays).
      device_split: `on_device(split)`, or None to stream host batches through a Prefetcher.
      batch_size, seed, epoch: as `data.batches` (which drops the remainder).
    Yields:
      {"x", "y"} on the device.
    """
    from train import data  # late: `archbench train --list` does not need TFDS

    if device_split is None:
        feed = Prefetcher(data.batches(split, batch_size, seed=seed, epoch=epoch))
        try:
            while (batch := feed.next()) is not None:
                yield batch
        finally:
            feed.close()
        return
    steps = data.steps_per_epoch(len(split.y), batch_size)
    order = data.permutation(len(split.y), seed=seed, epoch=epoch)
    index = order[: steps * batch_size].reshape(steps, batch_size)
    for start in range(0, steps, CHUNK_STEPS):
        yield from _gather(*device_split, index[start : start + CHUNK_STEPS])  # dispatched


def warm_up_gathers(device_split, steps: int, batch_size: int) -> None:
    """Compile the gathers of the two chunk shapes one epoch of `steps` steps uses."""
    index = np.zeros((steps, batch_size), np.int32)
    for k in {min(steps, CHUNK_STEPS), steps % CHUNK_STEPS} - {0}:
        jax.block_until_ready(_gather(*device_split, index[:k]))
