"""Which cells to run: the matrix's filters, checked value by value, and their defaults.

`select(...)` turns comma lists of filters (as typed on the command line) into `CellRequest`s,
checking every value first; without filters it gives the main job (DEFAULTS). `split="K/N"`
keeps the K-th of N disjoint shards of them, so one matrix can be spread over array jobs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import jax

from archbench import archs
from archbench.archs import UserError
from archbench.archs._remat import REMATS
from archbench.engine import measure
from archbench.engine.cell import can_decode, can_remat, decode_archs, remat_archs
from archbench.engine.sharding import mesh_axes, parse_strategy

AUTO = "auto"
# The main job (`archbench run` with no filters): every architecture at its CPU size, both
# modes, float32 on one device. Batch 32 is one small-batch point common to every task
# (images, sequences, tokens), so cells compare across families; at 32 the slowest small
# cells (Transformer train) take about a second a step on two CPU cores. With 1.5 s of timed
# rounds per cell, the 38 cells of seventeen families took 4 min 2 s on two cores (lowering
# and compiling included; `make run` on 2026-12-03), well inside the fifteen minutes it may
# take. Generation (mode "generate") joins it for the language models that decode: a 64-token
# prompt, then 32 tokens one at a time, at batch 32 (gpt, llama, mamba, moe).
DEFAULTS = {"size": "small", "mode": "train,infer,generate", "batch": "32", "dtype": "float32"}
GENERATE_DEFAULTS = {"prompt_len": "64", "gen_len": "32"}


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
    sharding: str = "dp"
    mesh: str | None = None
    prompt_len: int | None = None
    gen_len: int | None = None
    variant: str | None = None
    remat: str | None = None

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
            raise _unknown("architecture", pattern, archs.names())
        chosen.extend(matched)
    return list(dict.fromkeys(chosen))


def _generate_lengths(modes, prompt_len, gen_len) -> list[tuple[int, int]]:
    """The (prompt_len, gen_len) pairs of the generate cells; UserError if given in vain."""
    if "generate" not in modes and (prompt_len is not None or gen_len is not None):
        raise UserError("--prompt-len and --gen-len apply to --mode generate")
    prompts = _positive_ints(
        "--prompt-len", _values("--prompt-len", prompt_len, GENERATE_DEFAULTS["prompt_len"])
    )
    gens = _positive_ints("--gen-len", _values("--gen-len", gen_len, GENERATE_DEFAULTS["gen_len"]))
    return [(p, g) for p in prompts for g in gens]


def _generate_requests(
    name, size, dtypes, device_counts, strategies, batches, mesh, lengths, defaults
) -> list[CellRequest]:
    """The generate cells of (name, size): none for a model without a decode path, and only
    on one device under dp at a given batch; default lengths only where they fit max_len."""
    if not can_decode(archs.get(name)) or mesh is not None:
        return []
    max_len = archs.get(name).size(size).config.get("max_len")
    return [
        CellRequest(name, size, "generate", b, d, 1, None, "dp", None, p, g)
        for d in dtypes
        if 1 in device_counts and "dp" in strategies
        for b in batches
        if b != AUTO
        for p, g in lengths
        if not (defaults and max_len is not None and p + g > max_len)
    ]


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
    sharding: str | None = None,
    mesh: str | None = None,
    split: str | None = None,
    target=None,
    prompt_len: str | None = None,
    gen_len: str | None = None,
    variant: str | None = None,
    remat: str | None = None,
) -> list[CellRequest]:
    """The cells a set of filters selects, each value checked before anything runs.

    Args:
      arch, size, mode, batch, dtype, devices, seq_len, sharding: comma lists as typed on the
        command line; None takes the main job's default (every architecture, `small`, train
        and infer, batch 32, float32, 1 device, each model's own sequence length, dp).
        Architecture names may be wildcards ('resnet*'); batch may be 'auto'. A size applies
        to the selected architectures that have it; a sequence length only to sequence models.
      mesh: one mesh for every cell, "data=2,model=2" (its sizes multiply to each device
        count); None: each strategy's own one-axis mesh.
      split: "K/N": only every N-th of the selected cells, from the K-th (1-based), so the
        N shards are disjoint, cover the selection and are about equally mixed.
      target: the devices of a TPU topology to compile for (archbench.engine.topology);
        None: this host's.
      prompt_len, gen_len: comma lists of prompt and generated lengths of mode "generate"
        (default 64 and 32, where they fit the model's positions). Generation applies to the
        language models with a decode path, on one device under dp, at a given batch; other
        cells of the selection get no generate cell.
      variant: comma list of implementation variants (`ArchSpec.variants`, e.g. Mamba's scan
        and assoc); each applies to the families that declare it, the others run as they are.
      remat: comma list of rematerialisation policies (none, full, dots: archbench.archs._remat)
        of the train cells of the families that have them; other cells run as they are.
    Returns:
      CellRequests in a stable order: architecture, size, mode, dtype, devices, sharding,
      batch, seq_len.
    Raises:
      UserError (one line, listing the valid choices) for any bad value.
    """
    shard = parse_split(split)
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
    available = jax.device_count() if target is None else len(target)
    for n in device_counts:
        if n > available:
            where = (
                "here" if target is None else f"in the target topology ({target[0].device_kind})"
            )
            raise UserError(
                f"--devices {n}: only {available} "
                f"{jax.default_backend() if target is None else 'TPU'} device(s) {where}"
            )
    seq_lens = _positive_ints("--seq-len", _values("--seq-len", seq_len, "")) or [None]
    lengths = _generate_lengths(modes, prompt_len, gen_len)
    defaults = prompt_len is None and gen_len is None  # then only where they fit
    strategies = list(dict.fromkeys(_values("--sharding", sharding, "dp")))
    for st in strategies:
        parse_strategy(st)
    for n in device_counts:
        for st in strategies:
            mesh_axes(st, n, mesh)

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
            if m == "generate":
                options = (dtypes, device_counts, strategies, batches, mesh, lengths)
                requests += _generate_requests(name, s, *options, defaults=defaults)
                continue
            for d in dtypes:
                for n in device_counts:
                    for st in strategies:
                        for b in batches:
                            for t in lens:
                                requests.append(CellRequest(name, s, m, b, d, n, t, st, mesh))
    if "generate" in modes and mode is not None and not any(r.mode == "generate" for r in requests):
        raise UserError(
            f"--mode generate applies to language models with a decode path "
            f"({', '.join(decode_archs())}) on one device under dp at a given batch; "
            f"none among {', '.join(names)}"
        )
    requests = _with_variants(requests, variant)
    requests = _with_remat(requests, remat)
    for r in requests:  # anything measure itself refuses, before anything runs
        unit = measure.batch_shards(r.cell(batch=1)) if r.batch == AUTO else None
        measure.validate(r.cell(batch=unit), target)
    if shard is not None:
        k, n = shard
        if k > len(requests):
            raise UserError(
                f"--split {split}: shard {k} is empty; the selection has only "
                f"{len(requests)} cell(s)"
            )
        requests = requests[k - 1 :: n]
    return requests


def _with_remat(requests: list[CellRequest], remat: str | None) -> list[CellRequest]:
    """Each train request of a family that can rematerialise once per asked-for policy."""
    if remat is None:
        return requests
    asked = list(dict.fromkeys(_values("--remat", remat, "")))
    for r in asked:
        if r not in REMATS:
            raise _unknown("remat", r, REMATS)
    out = []
    for r in requests:
        takes = r.mode == "train" and can_remat(archs.get(r.arch))
        out += [replace(r, remat=p) for p in asked] if takes else [r]
    if all(r.remat is None for r in out):
        raise UserError(
            f"--remat {remat}: applies to train cells of {', '.join(remat_archs())}; "
            "none is selected"
        )
    return out


def _with_variants(requests: list[CellRequest], variant: str | None) -> list[CellRequest]:
    """Each request once per asked-for variant its family declares (as it is if none)."""
    if variant is None:
        return requests
    asked = list(dict.fromkeys(_values("--variant", variant, "")))
    declared = {n: list(archs.get(n).variants) for n in archs.names() if archs.get(n).variants}
    every = sorted({v for vs in declared.values() for v in vs})
    for v in asked:
        if v not in every:
            raise _unknown("variant", v, every)
    out = []
    for r in requests:
        mine = [v for v in asked if v in archs.get(r.arch).variants] or [None]
        out += [replace(r, variant=v) for v in mine]
    if all(r.variant is None for r in out):
        have = "; ".join(f"{n}: {', '.join(vs)}" for n, vs in declared.items())
        raise UserError(f"--variant {variant}: none of the selected families has it ({have})")
    return out
