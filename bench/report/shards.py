"""Which results files are shards of one matrix, and so one run of the report.

`archbench run --split K/N` writes each shard of a matrix to a file of its own (as does a
matrix run in parts on one machine, e.g. `--arch mlp` then `--arch gpt`); the report shows
them as one run, not as a baseline and runs with no cell in common. Files are one run when
their cells are disjoint (no cell measured twice) and they were measured alike:

- the same devices and libraries: backend, device kind, device and process counts, jax and
  jaxlib versions (machine_info);
- and either each records a split of the same N with a K of its own (the marker's "split",
  "K/N": shards of an array job may run on different hosts of one kind), or they come from
  the same host (machine_info's node, which pytest-benchmark records).

A file that shares a cell with another is a run of its own: the report compares them.
"""

from __future__ import annotations

from archbench.report.compare import cell_key

# machine_info keys that must agree for two files to be parts of one run
SAME_DEVICES = ("backend", "device_kind", "device_count", "process_count", "jax", "jaxlib")


def split_of(doc: dict) -> tuple[int, int] | None:
    """(K, N) of the marker's "split" ("K/N", as `--split` took it), or None."""
    text = (doc.get("archbench") or {}).get("split")
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        return None
    return (k, n) if 1 <= k <= n else None


def _devices(doc: dict) -> tuple:
    mi = doc.get("machine_info") or {}
    return tuple(str(mi.get(k)) for k in SAME_DEVICES)


def _alike(a: dict, b: dict) -> bool:
    """Whether two results documents were measured alike (see the module's docstring)."""
    if _devices(a) != _devices(b):
        return False
    sa, sb = split_of(a), split_of(b)
    if sa is not None and sb is not None:
        return sa[1] == sb[1] and sa[0] != sb[0]
    node = (a.get("machine_info") or {}).get("node")
    return bool(node) and node == (b.get("machine_info") or {}).get("node")


def group(docs: list[dict], rows: list[list[dict]]) -> list[list[int]]:
    """The files (indices into `docs`, each with its flat `rows`) grouped into runs, in the
    order of each run's first file: a file joins the first run whose files it is alike and
    disjoint with, else starts one of its own."""
    runs: list[tuple[list[int], set]] = []
    for i, doc in enumerate(docs):
        keys = {cell_key(r) for r in rows[i]}
        for members, seen in runs:
            if not keys & seen and all(_alike(docs[j], doc) for j in members):
                members.append(i)
                seen |= keys
                break
        else:
            runs.append(([i], set(keys)))
    return [members for members, _ in runs]
