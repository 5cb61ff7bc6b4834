"""One writer at a time: an exclusive lock on a results file or a training run directory.

Two `archbench run` processes on one --out would each rewrite the whole file after every cell
from their own rows, and each would drop the other's cells; two `archbench train` processes on
one run directory would interleave their metrics lines and checkpoints. So a writer holds an
exclusive `fcntl.flock` on a sidecar file for as long as it writes: `.<name>.lock` beside a
results file, `.lock` inside a run directory. The kernel drops the lock when its process ends,
killed or not, so a sidecar left by `kill -9` never blocks a later run (a clean exit removes
it). The sidecar holds the holder's pid and host, for the second writer's refusal.

On a file system without flock (some network and FUSE mounts) the writer goes on unlocked,
as archbench did before it had locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from archbench.errors import UserError
from archbench.matrix import results


@contextlib.contextmanager
def hold(lock_path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the exclusive lock `lock_path` while the block runs.

    Args:
      lock_path: the sidecar file (created, with its folder, if missing).
      what: what it guards, as the refusal names it, e.g. "--out results.json".
    Raises:
      UserError (one line) when another process holds it, naming that process where known,
      or when the sidecar cannot be created (a folder that cannot be written).
    """
    lock_path = Path(lock_path)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what}: cannot create its folder ({e.strerror or e})") from None
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"{what}: cannot create {lock_path} ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(
                f"{what} is being written by another archbench process{holder}; wait for it "
                f"to end or choose another --out (lock: {lock_path})"
            ) from None
        except OSError:  # no flock on this file system: go on unlocked
            os.close(fd)
            yield
            return
        # A holder that just ended removed the file: a lock on the file we opened before that
        # guards nothing, so lock again the file the path names now.
        with contextlib.suppress(OSError):
            if _same_file(os.fstat(fd), os.stat(lock_path)):
                break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # the pid is for the message only; a full disk
            os.ftruncate(fd, 0)  # must not stop the run here
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()  # before closing: whoever opens it next creates a new one
        os.close(fd)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(fd: int) -> str:
    """' (pid N on HOST)' from the sidecar of the process that holds it; '' if unknown."""
    with contextlib.suppress(OSError, ValueError):
        pid, host = os.pread(fd, 200, 0).decode().split()
        return f" (pid {int(pid)}" + ("" if host == socket.gethostname() else f" on {host}") + ")"
    return ""


# Set by a process holding --out for its child processes, which write it in turn
# (archbench.cli.xla_workers): "<pid of the holder> <lock file>".
LENT = "ARCHBENCH_OUT_LOCK_LENT"


def _lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def lend(out: str | os.PathLike) -> dict[str, str]:
    """The environment by which a child process of this one, which holds --out `out`, writes
    `out` under this process's lock (one child at a time)."""
    return {LENT: f"{os.getpid()} {_lock_path(Path(out)).resolve()}"}


def _lent_to_me(lock_path: Path) -> bool:
    return os.environ.get(LENT) == f"{os.getppid()} {lock_path.resolve()}"


@contextlib.contextmanager
def results_file(out: str | os.PathLike) -> Iterator[None]:
    """Hold --out `out` for one `archbench run`, and remove the temporary files that a writer
    killed inside `results.write_atomic` left beside it (nobody else writes them now). A
    process whose parent holds `out` and lent it (`lend`) writes under the parent's lock."""
    out = Path(out)
    if _lent_to_me(_lock_path(out)):
        yield
        return
    with hold(_lock_path(out), f"--out {out}"):
        for tmp in results.leftover_tmp_files(out):
            with contextlib.suppress(OSError):
                tmp.unlink()
        yield


@contextlib.contextmanager
def run_dir(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the training run directory `out_dir` for one `archbench train`; a directory it
    created for the lock alone is removed again (a run that failed before writing anything)."""
    out_dir = Path(out_dir)
    existed = out_dir.exists()
    try:
        with hold(out_dir / ".lock", f"--out {out_dir}"):
            yield
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if empty
