"""Several processes, one JAX job: the options that say how to join it, joining it, and a
supervisor that turns a native abort into one line.

`archbench run` joins a multi-process job (one process per host, or per accelerator) with
`jax.distributed.initialize`, before anything else touches a JAX device. After that,
`jax.devices()` lists the devices of every process, so a cell's mesh of the first N devices
spans processes, and each process computes only the shards that live on its own devices.

- `parse(...)` checks the command line's options: an explicit job (`--coordinator HOST:PORT
  --num-processes N --process-id I`) or `--distributed auto` (JAX finds them under SLURM,
  Open MPI or on a Cloud TPU pod), and `--distributed-timeout`. Bad values: one-line UserError.
- `initialize(job)` joins the job (CPU devices talk through gloo).
- `supervise(work, job)` runs `work` in a child process. A peer that dies or never joins makes
  JAX's distributed runtime abort every other process with a native stack trace; the parent
  turns that into one line on stderr and exit status 2.

What the engine and the matrix need once the job is joined (which process writes, a value all
processes agree on, a lost peer) is archbench.engine.distributed.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import re
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import jax

from archbench.cli.exits import USAGE, guarded
from archbench.engine import distributed
from archbench.errors import UserError

DEFAULT_TIMEOUT_S = 300
HEARTBEAT_S = 100  # JAX's default; a shorter --distributed-timeout shortens it too
AUTO = "auto"
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*")
# what the relay holds back from: a native (absl) log line, "W1203 00:04:45.169875   23272
# file.cc:12] ..." (a fatal error's multi-line report starts with them), or Python's
# faulthandler report (gloo's own abort, "terminate called ... what(): ...", goes there too)
_NATIVE_LOG = re.compile(
    rb"^([IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+:\d+\]|Fatal Python error|terminate called )"
)
# gloo's note on every connection, from several threads at once (so lines may interleave)
_NOISE = re.compile(rb"\[Gloo\] Rank \d+ is connected to|peer ranks\. Expected number of")


@dataclass(frozen=True)
class Job:
    """How this process joins a multi-process job; None fields are found by JAX (auto)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = DEFAULT_TIMEOUT_S

    @property
    def auto(self) -> bool:
        return self.coordinator is None

    def describe(self) -> str:
        return "this process" if self.auto else f"process {self.process_id} of {self.num_processes}"


def add_arguments(group) -> None:
    """The options `parse` reads, on an argparse parser or argument group."""
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address and a port")
    group.add_argument("--num-processes", metavar="N", help="processes in the job")
    group.add_argument("--process-id", metavar="I", help="this process: 0 .. N-1")
    group.add_argument(
        "--distributed",
        metavar=AUTO,
        help="'auto': JAX finds the coordinator, count and id (SLURM, Open MPI, Cloud TPU)",
    )
    group.add_argument(
        "--distributed-timeout",
        metavar="SECONDS",
        help=f"how long a process waits for its peers to join, and for a silent peer before "
        f"giving up (default: {DEFAULT_TIMEOUT_S})",
    )


def _int(option: str, text, minimum: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise UserError(f"{option} {text!r}: not an integer >= {minimum}")
    return value


def parse_coordinator(text: str) -> str:
    """'host:port' checked: a host name, IPv4 or [IPv6] address, and a port 1..65535."""
    host, colon, port = str(text).strip().rpartition(":")
    if not colon or not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"--coordinator {text!r}: expected HOST:PORT, e.g. 10.0.0.1:1234 or node001:1234 "
            "(process 0's address, a free port on it)"
        )
    return f"{host}:{int(port)}"


def parse(
    coordinator: str | None = None,
    num_processes: str | int | None = None,
    process_id: str | int | None = None,
    distributed: str | None = None,
    timeout_s: str | float | None = None,
) -> Job | None:
    """The multi-process job the options ask for, or None for a one-process run.

    Args:
      coordinator, num_processes, process_id: the explicit form; all three or none.
      distributed: "auto" to let JAX find all three (SLURM, Open MPI, Cloud TPU).
      timeout_s: seconds a process waits for its peers (default DEFAULT_TIMEOUT_S).
    Raises:
      UserError (one line) for a bad or inconsistent value.
    """
    explicit = {"--coordinator": coordinator, "--num-processes": num_processes}
    explicit["--process-id"] = process_id
    given = [name for name, value in explicit.items() if value is not None]
    if distributed is not None:
        if distributed != AUTO:
            raise UserError(f"--distributed {distributed!r}: the only value is 'auto'")
        if given:
            raise UserError(
                f"--distributed auto finds the coordinator, process count and id itself; "
                f"drop {', '.join(given)} (or drop --distributed auto)"
            )
    elif given and len(given) < len(explicit):
        missing = [name for name in explicit if name not in given]
        raise UserError(f"{', '.join(given)} also need {', '.join(missing)}")
    elif not given:
        if timeout_s is not None:
            raise UserError(
                "--distributed-timeout applies to a multi-process run "
                "(--coordinator ... or --distributed auto)"
            )
        return None
    timeout = DEFAULT_TIMEOUT_S
    if timeout_s is not None:
        try:
            timeout = math.ceil(float(timeout_s))
        except (TypeError, ValueError, OverflowError):
            timeout = 0
        if not 0 < timeout < 10**7:
            raise UserError(
                f"--distributed-timeout {timeout_s!r}: not a positive number of seconds"
            )
    if distributed is not None:
        return Job(timeout_s=timeout)
    n = _int("--num-processes", num_processes, 1)
    i = _int("--process-id", process_id, 0)
    if i >= n:
        raise UserError(f"--process-id {i}: must be below --num-processes {n} (ids 0..{n - 1})")
    return Job(parse_coordinator(coordinator), n, i, timeout)


def initialize(job: Job) -> None:
    """Join `job` through jax.distributed.initialize; before any JAX device is used.

    CPU devices of several processes reach each other through gloo (set unless the
    environment chose another implementation; GPUs and TPUs use their own). The timeout bounds
    the wait for the peers to join, for a dead peer to be noticed (heartbeats, at most
    HEARTBEAT_S) and for the others at shutdown.
    Raises:
      UserError: JAX refused (already initialised, auto found no cluster, bad arguments).
    """
    if job.num_processes != 1 and not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            job.coordinator,
            job.num_processes,
            job.process_id,
            initialization_timeout=job.timeout_s,
            heartbeat_timeout_seconds=min(job.timeout_s, HEARTBEAT_S),
            shutdown_timeout_seconds=job.timeout_s,
        )
    except (RuntimeError, ValueError, TypeError) as e:
        what = "--distributed auto (no SLURM, Open MPI or Cloud TPU job found?)" if job.auto else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"jax.distributed.initialize{' ' + what if what else ''}: {first}"
        ) from None


# ---- the supervisor: a native abort becomes one line ------------------------------------------


def supervise(work: Callable[[], int], job: Job) -> int:
    """Run `work()` in a forked child and return its exit status.

    The child keeps Python's stdout and stderr; the native libraries' output (XLA's log, gloo's
    messages, a fatal error's stack trace) goes through a pipe to this process, which passes it
    on until the first native log line and holds the rest. If the child ends normally the held
    lines follow; if JAX aborted it (a peer died, or did not join in time) they go to a log file
    and this prints one line and returns 2. Without os.fork (Windows) `work` runs here.
    """
    if not hasattr(os, "fork"):
        return work()
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        _child(work, write_fd)
    os.close(write_fd)
    forward = lambda signum, frame: os.kill(pid, signum)  # noqa: E731
    old = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),  # the terminal sends it
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),  # to the child as well
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    try:
        held = _relay(read_fd)
        _, status = os.waitpid(pid, 0)
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        sys.stderr.write(held.decode(errors="replace"))
        return code
    name = signal.Signals(-code).name
    log = _keep_log(held)
    if -code != signal.SIGABRT:
        print(f"archbench: error: {job.describe()} was stopped by {name}{log}", file=sys.stderr)
        return 128 - code
    reason = _native_reason(held)
    print(
        f"archbench: error: {job.describe()} was aborted by JAX's distributed runtime"
        f"{': ' + reason if reason else ''} (usually a peer process died, or did not join "
        f"within --distributed-timeout {job.timeout_s} s){log}",
        file=sys.stderr,
    )
    return 2


def _child(work: Callable[[], int], write_fd: int) -> None:
    """Run `work` with native output into `write_fd`; exit with its status (never returns).

    Bad input ends as in any `archbench` command (archbench.cli.exits), but with os._exit: the
    child must not unwind into the parent's code it was forked from."""
    code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout = _reopen(sys.stdout, os.dup(1))
        sys.stderr = _reopen(sys.stderr, os.dup(2))
        distributed.console = sys.stderr  # where a lost peer is told, whatever pytest captures
        os.dup2(write_fd, 1)
        os.dup2(write_fd, 2)
        faulthandler.enable(open(write_fd, "wb", buffering=0, closefd=False))  # noqa: SIM115
        code = guarded(work)
    except UserError:  # raised by guarded under ARCHBENCH_DEBUG: its traceback
        traceback.print_exc()
        code = USAGE
    except BaseException:  # a bug: its traceback, status 1
        traceback.print_exc()
    finally:
        if code in (0, 1):  # the matrix ran to its end: leave together (process 0 serves the
            with contextlib.suppress(BaseException):  # others); else the others fail fast
                jax.distributed.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code)


def _reopen(stream, fd: int):
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return open(fd, "w", buffering=1, encoding=encoding, errors="backslashreplace")


def _relay(read_fd: int) -> bytes:
    """Copy the child's native output to stderr up to its first log line; return the rest."""
    held: list[bytes] = []
    with open(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if held or _NATIVE_LOG.match(line):
                    held.append(line + b"\n")
                elif not _NOISE.search(line):
                    sys.stderr.write(line.decode(errors="replace") + "\n")
                    sys.stderr.flush()
        if pending:
            held.append(pending)
    return b"".join(held)


def _native_reason(held: bytes) -> str:
    """The status of a native fatal error ('DEADLINE_EXCEEDED: Deadline Exceeded'), if any."""
    text = held.decode(errors="replace")
    if "collective mismatch" in text.lower():
        return "the processes ran different collectives: give every process the same command line"
    found = re.search(r"absl::Status: ([^\n]+)", text) or re.search(r"^F.*?\] ([^\n]+)", text, re.M)
    return found.group(1).split(". ")[0].strip()[:200] if found else ""


def _keep_log(held: bytes) -> str:
    if not held:
        return ""
    fd, path = tempfile.mkstemp(prefix="archbench-native-", suffix=".log")
    with open(fd, "wb") as f:
        f.write(held)
    return f"; native log: {path}"
