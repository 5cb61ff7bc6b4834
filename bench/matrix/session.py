"""The benchmark matrix under pytest: how one cell is timed, and where results go.

The matrix is the pytest-benchmark suite `test_matrix.py` beside this file; `conftest.py`
beside it adds the selection options (archbench.matrix.cells) and registers `MatrixSession`:

- `measure_request(benchmark, request, target_s)` times one cell with
  `benchmark.pedantic(prepared.run_round, ...)` and returns its metrics for `extra_info`. It
  never raises for a failing model: the failure is its status ("oom" or "error").
- `MatrixSession` rewrites the results file after every cell (archbench.matrix.results), skips
  cells already measured when resuming, and draws the progress bar.

In a multi-process job (archbench.engine.distributed) every process runs every cell and every
step alike, or the collectives would deadlock: process 0's clock plans the rounds and its
results file says which cells are done; only process 0 writes the file and prints.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from datetime import UTC, datetime

import pytest

from archbench import units
from archbench.engine import distributed, topology
from archbench.engine.cell import Cell
from archbench.engine.run import MAX_ROUNDS, MIN_ROUNDS, plan_rounds, run_cell  # noqa: F401
from archbench.matrix import artifacts, interop, op_roofline, results
from archbench.matrix.artifacts import PROFILE_STEPS

DEFAULT_TARGET_S = 1.5
PROGRESS_EVERY_S = 30  # on a log (stderr not a terminal): a long cell's line this often
WRITE_FAILED = 74  # pytest.main's status when the results file could not be written (EX_IOERR)


# ---- one cell -------------------------------------------------------------------------------


def compile_request(
    benchmark,
    request: Cell,
    device_memory: int | None,
    target=None,
    topology=None,
    hlo_dir=None,
) -> dict:
    """Compile one cell without running it (aot.compile_only) into `benchmark`'s extra_info.

    Batch "auto" is the largest that fits `device_memory` (found by compiling only), or the
    smallest batch when no memory is given. `target`: the devices of TPU topology `topology`
    to compile for (archbench.engine.topology); None: this host's. `hlo_dir`: save the
    compiled step's HLO there (archbench.matrix.artifacts).
    """
    info = run_cell(
        request,
        compile_only=True,
        device_memory=device_memory,
        target=target,
        on_compiled=_hlo_writer(hlo_dir),
    )
    if topology is not None:
        info["target_topology"] = topology
    benchmark.extra_info.update(info)
    return info


def measure_request(
    benchmark, request: Cell, target_s: float, profile_dir=None, hlo_dir=None, progress=None
) -> dict:
    """Measure one cell into the pytest-benchmark fixture `benchmark` (engine.run.run_cell).

    Resolves batch "auto" (autobatch.find_max_batch), prepares the cell (build, lower and
    compile ahead of time), warms up and calibrates steps_per_round (Prepared.calibrate),
    times one probe round, then runs
    `benchmark.pedantic(prepared.run_round, rounds=R, iterations=1, warmup_rounds=0)` with
    R rounds filling about `target_s`, and summarises the round times; pytest-benchmark's
    stats are then made per step (interop.per_step_stats), as archbench reports. A generate
    cell: pytest-benchmark times whole generations (prefill and gen_len decode steps; its
    stats are per generation), and the record comes from the generation's own timers.
    `hlo_dir`: the compiled programs' HLO is saved there; `profile_dir`: a few more steps are
    traced there, after the summary (archbench.matrix.artifacts), so the profiler never
    touches a timing. `progress(text)`: how far a long generation has got.

    Returns:
      The cell's metrics, also stored in `benchmark.extra_info`: measure.summarize's dict
      (status "ok"), or measure.failure's (status "oom" or "error" with a one-line "error").
      It never raises for a failing model; only KeyboardInterrupt and the like propagate.
    """
    profile, on_compiled, programs = None, _hlo_writer(hlo_dir), {}
    if profile_dir is not None:

        def profile(cell, step, steps=artifacts.PROFILE_STEPS):
            return artifacts.trace(profile_dir, cell.id, step, steps)

        def on_compiled(cell, compiled, program):  # the step's HLO, for op_roofline
            programs[program] = compiled.as_text() or ""
            return artifacts.write_hlo(hlo_dir, cell.id, compiled, program)

    info = run_cell(
        request,
        target_s=target_s,
        timer=_pedantic(benchmark),
        agree=distributed.agreed,
        on_compiled=on_compiled,
        profile=profile,
        progress=progress,
    )
    if info.get("perfetto_trace") and info.get("mode") != "generate" and "" in programs:
        info.update(
            op_roofline.write(
                info["profile_dir"], programs[""], info["perfetto_trace"], info, PROFILE_STEPS
            )
        )
    benchmark.extra_info.update(info)
    return info


def _pedantic(benchmark):
    """run_cell's timer: pytest-benchmark's pedantic runs the rounds; their times, per step."""

    def timer(run_round, rounds: int, steps_per_round: int | None):
        benchmark.pedantic(run_round, rounds=rounds, iterations=1, warmup_rounds=0)
        if steps_per_round is None:  # generations keep their own times
            return None
        if benchmark.enabled:
            round_times = list(benchmark.stats.stats.data)
            interop.per_step_stats(benchmark.stats, steps_per_round)
            return round_times
        # --benchmark-disable: pedantic ran one untimed round; time one more here
        start = time.perf_counter()
        run_round()
        return [time.perf_counter() - start]

    return timer


def _hlo_writer(hlo_dir):
    def write(cell, compiled, program):
        return artifacts.write_hlo(hlo_dir, cell.id, compiled, program)

    return write


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
      out: the results file, or None to write none (plain `pytest bench/matrix/test_matrix.py`);
        only process 0 of a multi-process job reads or writes it.
      resume: skip cells already in `out` with status ok; failed ones run again.
      target_s: seconds of timed rounds per cell.
      progress: draw a tqdm bar on stderr (a line per cell when stderr is not a terminal) and
        report failures as one line each.
      compile_only: compile each cell from abstract arguments instead of timing it.
      device_memory: bytes of one device; compiled cells say whether they fit it.
      target_topology: compile for this TPU topology's devices ("v5e:2x2"); its chips' memory
        is the default device_memory.
      profile_dir, dump_hlo: folders for each cell's profiler trace and its compiled HLO
        (archbench.matrix.artifacts); None: none written.
    """

    def __init__(
        self,
        config,
        out=None,
        resume=False,
        target_s=DEFAULT_TARGET_S,
        progress=False,
        compile_only=False,
        device_memory=None,
        target_topology=None,
        profile_dir=None,
        dump_hlo=None,
    ):
        self.config = config
        self.profile_dir, self.hlo_dir = profile_dir, dump_hlo
        self.main = distributed.is_main()  # the others write nothing and stay quiet
        self.out = out if self.main else None
        self.target_s = target_s
        self.compile_only = compile_only
        self.topology = target_topology
        self.target = topology.devices(target_topology) if target_topology else None
        if device_memory is None and self.target is not None:
            device_memory = topology.device_memory(self.target)
        self.device_memory = device_memory
        self.progress = progress and self.main
        self.bar = None
        self.total = 0
        self.rows: dict[str, dict] = {}
        self.header: dict | None = None
        self.started = datetime.now(UTC).isoformat()
        self.measured = 0
        self.notes: list[str] = []
        self.write_error: str | None = None  # why the results file could not be written
        existing = results.check_out_file(self.out) if self.out else None
        self.earlier_xla_options = {}  # machine_info["xla_options"] of the processes before
        if existing and resume:
            interop.stats_per_step(existing)  # a file from before per-step stats: one unit
            info = existing.get("machine_info") or {}
            self.earlier_xla_options = dict(info.get("xla_options") or {})
            self.rows = {row_key(r): r for r in existing["benchmarks"]}
            self.started = existing[results.MARKER].get("started", self.started)
        done = sorted(k for k, r in self.rows.items() if results.is_ok(r))
        self.done = set(distributed.agreed(done))  # process 0's file decides for all

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
        if self.out and self.measured and self.write_error is None:
            try:
                self.write(complete=exitstatus == pytest.ExitCode.OK)
            except results.WriteError as e:
                self.write_error = str(e)
        if self.write_error is not None:  # one line, as archbench's errors are (run: exit 2)
            resume = " (--resume continues it)" if os.path.isfile(self.out) else ""
            print(
                f"archbench: error: {self.write_error}; the matrix stopped{resume}", file=sys.stderr
            )
            session.exitstatus = WRITE_FAILED

    # -- results

    def record(self, benchmark, info: dict) -> None:
        """Add one measured (or failed) cell and rewrite the results file."""
        distributed.check_peers(f"at {info.get('cell_id')}")  # a lost peer is no cell's failure
        row = benchmark_row(benchmark)
        self.rows[row_key(row)] = row
        self.measured += 1
        status = info.get("status")
        if self.progress and self.bar is None:  # stderr is a log, not a terminal: a line a cell
            said = {
                "ok": f"ok, {units.seconds(info.get('step_time_s'))} per step",
                "compiled": f"compiled, {units.nbytes(info.get('compiled_bytes'))} per device"
                + fit(info),
            }.get(status, status)
            self.notes.append(
                f"archbench {self.measured}/{self.total} {info.get('cell_id')}: {said}"
            )
        if status not in ("ok", "compiled"):
            self.notes.append(f"{info.get('cell_id')}: {status}: {info.get('error')}")
        if info.get("profile_error"):  # the timings stand; only the trace is missing
            self.notes.append(f"{info.get('cell_id')}: no profile: {info['profile_error']}")
        if info.get("op_roofline_error"):  # the trace stands; only its per-op list is missing
            self.notes.append(f"{info.get('cell_id')}: no op roofline: {info['op_roofline_error']}")
        if self.out:
            try:
                self.write()
            except results.WriteError as e:  # a full disk: stop here (said at session finish)
                self.write_error = str(e)
                pytest.exit(self.write_error, returncode=WRITE_FAILED)

    def write(self, complete: bool = False) -> None:
        if not (self.main and self.out):  # process 0 alone writes the results file
            return
        if self.header is None:
            self.header = self._header()
        doc = {**self.header, "datetime": datetime.now(UTC).isoformat()}
        doc["benchmarks"] = list(self.rows.values())
        doc[results.MARKER] = results.marker(
            started=self.started,
            updated=doc["datetime"],
            target_s=self.target_s,
            complete=complete,
            split=self.config.getoption("split"),  # "K/N": a shard of one matrix, or None
        )
        results.write_atomic(self.out, results.dump_results(doc))

    def _header(self) -> dict:
        hook = self.config.hook
        machine_info = hook.pytest_benchmark_generate_machine_info(config=self.config)
        hook.pytest_benchmark_update_machine_info(config=self.config, machine_info=machine_info)
        if self.earlier_xla_options:  # each `--xla-options` set ran in a process of its own
            mine = machine_info.get("xla_options") or {}
            machine_info["xla_options"] = {**self.earlier_xla_options, **mine}
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

    def cell_progress(self, cell_id: str):
        """A progress(text) for the cell in flight: the bar's description on a terminal, else
        a line on stderr every PROGRESS_EVERY_S seconds. Both are written past pytest's capture
        of the running test, which holds file descriptor 2 as well as sys.stderr (so neither
        the bar's stream nor sys.__stderr__ reached the terminal until the cell was done)."""
        last = [time.perf_counter()]
        capture = self.config.pluginmanager.getplugin("capturemanager")

        def progress(text: str) -> None:
            if self.bar is None:
                if not self.progress or time.perf_counter() - last[0] < PROGRESS_EVERY_S:
                    return
                last[0] = time.perf_counter()
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                if self.bar is not None:
                    self.bar.set_description_str(f"{cell_id}: {text}")
                else:
                    print(f"archbench {cell_id}: {text}", file=sys.stderr, flush=True)

        return progress

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.progress:
            print(text, file=sys.stderr)


def fit(info: dict) -> str:
    """', fits 80 GiB' or ', does not fit 80 GiB' for a compiled cell given a device's memory."""
    if info.get("fits") is None:
        return ""
    memory = units.nbytes(info.get("device_memory_bytes"))
    return f", fits {memory}" if info["fits"] else f", does not fit {memory}"


def _param_id(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.id if callspec else None
