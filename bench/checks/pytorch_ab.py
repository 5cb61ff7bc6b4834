"""archbench against equivalent PyTorch models, A-B-A, one process each.

    python -m archbench.checks.pytorch_ab --torch-python /work/torch-venv/bin/python
        [--arch gpt,encoder,...] [--size small] [--mode train,infer] [--batch 32]
        [--torch-threads N] [--repeats 3] [--target-s 1.0] [--json FILE]

This process runs each archbench cell (the benchmark's own step:
archbench.engine.measure.prepare); a second, in a Python with PyTorch (`--torch-python`, or
$ARCHBENCH_TORCH_PYTHON: PyTorch, transformers and timm, the `reference` extra; Python 3.11
has PyTorch's CPU wheel), runs its twin (bench/checks/pytorch_twins.py, served by
pytorch_server.py beside it). The twin is built from the same module fields, and the
parameter counts must agree: a cell whose counts differ is an error, not a figure. Then
blocks alternate, archbench, PyTorch, archbench, ..., `--repeats` PyTorch blocks in all, and
each ratio is the mean of the two archbench blocks around a PyTorch block over that block
(archbench / PyTorch: below 1, archbench is faster). Printed: the ratio per family and mode
(median, range), then each cell's milliseconds. XLA runs a thread per CPU this process may use
(`taskset -c 0 python -m ...` for one; no XLA option sets it), PyTorch --torch-threads.
Exit 1 if a cell failed or its counts differ, 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import jax

from archbench import archs
from archbench.checks.served import Served
from archbench.engine import xla_options
from archbench.engine.cell import Cell, input_spec, validate
from archbench.engine.measure import prepare, time_rounds
from archbench.errors import UserError
from archbench.text import format_table

SERVER = Path(__file__).with_name("pytorch_server.py")
# The families of issue 15's table, then those added since (their twins: pytorch_twins.TWINS)
FAMILIES = ("gpt", "encoder", "resnet", "inception", "lstm", "lenet5", "llama", "moe", "vit")
FAMILIES += ("mixer", "mamba", "gru", "rnn", "deep_rnn", "mlp", "cnn")
MODES = ("train", "infer")


class Torch(Served):
    """The PyTorch process: one request, one answer, in JSON lines."""

    def __init__(self, python: str):
        # its warnings, and on a crash its last line; closed by close()
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        super().__init__(
            [python, str(SERVER)], self._last_words, _plain, stderr=self.log, cwd=SERVER.parent
        )

    def _last_words(self) -> str:
        self.log.seek(0)
        last = [x for x in self.log.read().splitlines() if x.strip()] or ["no output"]
        return f"the PyTorch process ended: {last[-1]}"

    def close(self) -> None:
        super().close()
        self.log.close()


def _plain(value):
    """A module field as JSON: a class or function by name, anything else as text."""
    return getattr(value, "__name__", str(value))


def twin_request(cell: Cell, mode: str, threads: int | None, min_round_s: float) -> dict:
    """What the PyTorch process needs to build `cell`'s twin: the module's fields, the input."""
    spec = archs.get(cell.arch)
    module = spec.build(cell.size)
    fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)}
    fields = {k: v for k, v in fields.items() if k not in ("parent", "name")}
    inputs = input_spec(cell)
    return {
        "op": "prepare", "arch": cell.arch, "fields": fields, "task": spec.task, "mode": mode,
        "input": {"kind": inputs.kind, "shape": inputs.shape, "vocab_size": inputs.vocab_size},
        "batch": cell.batch, "threads": threads, "min_round_s": min_round_s,
    }  # fmt: skip


def alternate(prepared, torch: Torch, repeats: int, target_s: float) -> dict:
    """archbench, PyTorch, archbench, ... blocks; per-step medians and the paired ratios."""

    def ours() -> float:
        times = time_rounds(prepared, target_s=target_s, min_rounds=3)
        return statistics.median(t / prepared.steps_per_round for t in times)

    mine, theirs, ratios = [ours()], [], []
    for _ in range(repeats):
        theirs.append(torch.ask(op="block", target_s=target_s)["step_s"])
        mine.append(ours())
        ratios.append((mine[-2] + mine[-1]) / 2 / theirs[-1])
    return {
        "archbench_s": statistics.median(mine),
        "pytorch_s": statistics.median(theirs),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "blocks_archbench_s": mine,
        "blocks_pytorch_s": theirs,
    }


def measure(arch: str, mode: str, args, torch: Torch) -> dict:
    """One cell on both sides: its row (status ok, params differ, or error)."""
    cell = Cell(arch, args.size, mode, args.batch, "float32")
    row = {"arch": arch, "family": archs.get(arch).family, "mode": mode, "status": "ok"}
    try:
        twin = torch.ask(**twin_request(cell, mode, args.torch_threads, args.min_round_s))
        row.update(torch=twin["torch"], torch_threads=twin["threads"])
        row["params"], row["pytorch_params"] = archs.param_count(arch, args.size), twin["params"]
        if row["params"] != twin["params"]:
            row["status"] = "params differ"
            return row
        prepared = prepare(cell)
        prepared.calibrate(args.min_round_s)
        row.update(alternate(prepared, torch, args.repeats, args.target_s))
    except (RuntimeError, ValueError, KeyError) as exc:  # either side could not build or run it
        row["status"], row["error"] = "error", str(exc)[:300]
    return row


def tables(rows: list[dict]) -> str:
    """The ratio per family and mode, then each cell's milliseconds."""
    ratio = lambda r: (  # noqa: E731
        f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
        if r["status"] == "ok"
        else r["status"]
    )
    by_arch: dict[str, dict] = {}
    for r in rows:
        by_arch.setdefault(r["arch"], {"family": r["arch"]})[r["mode"]] = ratio(r)
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    summary = [{k: v.get(k, "") for k in ("family", *modes)} for v in by_arch.values()]
    ms = lambda r, k: f"{r[k] * 1e3:,.3g}" if r.get(k) is not None else ""  # noqa: E731
    cells = [
        {
            "cell": f"{r['arch']} {r['mode']}",
            "archbench ms": ms(r, "archbench_s"),
            "PyTorch ms": ms(r, "pytorch_s"),
            "ratio (range)": ratio(r),
            "params": f"{r.get('params', '')}"
            + (
                ""
                if r.get("pytorch_params") in (None, r.get("params"))
                else f" / {r['pytorch_params']}"
            ),
            "note": r.get("error", ""),
        }
        for r in rows
    ]
    return (
        format_table(summary, ["family", *modes])
        + "\n\n"
        + format_table(
            cells, ["cell", "archbench ms", "PyTorch ms", "ratio (range)", "params", "note"]
        )
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m archbench.checks.pytorch_ab", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--torch-python",
        default=os.environ.get("ARCHBENCH_TORCH_PYTHON"),
        help="a Python with torch, transformers and timm (default: $ARCHBENCH_TORCH_PYTHON)",
    )
    parser.add_argument("--arch", default=",".join(FAMILIES[:10]), help="comma list")
    parser.add_argument("--size", default="small")
    parser.add_argument("--mode", default="train,infer", help="comma list of train, infer")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: its)")
    parser.add_argument("--repeats", type=int, default=3, help="PyTorch blocks per cell")
    parser.add_argument("--target-s", type=float, default=1.0, help="timing budget of a block")
    parser.add_argument("--min-round-s", type=float, default=0.05, help="a round lasts this")
    parser.add_argument("--json", help="write the rows to this file")
    return parser.parse_args(argv)


def check(args) -> tuple[list[str], list[str]]:
    """The architectures and modes to run, or UserError in one line."""
    if not args.torch_python:
        raise UserError("--torch-python: a Python with torch (or set ARCHBENCH_TORCH_PYTHON)")
    if not os.access(args.torch_python, os.X_OK):
        raise UserError(f"--torch-python {args.torch_python}: not an executable file")
    names = [a.strip() for a in args.arch.split(",") if a.strip()]
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    for name in names:
        if name not in FAMILIES:
            raise UserError(f"no PyTorch twin of {name!r}; the twins: {', '.join(FAMILIES)}")
    for mode in modes:
        if mode not in MODES:
            raise UserError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if not names or not modes:
        raise UserError("--arch and --mode need at least one value each")
    if args.repeats < 1 or args.target_s <= 0 or args.min_round_s <= 0 or args.batch < 1:
        raise UserError("--repeats and --batch must be >= 1, --target-s and --min-round-s > 0")
    for name in names:
        for mode in modes:
            validate(Cell(name, args.size, mode, args.batch, "float32"))
    return names, modes


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        names, modes = check(args)
        torch = Torch(args.torch_python)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"{args.size} b{args.batch} float32 on {jax.devices()[0].device_kind} "
            f"({xla_options.cpus()} CPUs); load average "
            f"{load}; {args.repeats} A-B-A passes of {args.target_s:g} s blocks; "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; ratio = archbench / PyTorch",
            flush=True,
        )
        try:
            rows = []
            for name in names:
                for mode in modes:  # a line a cell on stderr: a full run takes a while
                    rows.append(measure(name, mode, args, torch))
                    r = rows[-1]
                    said = f"{r['ratio']:.2f}" if r["status"] == "ok" else r["status"]
                    print(f"pytorch_ab: {name} {mode}: {said}", file=sys.stderr, flush=True)
        finally:
            torch.close()
    except UserError as e:
        print(f"pytorch_ab: error: {e}", file=sys.stderr)
        return 2
    print(tables(rows))
    if args.json:
        with open(args.json, "w") as f:
            doc = {"load_average": os.getloadavg(), **xla_options.in_force(), "rows": rows}
            json.dump(doc, f, indent=1)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
