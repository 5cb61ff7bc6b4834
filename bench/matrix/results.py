"""Result files: pytest-benchmark JSON with archbench's marker, written atomically, flattened.

A results file is exactly what `pytest --benchmark-json` writes (machine_info, commit_info,
benchmarks, datetime, version) plus a top-level marker {"archbench": {"schema": 1, ...}}.
Each entry of `benchmarks` is one cell: pytest-benchmark's own row (name, fullname, params,
param, stats, options) with archbench's metrics in `extra_info`. A cell that failed (OOM, an
error while compiling) has `"stats": null` and extra_info {"status": "oom"|"error", "error": ...}.

The matrix rewrites the whole file after every cell (tmp file + os.replace), so a killed run
loses at most the cell in flight; `load_results` refuses anything that is not such a file.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import tempfile
from pathlib import Path

from archbench.engine import fields
from archbench.errors import UserError

SCHEMA = 1
MARKER = "archbench"
STATS_PER = "step"  # marker(): the unit of pytest-benchmark's stats

# The columns every flat row has, in this order; extra_info keys beyond these follow them.
FLAT_COLUMNS = [
    "arch",
    "size",
    "mode",
    "batch",
    "dtype",
    "devices",
    "seq_len",
    "sharding",
    "mesh",
    "variant",
    "remat",
    "status",
    "params",
    "flops_per_step",
    "model_flops_per_step",
    "step_time_s",
    "step_time_iqr_s",
    "samples_per_s",
    "tokens_per_s",
    "tflops_per_s",
    "mfu",
    "hfu",
    "lower_s",
    "compile_s",
    "compiled_bytes",
    "peak_bytes",
    "backend",
    "device_kind",
    "error",
    "cell_id",
    "source",
]
# The keys that say which cell a row is: every field of archbench.engine.fields (a field newer
# than a file is None in its rows, its default then).
CELL_KEYS = fields.NAMES


def marker(**fields) -> dict:
    """The top-level marker that makes a pytest-benchmark JSON file an archbench results file.

    "stats_per": what one pytest-benchmark iteration of a row's `stats` is: "step" (a train or
    infer step, `iterations` per round; a generate cell's is one whole generation). Files
    without it (written before stats were per step) hold the time of a whole round of
    steps; archbench itself reads only extra_info, the same in both.
    """
    return {"schema": SCHEMA, "stats_per": STATS_PER, **fields}


def is_ok(row: dict) -> bool:
    """Whether a benchmarks[] row is done: measured (status ok, with timing stats), or compiled
    by --compile-only."""
    status = (row.get("extra_info") or {}).get("status")
    return status == "compiled" or (status == "ok" and bool(row.get("stats")))


def load_results(path: str | os.PathLike) -> dict:
    """Read and check one archbench results file.

    Args:
      path: the file.
    Returns:
      The parsed document (a dict with machine_info, benchmarks, archbench, ...).
    Raises:
      UserError naming the file when it is missing, empty, not JSON, not an archbench
      results file, of a newer schema than this archbench reads, or malformed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such results file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a results file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read results file ({e})") from None
    if not text.strip():
        raise UserError(f"{path}: results file is empty")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e}); is it a truncated or foreign file?") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(MARKER), dict):
        raise UserError(f"{path}: not an archbench results file (no {MARKER!r} marker)")
    schema = doc[MARKER].get("schema")
    if not isinstance(schema, int):
        raise UserError(f"{path}: corrupt archbench marker (schema {schema!r})")
    if schema > SCHEMA:
        raise UserError(
            f"{path}: results schema {schema} is newer than this archbench reads "
            f"(up to {SCHEMA}); upgrade archbench"
        )
    benchmarks = doc.get("benchmarks")
    if not isinstance(benchmarks, list) or not all(isinstance(b, dict) for b in benchmarks):
        raise UserError(f"{path}: corrupt results file ('benchmarks' is not a list of objects)")
    if not isinstance(doc.get("machine_info", {}), dict):
        raise UserError(f"{path}: corrupt results file ('machine_info' is not an object)")
    for i, row in enumerate(benchmarks):
        problem = _row_problem(row)
        if problem:
            name = row.get("param") or (row.get("extra_info") or {}).get("cell_id") or "?"
            raise UserError(f"{path}: corrupt cell benchmarks[{i}] ({name}): {problem}")
    return doc


# extra_info values a report computes with: a number or null, whatever else a file holds
_NUMBERS = ("batch", "devices", "seq_len", "prompt_len", "gen_len", "params")
_NUMBERS += ("flops_per_step", "step_time_s", "step_time_iqr_s", "samples_per_s")
_NUMBERS += ("tokens_per_s", "tflops_per_s", "mfu", "lower_s", "compile_s")
_NUMBERS += ("compiled_bytes", "peak_bytes")
_NUMBERS += ("device_flops_per_step", "bytes_per_step", "collective_bytes", "peak_tflops")
_NUMBERS += ("arithmetic_intensity", "roofline_bound_s", "roofline_efficiency")
_NUMBERS += ("compute_bound_s", "memory_bound_s", "comm_bound_s", "peak_bandwidth_bytes_per_s")
_TEXTS = ("arch", "size", "mode", "dtype", "status", "error", "cell_id", "binding_roof")


def _row_problem(row: dict) -> str | None:
    """What is wrong with one benchmarks[] entry of a hand-edited or foreign file, or None."""
    for key in ("params", "extra_info", "stats"):
        if row.get(key) is not None and not isinstance(row[key], dict):
            return f"{key!r} is {type(row[key]).__name__}, not an object"
    info = row.get("extra_info") or {}
    for key in _NUMBERS:
        value = info.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{key!r} is {value!r}, not a number"
    for key in _TEXTS:
        if info.get(key) is not None and not isinstance(info[key], str):
            return f"{key!r} is {info[key]!r}, not text"
    stats = row.get("stats") or {}
    for key in ("min", "max", "mean", "median", "iqr", "stddev"):
        value = stats.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"stats {key!r} is {value!r}, not a number"
    return None


def check_out_file(path: str | os.PathLike) -> dict | None:
    """The results already in `path` (None if it does not exist), or UserError if it holds
    anything else: a file that is not archbench's is never overwritten."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return load_results(path)
    except UserError as e:
        raise UserError(f"{e}; refusing to overwrite it, choose another --out") from None


_UMASK = os.umask(0)
os.umask(_UMASK)


class WriteError(UserError):
    """A file could not be written (a full disk, no permission); it holds what it held before."""


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` in one step: a reader sees the old file or the new, never half.

    Raises:
      WriteError naming the file and the reason (ENOSPC, EACCES, ...); the file is unchanged.
    """
    path = Path(path)
    try:
        _write_atomic(path, text)
    except OSError as e:
        kept = "left as it was" if path.is_file() else "not written"
        raise WriteError(f"{path}: cannot write it ({e.strerror or e}); {kept}") from None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode of a new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def leftover_tmp_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files of `write_atomic` beside `path` that a killed writer left (never
    results themselves: a reader looks for `path` only)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def dump_results(doc: dict) -> str:
    """The JSON text of a results document, as pytest-benchmark formats it (indent 4)."""
    return json.dumps(doc, indent=4, ensure_ascii=True, default=str) + "\n"


def flatten(row: dict, machine_info: dict, source: str) -> dict:
    """One flat dict for a benchmarks[] row: the cell, its metrics, the device, the file."""
    info = row.get("extra_info") or {}
    params = row.get("params") or {}
    flat = {key: None for key in FLAT_COLUMNS}
    for key in CELL_KEYS:  # extra_info has the resolved cell; params what was asked
        flat[key] = info.get(key, params.get(key))
    flat.update(info)
    flat["status"] = info.get("status") or ("ok" if row.get("stats") else "error")
    # results written before strategies existed: every cell was dp over a "data" axis
    flat["sharding"] = flat["sharding"] or "dp"
    flat["mesh"] = flat["mesh"] or f"data={flat['devices'] or 1}"
    # results written before XLA option sets existed: archbench set no XLA option, which is
    # what its default set still is (archbench.engine.xla_options)
    flat["xla_options"] = flat["xla_options"] or fields.BY_NAME["xla_options"].default
    flat["cell_id"] = info.get("cell_id") or row.get("param")
    flat["backend"] = info.get("backend") or machine_info.get("backend")
    flat["device_kind"] = info.get("device_kind") or machine_info.get("device_kind")
    flat["source"] = source
    return flat


def flat_rows(paths) -> list[dict]:
    """One flat row per cell of every file in `paths`, in file order.

    Args:
      paths: result files; each is checked by `load_results`.
    Returns:
      Dicts with every key of FLAT_COLUMNS (None where unknown) and any further metrics.
    """
    rows = []
    for path in paths:
        doc = load_results(path)
        machine_info = doc.get("machine_info") or {}
        rows.extend(flatten(b, machine_info, str(path)) for b in doc["benchmarks"])
    return rows


def columns(rows: list[dict]) -> list[str]:
    """FLAT_COLUMNS, then every other key that appears in `rows`, in first-seen order."""
    extra = {}
    for row in rows:
        extra.update(dict.fromkeys(k for k in row if k not in FLAT_COLUMNS))
    return [*FLAT_COLUMNS, *extra]


def to_csv(rows: list[dict]) -> str:
    """CSV text with a header of `columns(rows)`; None is an empty field."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1, default=str) + "\n"
