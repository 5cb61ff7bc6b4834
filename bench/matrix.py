"""The benchmark matrix: which cells to run, how one cell is timed, and where results go.

The matrix is the pytest-benchmark suite `bench/test_matrix.py`; `bench/conftest.py` adds
the selection options and registers `MatrixSession`, and everything they do lives here:

- `select(...)` turns comma lists of filters into `CellRequest`s, checking every value first.
- `measure_request(benchmark, request, target_s)` times one cell with
  `benchmark.pedantic(prepared.run_round, ...)` and returns its metrics for `extra_info`. It
  never raises for a failing model: the failure is its status ("oom" or "error").
- `MatrixSession` rewrites the results file after every cell (see bench/results.py), skips
  cells already measured when resuming, and draws the progress bar.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import jax
import pytest

import archs
from archs import UserError
from bench import measure, results, units

AUTO = "auto"
# The main job (`archbench run` with no filters): every architecture at its CPU size, both
# modes, float32 on one device. Batch 32 is one small-batch point common to every task
# (images, sequences, tokens), so cells compare across families; at 32 the slowest small
# cells (Transformer train) take about a second a step on two CPU cores. With 1.5 s of timed
# rounds per cell, the 24 cells of twelve families took 5.3 CPU-minutes in all (lowering and
# compiling included), well inside the ten minutes the job may take.
DEFAULTS = {"size": "small", "mode": "train,infer", "batch": "32", "dtype": "float32"}
DEFAULT_TARGET_S = 1.5
MIN_ROUNDS = 5  # enough for a median and an interquartile range
MAX_ROUNDS = 1000  # a cap only: calibrated rounds last >= 50 ms, so target_s decides


@dataclass(frozen=True)
class CellRequest:
    """One cell as asked for: batch may still be "auto" (the largest batch that fits)."""

    arch: str
    size: str
    mode: str
    batch: int | str
    dtype: str
    devices: int = 1
    seq_len: int | None = None

    def cell(self, batch: int | None = None) -> measure.Cell:
        fields = asdict(self)
        fields["batch"] = self.batch if batch is None else batch
        return measure.Cell(**fields)

    @property
    def id(self) -> str:
        """The cell's id; for batch "auto" the id with the batch field reading "bauto"."""
        if self.batch != AUTO:
            return self.cell().id
        tail = f"-{self.dtype}-d{self.devices}"
        return self.cell(batch=1).id.replace(f"-b1{tail}", f"-bauto{tail}")


def comma_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _values(option: str, text: str | None, default: str) -> list[str]:
    """The items of a comma list option; `default` when it is not given (None)."""
    values = comma_list(default if text is None else text)
    if text is not None and not values:
        raise UserError(f"{option} {text!r}: no value given")
    return values


def _unknown(what: str, value: str, valid) -> UserError:
    return UserError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _positive_ints(option: str, values: list[str], allow_auto: bool = False) -> list:
    out = []
    for v in values:
        if allow_auto and v == AUTO:
            out.append(AUTO)
            continue
        try:
            n = int(v)
        except ValueError:
            n = 0
        if n <= 0:
            hint = " or 'auto'" if allow_auto else ""
            raise UserError(f"{option} {v!r}: not a positive integer{hint}")
        out.append(n)
    return list(dict.fromkeys(out))


def _arch_names(patterns: list[str]) -> list[str]:
    chosen = []
    for pattern in patterns:
        matched = archs.names(pattern)
        if not matched:
            raise _unknown("architecture", pattern, archs.names())
        chosen.extend(matched)
    return list(dict.fromkeys(chosen))


def _takes_sequences(name: str, size: str) -> bool:
    """Whether (name, size) has a sequence length to vary: any input but an image."""
    return archs.get(name).size(size).input.kind != "image"


def select(
    arch: str | None = None,
    size: str | None = None,
    mode: str | None = None,
    batch: str | None = None,
    dtype: str | None = None,
    devices: str | None = None,
    seq_len: str | None = None,
) -> list[CellRequest]:
    """The cells a set of filters selects, each value checked before anything runs.

    Args:
      arch, size, mode, batch, dtype, devices, seq_len: comma lists as typed on the command
        line; None takes the main job's default (every architecture, `small`, train and
        infer, batch 32, float32, 1 device, each model's own sequence length). Architecture
        names may be wildcards ('resnet*'); batch may be 'auto'. A size applies to the
        selected architectures that have it; a sequence length only to sequence models.
    Returns:
      CellRequests in a stable order: architecture, size, mode, dtype, devices, batch, seq_len.
    Raises:
      UserError (one line, listing the valid choices) for any bad value.
    """
    names = _arch_names(_values("--arch", arch, "*"))
    specs = {n: archs.get(n) for n in names}
    all_sizes = list(dict.fromkeys(s for spec in specs.values() for s in spec.sizes))
    sizes = _values("--size", size, DEFAULTS["size"])
    for s in sizes:
        if s not in all_sizes:
            raise _unknown("size", s, all_sizes)
    modes = _values("--mode", mode, DEFAULTS["mode"])
    for m in modes:
        if m not in measure.MODES:
            raise _unknown("mode", m, measure.MODES)
    dtypes = _values("--dtype", dtype, DEFAULTS["dtype"])
    for d in dtypes:
        if d not in measure.DTYPES:
            raise _unknown("dtype", d, measure.DTYPES)
    batches = _positive_ints("--batch", _values("--batch", batch, DEFAULTS["batch"]), True)
    device_counts = _positive_ints("--devices", _values("--devices", devices, "1"))
    available = jax.device_count()
    for n in device_counts:
        if n > available:
            raise UserError(
                f"--devices {n}: only {available} {jax.default_backend()} device(s) here"
            )
    seq_lens = _positive_ints("--seq-len", _values("--seq-len", seq_len, "")) or [None]

    pairs = [(n, s) for n, spec in specs.items() for s in sizes if s in spec.sizes]
    if not pairs:
        raise UserError(f"no architecture among {', '.join(names)} has size {', '.join(sizes)}")
    if seq_lens != [None] and not any(_takes_sequences(n, s) for n, s in pairs):
        every = [n for n, s in archs.cells(sizes=tuple(sizes)) if _takes_sequences(n, s)]
        raise UserError(
            f"--seq-len applies to sequence models ({', '.join(dict.fromkeys(every))}), "
            f"not to {', '.join(names)} at size {', '.join(sizes)}"
        )
    requests = []
    for name, s in pairs:
        lens = seq_lens if _takes_sequences(name, s) else [None]
        for m in modes:
            for d in dtypes:
                for n in device_counts:
                    for b in batches:
                        for t in lens:
                            requests.append(CellRequest(name, s, m, b, d, n, t))
    for r in requests:  # anything measure itself refuses, before anything runs
        measure.validate(r.cell(batch=r.devices if r.batch == AUTO else None))
    return requests


# ---- one cell -------------------------------------------------------------------------------


def plan_rounds(round_s: float, target_s: float) -> int:
    """Rounds of about `round_s` each that fill about `target_s` (MIN_ROUNDS to MAX_ROUNDS)."""
    return min(max(math.ceil(target_s / max(round_s, 1e-9)), MIN_ROUNDS), MAX_ROUNDS)


def measure_request(benchmark, request: CellRequest, target_s: float) -> dict:
    """Measure one cell into the pytest-benchmark fixture `benchmark`.

    Resolves batch "auto" (measure.find_max_batch), prepares the cell (build, lower and
    compile ahead of time), warms up and calibrates steps_per_round (Prepared.calibrate),
    times one probe round, then runs
    `benchmark.pedantic(prepared.run_round, rounds=R, iterations=1, warmup_rounds=0)` with
    R rounds filling about `target_s`, and summarises the round times.

    Returns:
      The cell's metrics, also stored in `benchmark.extra_info`: measure.summarize's dict
      (status "ok"), or measure.failure's (status "oom" or "error" with a one-line "error").
      It never raises for a failing model; only KeyboardInterrupt and the like propagate.
    """
    cell = request.cell(batch=request.devices if request.batch == AUTO else None)
    prepared = None
    try:
        if request.batch == AUTO:
            cell = request.cell(batch=measure.find_max_batch(cell))
        prepared = measure.prepare(cell)
        prepared.calibrate(warmup=1)  # a warm-up round; rounds of at least 50 ms
        start = time.perf_counter()
        prepared.run_round()  # the second warm-up round, timed to plan the rounds
        rounds = plan_rounds(time.perf_counter() - start, target_s)
        benchmark.pedantic(prepared.run_round, rounds=rounds, iterations=1, warmup_rounds=0)
        if benchmark.enabled:
            round_times = list(benchmark.stats.stats.data)
        else:  # --benchmark-disable: pedantic ran one untimed round; time one more here
            start = time.perf_counter()
            prepared.run_round()
            round_times = [time.perf_counter() - start]
        info = measure.summarize(cell, prepared, round_times)
    except Exception as e:
        info = measure.failure(cell, e)
    finally:
        prepared = None
        gc.collect()  # free this cell's buffers before the next one compiles
    if request.batch == AUTO:
        info["batch_request"] = AUTO
    benchmark.extra_info.update(info)
    return info


def benchmark_row(benchmark) -> dict:
    """The cell's benchmarks[] entry as pytest-benchmark writes it; stats None if untimed."""
    metadata = benchmark.stats
    timed = benchmark.extra_info.get("status") == "ok" and metadata and metadata.stats.data
    if timed:
        return metadata.as_dict(include_data=True)
    return {
        "group": benchmark.group,
        "name": benchmark.name,
        "fullname": benchmark.fullname,
        "params": benchmark.params,
        "param": benchmark.param,
        "extra_info": benchmark.extra_info,
        "options": {},
        "stats": None,
    }


def row_key(row: dict) -> str | None:
    """What resume matches on: the requested cell id (pytest's parameter id)."""
    return row.get("param") or (row.get("extra_info") or {}).get("cell_id")


# ---- the session ----------------------------------------------------------------------------


class MatrixSession:
    """pytest plugin: resume, the results file rewritten after every cell, the progress bar.

    Args:
      config: the pytest config.
      out: the results file, or None to write none (plain `pytest bench/`).
      resume: skip cells already in `out` with status ok; failed ones run again.
      target_s: seconds of timed rounds per cell.
      progress: draw a tqdm bar on stderr (a line per cell when stderr is not a terminal) and
        report failures as one line each.
    """

    def __init__(self, config, out=None, resume=False, target_s=DEFAULT_TARGET_S, progress=False):
        self.config = config
        self.out = out
        self.target_s = target_s
        self.progress = progress
        self.bar = None
        self.total = 0
        self.rows: dict[str, dict] = {}
        self.header: dict | None = None
        self.started = datetime.now(UTC).isoformat()
        self.measured = 0
        self.notes: list[str] = []
        existing = results.check_out_file(out) if out else None
        if existing and resume:
            self.rows = {row_key(r): r for r in existing["benchmarks"]}
            self.started = existing[results.MARKER].get("started", self.started)
        self.done = {k for k, r in self.rows.items() if results.is_ok(r)}

    # -- pytest hooks

    def pytest_collection_modifyitems(self, session, config, items):
        skipped = [i for i in items if _param_id(i) in self.done]
        if skipped:
            items[:] = [i for i in items if _param_id(i) not in self.done]
            config.hook.pytest_deselected(items=skipped)
            self._say(f"archbench: resume: {len(skipped)} cell(s) already in {self.out}, skipped")

    def pytest_collection_finish(self, session):
        self.total = len(session.items)
        if self.progress and session.items and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=len(session.items),
                file=sys.stderr,
                unit="cell",
                dynamic_ncols=True,
                bar_format="archbench {n}/{total} cells |{bar}| {elapsed}<{remaining}  {desc}",
            )

    def pytest_runtest_logstart(self, nodeid, location):
        if self.bar is not None:
            self.bar.set_description_str(nodeid.rpartition("[")[2].rstrip("]"))

    def pytest_runtest_logreport(self, report):
        if self.progress and report.failed:
            self._say(f"{report.nodeid} {report.when} failed:\n{report.longreprtext}")
        if report.when == "teardown":
            for text in self.notes:  # said here: inside the test, pytest captures stderr
                self._say(text)
            self.notes.clear()
            if self.bar is not None:
                self.bar.update(1)

    def pytest_collectreport(self, report):
        if self.progress and report.failed:
            self._say(f"collecting {report.nodeid} failed:\n{report.longreprtext}")

    def pytest_sessionfinish(self, session, exitstatus):
        if self.bar is not None:
            self.bar.set_description_str("")
            self.bar.close()
        if self.out and self.measured:
            self.write(complete=exitstatus == pytest.ExitCode.OK)

    # -- results

    def record(self, benchmark, info: dict) -> None:
        """Add one measured (or failed) cell and rewrite the results file."""
        row = benchmark_row(benchmark)
        self.rows[row_key(row)] = row
        self.measured += 1
        status = info.get("status")
        if self.progress and self.bar is None:  # stderr is a log, not a terminal: a line a cell
            said = (
                f"ok, {units.seconds(info.get('step_time_s'))} per step"
                if status == "ok"
                else status
            )
            self.notes.append(
                f"archbench {self.measured}/{self.total} {info.get('cell_id')}: {said}"
            )
        if status != "ok":
            self.notes.append(f"{info.get('cell_id')}: {status}: {info.get('error')}")
        if self.out:
            self.write()

    def write(self, complete: bool = False) -> None:
        if self.header is None:
            self.header = self._header()
        doc = {**self.header, "datetime": datetime.now(UTC).isoformat()}
        doc["benchmarks"] = list(self.rows.values())
        doc[results.MARKER] = results.marker(
            started=self.started,
            updated=doc["datetime"],
            target_s=self.target_s,
            complete=complete,
        )
        results.write_atomic(self.out, results.dump_results(doc))

    def _header(self) -> dict:
        hook = self.config.hook
        machine_info = hook.pytest_benchmark_generate_machine_info(config=self.config)
        hook.pytest_benchmark_update_machine_info(config=self.config, machine_info=machine_info)
        commit_info = hook.pytest_benchmark_generate_commit_info(config=self.config)
        hook.pytest_benchmark_update_commit_info(config=self.config, commit_info=commit_info)
        doc = hook.pytest_benchmark_generate_json(
            config=self.config,
            benchmarks=[],
            include_data=True,
            machine_info=machine_info,
            commit_info=commit_info,
        )
        hook.pytest_benchmark_update_json(config=self.config, benchmarks=[], output_json=doc)
        return doc

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.progress:
            print(text, file=sys.stderr)


def _param_id(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.id if callspec else None
