"""Each operation of a compiled program, its FLOPs and bytes, read from its optimized HLO text.

XLA's cost analysis gives totals for the whole program only (`compiled.cost_analysis()`); a
profile's trace gives a time per operation, named as in the optimized HLO (a fusion, a dot, a
copy, a custom call). This module reads that HLO (`compiled.as_text()`) and gives each
operation that runs its own cost, so the two can be joined by name.

What is counted, per operation:
- FLOPs: matrix products only, 2 per multiply-add. A dot is 2 * (its result's elements) *
  (the product of the lhs's contracting dimensions); a convolution is 2 * (its result's
  elements) * (the kernel's elements / its output features), which counts grouped
  convolutions right; a cuBLAS or cuDNN custom call by the dot dimensions in its backend config
  or the convolution's window. A fusion is the sum over the products inside it (nested fusions
  and calls included). Elementwise arithmetic, reductions and transcendentals are not counted,
  so an elementwise fusion has 0 FLOPs and is bounded by its bytes alone; custom calls other
  than those (fused attention, a Pallas kernel) have 0 FLOPs.
- Bytes: the sizes of the operation's operands plus its result, as XLA's buffers hold them
  (what a fusion reads from and writes to memory once each). Not counted: reuse inside the
  fusion, reads of only part of an operand (a gather, a dynamic slice), an output written in
  place over an operand (counted twice), caches.
- Calls per step: 1, times the known trip count of every while loop around the operation
  (`known_trip_count` in its backend config); a loop without one counts 1 (`trip_unknown`).

Operations that do no work of their own are left out: parameters, constants, tuples,
get-tuple-element and bitcasts. Loops, calls and conditionals are kept as "container" kinds:
their time in a trace holds their body's, which a caller must not count twice.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
CONTAINERS = {"while", "call", "conditional"}
_ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([^\]]*)\]")
_METADATA = re.compile(r',?\s*metadata=\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}')
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+)\s*=\s*(?P<rest>.*)$")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+(?:,\s*%[\w.\-]+)*)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_TARGET = re.compile(r'custom_call_target="([^"]+)"')


@dataclass
class Op:
    """One operation of the program as the trace names it."""

    name: str
    kind: str  # opcode; "dot fusion" / "convolution fusion" for a fusion holding a product
    flops: float  # per call (matrix products only)
    bytes: float  # per call: operands + result
    calls: int  # per step: the trip counts of the loops around it multiplied
    computation: str
    called: tuple[str, ...] = ()  # the computations it runs (a loop's body, a fusion's)
    trip_unknown: bool = False


@dataclass
class _Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str


def _bits(dtype: str) -> int:
    if dtype == "pred":
        return 8
    m = re.match(r"[a-z]+?(\d+)", dtype)
    return int(m.group(1)) if m else 0


def arrays(shape: str) -> list[tuple[str, list[int]]]:
    """The arrays of a shape text, `f32[4,16]{1,0}` or a tuple of them: [(dtype, dims)]."""
    found = []
    for dtype, dims in _ARRAY.findall(shape):
        if _bits(dtype) == 0:
            continue
        found.append((dtype, [int(d.lstrip("<=")) for d in dims.split(",") if d.strip()]))
    return found


def nbytes(shape: str) -> int:
    """Bytes of every array in a shape text."""
    return sum(math.prod(dims) * _bits(dtype) // 8 for dtype, dims in arrays(shape))


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis closing the one at `start`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in HLO: {text[:80]!r}")


def _instruction(line: str) -> _Instr | None:
    m = _INSTRUCTION.match(line)
    if m is None:
        return None
    rest = _METADATA.sub("", m["rest"])
    end = _closing(rest, 0) + 1 if rest.startswith("(") else rest.find(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    op = re.match(r"([\w\-]+)\(", rest)
    if op is None:
        return None
    close = _closing(rest, op.end() - 1)
    operands = [t.split()[-1].lstrip("%") for t in _split(rest[op.end() : close]) if t.split()]
    return _Instr(m["name"], shape, op.group(1), operands, rest[close + 1 :])


def _split(text: str) -> list[str]:
    """Split operands on top-level commas (an operand's shape may hold some)."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += c in "([{"
        depth -= c in ")]}"
        if c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def computations(hlo_text: str) -> tuple[dict[str, list[_Instr]], str]:
    """{computation name: its instructions} and the entry computation's name."""
    comps: dict[str, list[_Instr]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            m = re.match(r"(ENTRY\s+)?%?([^\s(]+)", line)
            if m is None or line.startswith("HloModule"):
                continue
            current = m.group(2)
            comps[current] = []
            entry = current if m.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            instr = _instruction(line)
            if instr is not None:
                comps[current].append(instr)
    return comps, entry


def _dims(attrs: str, key: str) -> list[int]:
    m = re.search(rf"\b{key}=\{{([\d,]*)\}}", attrs)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def _config_dims(attrs: str, key: str) -> list[int]:
    m = re.search(rf'"{key}":\[([^\]]*)\]', attrs)
    return [int(d.strip('" ')) for d in m.group(1).split(",") if d.strip('" ')] if m else []


def _product_flops(instr: _Instr, shapes: dict[str, str]) -> float:
    """FLOPs of a dot, a convolution, or a custom call that is one (cuBLAS, cuDNN); else 0."""
    result = arrays(instr.shape)
    if not result or not instr.operands:
        return 0.0
    target = _TARGET.search(instr.attrs)
    target = target.group(1) if target else ""
    if instr.opcode == "dot" or "gemm" in target or "matmul" in target:
        lhs = arrays(shapes.get(instr.operands[0], ""))
        contracting = _dims(instr.attrs, "lhs_contracting_dims") or _config_dims(
            instr.attrs, "lhs_contracting_dimensions"
        )
        if not lhs:
            return 0.0
        return 2.0 * math.prod(result[0][1]) * math.prod(lhs[0][1][d] for d in contracting)
    if instr.opcode == "convolution" or "$conv" in target:
        first = [arrays(shapes.get(o, ""))[:1] for o in instr.operands[:2]]
        if len(first) < 2 or not all(first):
            return 0.0
        (a,), (b,), (r,) = first[0], first[1], result[:1]
        # cuDNN's gradient calls keep the forward convolution's labels (XLA's GetGpuConvConfig)
        roles = {"BackwardInput": (r, b, a), "BackwardFilter": (a, r, b)}
        lhs, kernel, out = next((v for k, v in roles.items() if k in target), (a, b, r))
        return _conv_flops(instr.attrs, lhs[1], kernel[1], out[1])
    return 0.0


def _conv_flops(attrs: str, lhs: list[int], ker: list[int], out: list[int]) -> float:
    """2 * output batch * output features * input features per group * the (output position,
    kernel tap) pairs whose tap lands inside the input, per spatial dimension multiplied:
    padding and holes of a dilated input excluded, as XLA's cost analysis counts them.
    A batch-grouped convolution (a depthwise kernel's gradient) is counted the same way."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", attrs)
    if labels is None:
        return 0.0
    lhs_l, ker_l, out_l = labels.groups()
    window = re.search(r"window=\{([^}]*)\}", attrs)
    fields = dict(f.split("=", 1) for f in window.group(1).split()) if window else {}

    def per_dim(key: str, default):
        raw = fields.get(key)
        return [default] * (len(lhs_l) - 2) if raw is None else raw.split("x")

    pairs = 1
    sizes, strides = per_dim("size", "1"), per_dim("stride", "1")
    pads, lhs_dil, rhs_dil = (
        per_dim("pad", "0_0"),
        per_dim("lhs_dilate", "1"),
        per_dim("rhs_dilate", "1"),
    )
    for d in range(len(lhs_l) - 2):
        n_in, n_out = lhs[lhs_l.index(str(d))], out[out_l.index(str(d))]
        pad_lo, dil, kdil = int(pads[d].split("_")[0]), int(lhs_dil[d]), int(rhs_dil[d])
        span = (n_in - 1) * dil + 1
        pairs *= sum(
            1
            for o in range(n_out)
            for k in range(int(sizes[d]))
            if 0 <= (i := o * int(strides[d]) - pad_lo + k * kdil) < span and i % dil == 0
        )
    batch, features = out[out_l.index("b")], out[out_l.index("f")]
    return 2.0 * batch * features * ker[ker_l.index("i")] * pairs


def _called(instr: _Instr) -> list[str]:
    names = [n.strip().lstrip("%") for _, g in _CALLED.findall(instr.attrs) for n in g.split(",")]
    m = _BRANCHES.search(instr.attrs)
    if m:
        names += [n.strip().lstrip("%") for n in m.group(1).split(",") if n.strip()]
    return names


def _inner_flops(comp: str, comps: dict[str, list[_Instr]], seen: dict[str, float]) -> float:
    """FLOPs of the products in a computation and what it calls (a fusion's body)."""
    if comp not in seen:
        seen[comp] = 0.0  # a cycle cannot happen in HLO; this only guards the recursion
        body = comps.get(comp, [])
        shapes = {i.name: i.shape for i in body}
        total = 0.0
        for instr in body:
            total += _product_flops(instr, shapes)
            total += sum(_inner_flops(c, comps, seen) for c in _called(instr))
        seen[comp] = total
    return seen[comp]


def _kind(instr: _Instr, comps: dict[str, list[_Instr]]) -> str:
    if instr.opcode == "custom-call":
        target = _TARGET.search(instr.attrs)
        return f"custom-call {target.group(1)}" if target else "custom-call"
    if instr.opcode != "fusion":
        return instr.opcode
    inner = {i.opcode for c in _called(instr) for i in comps.get(c, [])}
    for product in ("convolution", "dot"):
        if product in inner:
            return f"{product} fusion"
    return "fusion"


def operations(hlo_text: str) -> dict[str, Op]:
    """Every operation that runs in a compiled program, by name: the entry computation's and
    those of the loops, calls and conditionals it runs (not a fusion's insides).

    Raises:
      ValueError when the text holds no entry computation.
    """
    comps, entry = computations(hlo_text)
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    ops: dict[str, Op] = {}
    seen: dict[str, float] = {}
    todo = [(entry, 1, False)]
    while todo:
        comp, calls, unknown = todo.pop()
        shapes = {i.name: i.shape for i in comps.get(comp, [])}
        for instr in comps.get(comp, []):
            if instr.opcode in FREE:
                continue
            called = tuple(_called(instr))
            flops = _product_flops(instr, shapes)
            if instr.opcode not in CONTAINERS:
                flops += sum(_inner_flops(c, comps, seen) for c in called)
            size = nbytes(instr.shape) + sum(nbytes(shapes.get(o, "")) for o in instr.operands)
            ops[instr.name] = Op(
                instr.name, _kind(instr, comps), flops, size, calls, comp, called, unknown
            )
            if instr.opcode in CONTAINERS:
                trip = _TRIP.search(instr.attrs) if instr.opcode == "while" else None
                n = int(trip.group(1)) if trip else 1
                gone = unknown or (instr.opcode == "while" and trip is None)
                todo += [(c, calls * n, gone) for c in called]
    return ops


def product_flops(hlo_text: str) -> float:
    """FLOPs of every matrix product one call of the program runs (loops' trip counts in)."""
    return sum(op.flops * op.calls for op in operations(hlo_text).values())
