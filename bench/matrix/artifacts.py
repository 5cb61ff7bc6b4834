"""Files a run writes beside its results on request: optimized HLO text and profiler traces.

- `--dump-hlo DIR`: DIR/<cell_id>.hlo.txt, the optimized HLO of the compiled step
  (`compiled.as_text()`, after XLA's passes, partitioned per device), written as soon as it
  is compiled, so that two runs' programs can be diffed. A generate cell has two programs:
  DIR/<cell_id>.prefill.hlo.txt and DIR/<cell_id>.decode.hlo.txt.
- `--profile DIR`: DIR/<cell_id>/, a `jax.profiler` trace of a few steady-state steps taken
  after the timed rounds (so the timings never include the profiler): the XSpace protobuf
  under plugins/profile/<run>/ that XProf and TensorBoard's profile plugin read, and a
  Perfetto trace (perfetto_trace.json.gz) that https://ui.perfetto.dev opens as is.

The record keeps absolute paths (archbench.engine.outcome.ARTIFACT_KEYS), so the report links
them wherever it is written. Only process 0 of a multi-process job writes HLO; every process
traces the same steps (their collectives must match), the others into process-<i>/ subfolders.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from archbench.engine import distributed
from archbench.errors import UserError
from archbench.matrix import results

PROFILE_STEPS = 3  # steps of a train or infer cell in its trace; a generate cell: one generation
PERFETTO_NAME = "perfetto_trace.json.gz"


def hlo_path(root: str | Path, cell_id: str, program: str = "") -> Path:
    """Where `--dump-hlo root` puts a cell's program: <root>/<cell_id>[.<program>].hlo.txt."""
    return Path(root).absolute() / f"{cell_id}{'.' + program if program else ''}.hlo.txt"


def write_hlo(root: str | Path | None, cell_id: str, compiled, program: str = "") -> str | None:
    """Write the optimized HLO of `compiled` (a jax.stages.Compiled); its path, or None when
    `root` is None or this is not process 0."""
    if root is None or not distributed.is_main():
        return None
    path = hlo_path(root, cell_id, program)
    results.write_atomic(path, compiled.as_text() or "")
    return str(path)


def trace(root: str | Path, cell_id: str, step, steps: int = PROFILE_STEPS) -> dict:
    """Run `step()` `steps` times under jax.profiler.trace into <root>/<cell_id>/ and block
    on the last output, so the trace holds the steps' device work.

    Returns:
      {"profile_dir": the trace directory, "perfetto_trace": its Perfetto file or None}, or
      {"profile_error": one line} when the profiler fails: the cell's timings stand.
    """
    logdir = Path(root).absolute() / cell_id
    if jax.process_index() > 0:
        logdir = logdir / f"process-{jax.process_index()}"
    try:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            out = None
            for _ in range(steps):
                out = step()
            jax.block_until_ready(out)
    except Exception as e:  # e.g. a profiler session some other code left running
        first = (str(e).strip().splitlines() or [""])[0]
        return {"profile_error": f"{type(e).__name__}: {first}"[:300]}
    # each trace is a timestamped run folder; a resumed cell's older ones stay beside it
    found = sorted(
        logdir.glob(f"plugins/profile/*/{PERFETTO_NAME}"), key=lambda p: p.stat().st_mtime
    )
    return {"profile_dir": str(logdir), "perfetto_trace": str(found[-1]) if found else None}


def check_dir(option: str, path: str | None) -> None:
    """Create the folder `path` for `option` (--profile, --dump-hlo) before anything runs;
    UserError when it cannot be (a file of that name, no permission)."""
    if path is None:
        return
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{option} {path}: a file of that name exists; give a folder") from None
    except OSError as e:
        raise UserError(f"{option} {path}: cannot create the folder ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{option} {path}: the folder is not writable")
