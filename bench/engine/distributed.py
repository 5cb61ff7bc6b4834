"""Several processes as one job, as the engine and the matrix see it: who writes, and what all
of them agree on.

A multi-process job is joined before anything touches a JAX device (archbench.cli.processes,
behind `archbench run --coordinator ...`). After that every process must run the same steps in
the same order, or the collectives deadlock: what depends on one process's clock or files is
decided by process 0 and shared with `agreed` (a results file's finished cells; `calibrate`'s
round times). With one process every function here is a no-op or an identity.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

# Where `check_peers` speaks: None for stderr as Python started with it. archbench's supervisor
# (archbench.cli.processes) sets its child's own stderr here, out of reach of pytest's capture.
console = None


def is_main() -> bool:
    """Whether this is process 0: the one that reads and writes results files and prints."""
    return jax.process_index() == 0


def agreed(value):
    """Process 0's `value` (JSON-serialisable), returned on every process; all must call it.

    With one process it is `value` itself, and no JAX computation runs.
    """
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_main() else None
    length = int(multihost_utils.broadcast_one_to_all(np.int32(0 if data is None else data.size)))
    padded = np.zeros(max(256, 1 << (length - 1).bit_length()), np.uint8)  # few distinct shapes
    if data is not None:
        padded[: data.size] = data
    out = np.asarray(multihost_utils.broadcast_one_to_all(padded))
    return json.loads(out[:length].tobytes().decode())


def check_peers(where: str = "") -> None:
    """End this process in one line (exit status 2) if a peer process is gone; all must call it.

    A peer that dies makes the next collective fail at once ("connection closed by peer"), a
    failure that is not the cell's: this stops before it is recorded, keeping the results file
    as it was after the last finished cell. (JAX's runtime would abort the survivors anyway
    once the dead peer's heartbeats are missed.)
    """
    if jax.process_count() == 1:
        return
    try:
        agreed(None)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        print(
            f"archbench: error: process {jax.process_index()} of {jax.process_count()}: "
            f"a peer process is gone{' ' + where if where else ''} ({first})",
            file=console or sys.__stderr__,
            flush=True,
        )
        os._exit(2)  # the job cannot go on; unwinding would only wait on the dead peer
