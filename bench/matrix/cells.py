"""Which cells to run: the matrix's filters, checked value by value, and their defaults.

`select(...)` turns comma lists of filters (as typed on the command line), one per field of
archbench.engine.fields, into `Cell`s, checking every value first; without filters it gives
the main job. `split="K/N"` keeps the K-th of N disjoint shards of them, so one matrix can be
spread over array jobs.
"""

from __future__ import annotations

import functools
import itertools

import jax

from archbench import archs
from archbench.engine import cell as cells_
from archbench.engine.cell import Cell, can_decode, can_remat, decode_archs, remat_archs
from archbench.engine.fields import AUTO, BY_NAME, FIELDS, NAMES
from archbench.engine.sharding import mesh_axes
from archbench.errors import UserError

__all__ = ["AUTO", "Cell", "comma_list", "parse_split", "select"]

# The main job (`archbench run` with no filters): every architecture at its CPU size, all
# three modes, batch 32, float32 on one device (each field's `main_job` or default). Batch 32
# is one small-batch point common to every task (images, sequences, tokens), so cells compare
# across families; at 32 the slowest small cells (Transformer train) take about a second a
# step on two CPU cores. Generation joins it for the language models that decode: a 64-token
# prompt, then 32 tokens one at a time (gpt, llama, mamba, moe).


def comma_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def parse_split(text: str | None) -> tuple[int, int] | None:
    """'K/N' -> (K, N) with 1 <= K <= N; None -> None. Raises UserError in one line."""
    if text is None:
        return None
    k, slash, n = str(text).strip().partition("/")
    if not slash or not k.strip().isdigit() or not n.strip().isdigit():
        raise UserError(f"--split {text!r}: expected K/N, the K-th of N shards, e.g. 1/4")
    k_, n_ = int(k), int(n)
    if not 1 <= k_ <= n_:
        raise UserError(f"--split {text!r}: K must be 1..N (here N = {n_})")
    return k_, n_


def _arch_names(patterns: list[str]) -> list[str]:
    chosen = []
    for pattern in patterns:
        matched = archs.names(pattern)
        if not matched:
            raise archs.registry.unknown("architecture", pattern, archs.names())
        chosen.extend(matched)
    return list(dict.fromkeys(chosen))


# Which of the asked-for values of a field a cell of (spec, size, mode) takes, where the field
# applies to the mode, and what to do when none is left: "default" keeps the field's default,
# "skip" makes no cell.
_KEEP = {
    # a sequence length only for sequence models; images keep their shape
    "seq_len": (lambda spec, size, mode, v: spec.size(size).input.kind != "image", "default"),
    "variant": (lambda spec, size, mode, v: v in spec.variants, "default"),
    "remat": (lambda spec, size, mode, v: can_remat(spec), "default"),
    # generation: a language model with a decode path, on one device, at a given batch
    "batch": (lambda spec, size, mode, v: mode != "generate" or v != AUTO, "skip"),
    "devices": (lambda spec, size, mode, v: mode != "generate" or v == 1, "skip"),
}


def _options(name: str, asked: list, spec, size: str, mode: str, given: bool) -> list:
    """The values of field `name` for the cells of (spec, size, mode); [] for no cell."""
    field = BY_NAME[name]
    if mode not in field.modes:
        return [field.default]
    if not given and field.fill is not None:  # a filled-in length: only where it fits
        asked = [field.fill]
    keep, otherwise = _KEEP.get(name, (None, None))
    if keep is not None:
        asked = [v for v in asked if keep(spec, size, mode, v)]
        if not asked:
            return [field.default] if otherwise == "default" else []
    return asked


def _check_devices(counts: list[int], target) -> None:
    available = jax.device_count() if target is None else len(target)
    for n in counts:
        if n > available:
            where = (
                "here" if target is None else f"in the target topology ({target[0].device_kind})"
            )
            raise UserError(
                f"--devices {n}: only {available} "
                f"{jax.default_backend() if target is None else 'TPU'} device(s) {where}"
            )


def _check_applies(asked: dict, given: set, names: list[str]) -> None:
    """A field given for modes none of which is selected, or for families none of which has
    it, is a mistake: one line saying where it applies."""
    modes = asked["mode"]
    if "variant" in given:
        declared = {n: list(archs.get(n).variants) for n in archs.names() if archs.get(n).variants}
        every = sorted({v for vs in declared.values() for v in vs})
        for v in asked["variant"]:
            if v not in every:
                raise archs.registry.unknown("variant", v, every)
        if not any(v in archs.get(n).variants for n in names for v in asked["variant"]):
            have = "; ".join(f"{n}: {', '.join(vs)}" for n, vs in declared.items())
            raise UserError(
                f"--variant {','.join(asked['variant'])}: none of the selected families has it "
                f"({have})"
            )
    if "remat" in given and not ("train" in modes and any(can_remat(archs.get(n)) for n in names)):
        raise UserError(
            f"--remat {','.join(asked['remat'])}: applies to train cells of "
            f"{', '.join(remat_archs())}; none is selected"
        )
    for name in given:
        field = BY_NAME[name]
        if not set(field.modes) & set(modes):
            raise UserError(f"{field.option} applies to --mode {', '.join(field.modes)}")


def select(*, split: str | None = None, target=None, **filters: str | None) -> list[Cell]:
    """The cells a set of filters selects, each value checked before anything runs.

    Args:
      filters: one comma list per field of archbench.engine.fields (arch, size, mode, batch,
        ...) as typed on the command line; a field not given (None) takes the main job's
        value (every architecture, `small`, train, infer and generate, batch 32, float32,
        1 device, each model's own sequence length, dp, each family's own implementation).
        Architecture names may be wildcards ('resnet*'); batch may be 'auto'. A value
        applies to the selected cells it fits: a size to the architectures that have it, a
        sequence length to sequence models, a variant to the families that declare it,
        remat to train cells of the families that can; the prompt and generated lengths to
        generate cells (default 64 and 32, where they fit the model's positions), which
        exist for the language models that decode, on one device under dp at a given batch.
      split: "K/N": only the K-th (1-based) of N disjoint shards that cover the selection,
        dealt by estimated cost (`shards`), so each takes about as long.
      target: the devices of a TPU topology to compile for (archbench.engine.topology);
        None: this host's.
    Returns:
      Cells in a stable order: architecture, size, mode, then the fields in table order.
      Batch may be "auto" (resolved when the cell is measured).
    Raises:
      UserError (one line, listing the valid choices) for any bad value.
    """
    unknown = set(filters) - set(NAMES)
    if unknown:
        raise TypeError(f"select() got unknown filters {', '.join(sorted(unknown))}")
    shard = parse_split(split)
    given = {name for name, text in filters.items() if text is not None}
    asked = {f.name: f.values(filters.get(f.name)) for f in FIELDS}
    names = _arch_names(asked["arch"])
    specs = {n: archs.get(n) for n in names}
    pairs = _pairs(specs, asked, given, target)
    filled = not {"prompt_len", "gen_len"} & given  # the default lengths: only where they fit
    selected = _cells(pairs, specs, asked, given, filled)
    if not selected and "generate" in asked["mode"]:  # other modes' cells run without it
        _check_some_generate(names, asked, filled)
    for c in selected:  # anything measuring refuses, before anything runs
        cells_.validate(cells_.with_unit_batch(c), target)
    if shard is not None:
        k, n = shard
        if k > len(selected):
            raise UserError(
                f"--split {split}: shard {k} is empty; the selection has only "
                f"{len(selected)} cell(s)"
            )
        selected = shards(selected, n)[k - 1]
    return selected


def _pairs(specs: dict, asked: dict, given: set, target) -> list[tuple[str, str]]:
    """The (arch, size) pairs the filters select, after checking the values that hold for
    every cell: sizes, devices, strategies and meshes, and where each field applies."""
    names = list(specs)
    all_sizes = list(dict.fromkeys(s for spec in specs.values() for s in spec.sizes))
    for s in asked["size"]:
        if s not in all_sizes:
            raise archs.registry.unknown("size", s, all_sizes)
    _check_devices(asked["devices"], target)
    for n in asked["devices"]:
        for strategy in asked["sharding"]:
            mesh_axes(strategy, n, asked["mesh"][0])
    _check_applies(asked, given, names)
    pairs = [(n, s) for n, spec in specs.items() for s in asked["size"] if s in spec.sizes]
    if not pairs:
        raise UserError(
            f"no architecture among {', '.join(names)} has size {', '.join(asked['size'])}"
        )
    if "seq_len" in given and not any(_takes_sequences(n, s) for n, s in pairs):
        every = [n for n, s in archs.cells(sizes=tuple(asked["size"])) if _takes_sequences(n, s)]
        raise UserError(
            f"--seq-len applies to sequence models ({', '.join(dict.fromkeys(every))}), "
            f"not to {', '.join(names)} at size {', '.join(asked['size'])}"
        )
    return pairs


def _cells(pairs: list, specs: dict, asked: dict, given: set, filled: bool) -> list[Cell]:
    """Every combination of the asked values for each (arch, size), where each applies,
    without repeats; generate cells only for language models that decode (`filled`: at the
    default lengths, only where they fit the model's positions)."""
    selected = []
    rest = NAMES[3:]  # after arch, size and mode
    for name, size in pairs:
        spec = specs[name]
        for mode in asked["mode"]:
            if mode == "generate" and not can_decode(spec):
                continue
            options = [_options(f, asked[f], spec, size, mode, f in given) for f in rest]
            for values in itertools.product(*options):
                cell = Cell(name, size, mode, *values)
                if mode == "generate" and not _fits(cell, spec, filled):
                    continue
                selected.append(cell)
    return list(dict.fromkeys(selected))


@functools.cache
def _params(arch: str, size: str) -> int:
    return archs.param_count(arch, size)


def cost(cell: Cell) -> float:
    """A rough cost of `cell`, to balance shards: 2 FLOPs per parameter per token (or example)
    of the batch, three times that for a train step (forward and backward), the prompt and
    generated tokens for a generate cell. It undercounts convolutions, which reuse their
    parameters at every pixel; it only has to rank cells, not time them."""
    tokens = cells_.input_spec(cell).tokens_per_example or 1
    if cell.mode == "generate":
        tokens = cell.prompt_len + cell.gen_len
    batch = cell.batch if isinstance(cell.batch, int) else 1
    return 2.0 * _params(cell.arch, cell.size) * tokens * batch * (3 if cell.mode == "train" else 1)


def shards(selected: list[Cell], n: int) -> list[list[Cell]]:
    """`selected` dealt into `n` disjoint shards of about equal cost: the costliest cell first,
    each to the shard with the least cost so far (ties: the lower shard), every shard then in
    the selection's order. The same on every host, so the shards cover the selection."""
    load = [0.0] * n
    owner = {}
    for i in sorted(range(len(selected)), key=lambda i: -cost(selected[i])):
        k = min(range(n), key=lambda k: (load[k], k))
        owner[i] = k
        load[k] += cost(selected[i])
    return [[c for i, c in enumerate(selected) if owner[i] == k] for k in range(n)]


def _takes_sequences(name: str, size: str) -> bool:
    """Whether (name, size) has a sequence length to vary: any input but an image."""
    return archs.get(name).size(size).input.kind != "image"


def _fits(cell: Cell, spec, filled: bool) -> bool:
    """Whether a generate cell's prompt and generated tokens fit the model's positions; lengths
    the user gave always fit here (validate then says that they do not)."""
    max_len = spec.size(cell.size).config.get("max_len")  # Mamba: none
    return not filled or max_len is None or cell.prompt_len + cell.gen_len <= max_len


def _check_some_generate(names: list[str], asked: dict, filled: bool) -> None:
    """--mode generate, and nothing else, selected no cell: say why, in one line."""
    decoding = [n for n in names if can_decode(archs.get(n))]
    if not decoding:
        raise UserError(
            f"--mode generate applies to language models with a decode path "
            f"({', '.join(decode_archs())}); none among {', '.join(names)}"
        )
    if 1 not in asked["devices"]:
        raise UserError("--mode generate runs on one device; add 1 to --devices")
    if AUTO in asked["batch"] and len(asked["batch"]) == 1:
        raise UserError("--mode generate needs a batch size; 'auto' is for train and infer")
    if filled:
        prompt, gen = BY_NAME["prompt_len"].fill, BY_NAME["gen_len"].fill
        short = [
            f"{n} {s} ({archs.get(n).size(s).config.get('max_len')})"
            for n in decoding
            for s in asked["size"]
            if s in archs.get(n).sizes
        ]
        raise UserError(
            f"--mode generate: the default {prompt}-token prompt and {gen} generated tokens do "
            f"not fit the positions of {', '.join(short)}; give --prompt-len and --gen-len"
        )
