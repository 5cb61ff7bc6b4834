"""Sets of XLA options A-B-A, one long-lived process per set, outputs compared.

    python -m archbench.checks.xla_ab --arch encoder,gpt [--size small] [--mode train,infer]
        [--batch 32] [--sets default,cpu-no-ynn-reduce] [--repeats 3] [--target-s 1.0]
        [--json FILE]

XLA reads its options once per process (archbench.engine.xla_options), so each set runs in a
process of its own, started with the set's XLA_FLAGS (the user's own win, as in `archbench
run --xla-options`), which compiles each cell once and then answers "time a block". Before
anything is timed, each process's forward pass on the first set's parameters and batch
(handed over in a file) is compared with the first set's. Then blocks run first, s1, first, s2, ..., first, `--repeats` times over; a set's
ratio is the median of its block / the mean of the first set's blocks around it, and the
first set's row gives its own inner blocks' ratios (an A-A control, the noise a ratio must
leave). A set becomes a default only after such a run on a quiet machine over the default
matrix with the same outputs (docs/performance.md, "Compiler options"). Exit 1 when outputs
differ beyond float32's 1e-3 (or a cell failed), 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import numpy as np

from archbench import archs
from archbench.checks.served import Served
from archbench.engine import xla_options
from archbench.engine.fields import BY_NAME
from archbench.errors import UserError
from archbench.text import format_table

TOLERANCE = 1e-3  # max |d| / max(1, max |first set's logits|), float32 (checks.variants')
MODES = ("train", "infer")


def serve() -> None:
    """The process of one set: JSON lines in, JSON lines out (prepare, logits, block)."""
    import jax

    from archbench.engine.cell import Cell
    from archbench.engine.measure import prepare, time_rounds
    from archbench.train.steps import predict

    prepared = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "prepare":
                prepared = None
                prepared = prepare(Cell(**request["cell"]))
                share(prepared, request.get("save"), request.get("load"))
                x = prepared.inputs["x"] if prepared.cell.mode == "train" else prepared.inputs
                logits = np.asarray(jax.jit(predict)(prepared.state, x), np.float64)
                np.save(request["logits"], logits)
                prepared.calibrate(request["min_round_s"])
                answer = xla_options.in_force()
            else:
                times = time_rounds(prepared, target_s=request["target_s"], min_rounds=3)
                answer = {"step_s": statistics.median(t / prepared.steps_per_round for t in times)}
        except Exception as exc:  # the driver prints it in one line
            answer = {"error": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}
        print(json.dumps(answer), flush=True)


def share(prepared, save: str | None, load: str | None) -> None:
    """Save the parameters, BatchNorm statistics and batch to `save`, or take them from
    `load`: every set's process then computes on the first one's (initialising under other
    options, fast math say, could draw other parameters)."""
    import jax

    state = prepared.state
    leaves, treedef = jax.tree_util.tree_flatten((state.params, state.batch_stats, prepared.inputs))
    if save:
        np.savez(save, *[np.asarray(leaf) for leaf in leaves])
    if load:
        with np.load(load) as saved:
            new = [jax.device_put(saved[f"arr_{i}"], x.sharding) for i, x in enumerate(leaves)]
        params, stats, prepared.inputs = jax.tree_util.tree_unflatten(treedef, new)
        prepared.state = state.replace(params=params, batch_stats=stats)


class Process(Served):
    """One set's process."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(
            [sys.executable, "-m", "archbench.checks.xla_ab", "--serve"],
            lambda: f"the process of --sets {name} ended (its stderr is above)",
            env=xla_options.worker_environment(name),
            preexec_fn=xla_options.pin(name),
        )


def run_cell(cell: dict, processes: list[Process], args, folder: str) -> list[dict]:
    """One cell in every set's process: outputs compared, then blocks A-B-A; a row per set."""
    rows = [{**cell, "set": p.name, "status": "ok", "blocks": [], "ratios": []} for p in processes]
    logits = {}
    for p, row in zip(processes, rows, strict=True):
        path = os.path.join(folder, f"{p.name}.npy")
        state = {"load" if p is not processes[0] else "save": os.path.join(folder, "state.npz")}
        try:
            mine = {**cell, "xla_options": p.name}
            answer = p.ask(
                op="prepare", cell=mine, logits=path, min_round_s=args.min_round_s, **state
            )
        except RuntimeError as exc:
            row.update(status="error", note=str(exc))
            continue
        row["xla_flags"] = answer["xla_flags"]
        logits[p.name] = np.load(path)
    first = rows[0]
    first["first"] = True  # the baseline: its ratios are the A-A control's
    if first["status"] != "ok":
        return rows
    scale = max(1.0, float(np.max(np.abs(logits[first["set"]]))))
    for row in rows[1:]:
        if row["status"] != "ok":
            continue
        row["max_diff"] = float(np.max(np.abs(logits[row["set"]] - logits[first["set"]]))) / scale
        if not row["max_diff"] <= TOLERANCE:
            row["status"] = "different outputs"
    interleave(rows, processes, args.repeats, args.target_s)
    return rows


def interleave(rows: list[dict], processes: list[Process], repeats: int, target_s: float):
    """Blocks first, s1, first, s2, ..., first, `repeats` times over; each set's block paired
    with the mean of the first set's blocks just before and after it."""

    def block(i: int) -> float:
        rows[i]["blocks"].append(processes[i].ask(op="block", target_s=target_s)["step_s"])
        return rows[i]["blocks"][-1]

    others = [i for i in range(1, len(rows)) if rows[i]["status"] == "ok"]
    before = block(0)
    for _ in range(repeats):
        for i in others:
            mine, after = block(i), block(0)
            rows[i]["ratios"].append(mine / ((before + after) / 2))
            before = after
        if not others:
            block(0)
    b = rows[0]["blocks"]  # the A-A control: the first set's inner blocks against their own
    rows[0]["ratios"] = [b[i] / ((b[i - 1] + b[i + 1]) / 2) for i in range(1, len(b) - 1)]


def table(rows: list[dict]) -> str:
    def line(r: dict) -> dict:
        ratios, blocks = r["ratios"], r["blocks"]
        diff = r.get("max_diff")
        return {
            "cell": f"{r['arch']} {r['mode']}",
            "set": r["set"],
            "status": r["status"],
            "median ms": f"{statistics.median(blocks) * 1e3:.3f}" if blocks else "",
            "ratio": f"{statistics.median(ratios):.3f}" if ratios and not r.get("first") else "",
            "range": f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "",
            "outputs": r.get("note") or ("" if diff is None else f"max|d| {diff:.1e}"),
        }

    cols = ["cell", "set", "status", "median ms", "ratio", "range", "outputs"]
    return format_table([line(r) for r in rows], cols)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m archbench.checks.xla_ab", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--arch", help="comma list of architectures")
    parser.add_argument("--size", default="small")
    parser.add_argument("--mode", default="train,infer", help="comma list of train, infer")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--sets",
        default=f"{xla_options.DEFAULT},cpu-no-ynn-reduce",
        help=f"comma list, the first the baseline: {', '.join(xla_options.NAMES)}",
    )
    parser.add_argument("--repeats", type=int, default=3, help="A-B-A passes over the sets")
    parser.add_argument("--target-s", type=float, default=1.0, help="timing budget of a block")
    parser.add_argument("--min-round-s", type=float, default=0.05, help="a round lasts this")
    parser.add_argument("--json", help="write the rows to this file")
    return parser.parse_args(argv)


def check(args) -> tuple[list[str], list[str], list[str]]:
    """The architectures, modes and sets to run, or UserError in one line."""
    if not args.arch:
        raise UserError("--arch: give one or more architectures")
    names = [a.strip() for a in args.arch.split(",") if a.strip()]
    for name in names:
        archs.get(name).size(args.size)  # an unknown one: UserError naming the valid ones
    modes = BY_NAME["mode"].values(args.mode)
    if set(modes) - set(MODES):
        raise UserError(f"--mode: train and infer only, not {', '.join(set(modes) - set(MODES))}")
    sets = BY_NAME["xla_options"].values(args.sets)  # an unknown set: one line naming them
    if args.repeats < 1 or args.target_s <= 0 or args.min_round_s <= 0 or args.batch < 1:
        raise UserError("--repeats and --batch must be >= 1, --target-s and --min-round-s > 0")
    return names, modes, sets


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.serve:
        serve()
        return 0
    try:
        names, modes, sets = check(args)
    except UserError as e:
        print(f"xla_ab: error: {e}", file=sys.stderr)
        return 2
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.size} b{args.batch} float32; load average {load}; sets {', '.join(sets)}")
    processes = [Process(name) for name in sets]
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for name in names:
                for mode in modes:
                    cell = {"arch": name, "size": args.size, "mode": mode, "batch": args.batch}
                    rows += run_cell(cell, processes, args, folder)
    except UserError as e:
        print(f"xla_ab: error: {e}", file=sys.stderr)
        return 2
    finally:
        for p in processes:
            p.close()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": os.getloadavg(), "rows": rows}, f, indent=1)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
