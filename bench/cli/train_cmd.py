"""`archbench train`: argument parsing over `train.fit.fit` and `train.recipes`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from archbench import archs
from archbench.archs import plugins
from archbench.cli import locks
from archbench.cli.list_cmd import add_plugin_argument
from archbench.text import format_table
from archbench.train import recipes

HELP = "train a named recipe and check it against its published result"
MAX_SEED = 2**32 - 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="recipe name (see --list)")
    p.add_argument("--list", action="store_true", help="print the recipes and exit")
    p.add_argument("--epochs", type=int, help="train this many epochs instead of the recipe's")
    p.add_argument(
        "--seed",
        type=int,
        help="random seed of the initialisation and data order (default: "
        "the recipe's); the recipes' bands come from several seeds",
    )
    p.add_argument("--out", help="run directory (default runs/<recipe>)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 unless the final metric lies in the recipe's expected band",
    )
    p.add_argument("--data-dir", help="where datasets are read from (and prepared)")
    p.add_argument(
        "--devices",
        type=int,
        help="train on the first N devices, the recipe's batch split over them (default: 1)",
    )
    p.add_argument(
        "--sharding",
        help="dp (batch split, state replicated; the default), fsdp (parameters and optimizer "
        "state split too), tp, fsdp+tp (with --mesh) or ep as `archbench run`",
    )
    p.add_argument(
        "--mesh", help="named mesh axes, e.g. data=2,model=2 (sizes multiply to --devices)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="with --list: print JSON")
    add_plugin_argument(p)  # its architectures, for recipes that name them


def list_rows() -> list[dict]:
    """One row per recipe, with whether its architecture and size are registered."""
    rows = []
    for name in recipes.names():
        r = recipes.get(name)
        ready = r.arch in archs.names() and r.size in archs.get(r.arch).sizes
        rows.append(
            {
                "recipe": name,
                "arch": f"{r.arch}/{r.size}" + ("" if ready else " (missing)"),
                "dataset": r.dataset + (f"+{r.transform}" if r.transform else ""),
                "epochs": r.epochs,
                "batch": r.batch,
                "optimizer": r.optimizer.describe(),
                "expected": r.describe_band(),
                "source": r.source,
            }
        )
    return rows


def placement(devices: int | None, strategy: str | None, mesh: str | None):
    """The Layout of --devices/--sharding/--mesh over the first devices JAX sees; None (one
    device, as without the flags) when none of them is given."""
    if devices is None and strategy is None and mesh is None:
        return None
    import jax

    from archbench.engine import sharding

    available = jax.devices()
    devices = 1 if devices is None else devices
    if not 1 <= devices <= len(available):
        raise archs.UserError(
            f"--devices must be 1..{len(available)} (the {jax.default_backend()} devices JAX "
            f"sees), got {devices}; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "gives N devices"
        )
    return sharding.layout(strategy or "dp", available[:devices], mesh)


def run(args) -> int:
    plugins.load_files(args.plugin)
    if args.list:
        if args.recipe:
            raise archs.UserError("train: give either --list or a recipe, not both")
        rows = list_rows()
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            print(format_table(rows, ["recipe", "arch", "dataset", "epochs", "batch", "expected"]))
        return 0
    if not args.recipe:
        raise archs.UserError(
            f"train: name a recipe or pass --list; recipes: {', '.join(recipes.names())}"
        )
    recipe = recipes.get(args.recipe)
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:  # JAX keeps 32 bits of it
        raise archs.UserError(f"--seed must be 0 to {MAX_SEED}, got {args.seed}")
    if args.seed is not None:
        recipe = dataclasses.replace(recipe, seed=args.seed)
    from archbench.engine import sharding  # jax, orbax and tqdm load only when training
    from archbench.train.fit import fit

    out_dir = args.out or f"runs/{recipe.name}"
    try:
        layout = placement(args.devices, args.sharding, args.mesh)
        with locks.run_dir(out_dir):  # another train on this directory: one line, exit 2
            final = fit(
                recipe,
                epochs=args.epochs,
                out_dir=out_dir,
                resume=args.resume,
                progress=not args.no_progress,
                data_dir=args.data_dir,
                placement=layout,
                say=lambda line: print(f"archbench: {line}", file=sys.stderr),
            )
    except sharding.Unsupported as e:
        raise archs.UserError(
            f"--sharding {args.sharding} cannot train {recipe.arch}: {e}"
        ) from None
    except OSError as e:  # a full disk, a folder it may not write: the file and why
        if isinstance(e, BrokenPipeError):
            raise
        raise archs.UserError(
            f"{e.filename or out_dir}: {e.strerror or e}; training stopped (--resume continues "
            "from its last checkpoint)"
        ) from None
    verdict = recipes.check_message(recipe, final["value"], final["epoch"])
    print(f"{verdict} ({final['out_dir']})")
    reached = recipes.target_message(recipe, final["out_dir"])  # time to target, if it has one
    if reached:
        print(reached)
    return 1 if args.check and not recipe.in_band(final["value"]) else 0
