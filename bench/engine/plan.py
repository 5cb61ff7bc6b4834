"""A cell resolved once: everything the registry says of it, looked up and built one time.

`resolve(cell)` asks the registry in one place (the one `archs.get` of a cell's way through
the engine, then the size, the variant's fields and the size's builder), checks the cell
against the answers, then holds what compiling, counting, timing and the record need: the
size, the input spec with `seq_len` applied, the Linen module, its twins for counting
(unrolled, the default implementation, without remat: `Plan.twin`, built from the builder
held here), the number of outputs, the parameter counts (from the plan's own module) and
the record's identity keys (`Plan.keys`). Everything downstream takes the plan:
archbench.engine.program.compile_cell, measure, generate, aot, autobatch and outcome.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from archbench import archs
from archbench.archs.inputs import InputSpec
from archbench.archs.registry import Size
from archbench.engine.cell import DTYPES, Cell, cell_keys, check, with_seq_len
from archbench.errors import Unsupported


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """One cell, resolved: validated, its spec, size, inputs, module and counts at hand.

    `module` is None when the family could not build it; `error` then says why, and compiling
    the plan raises it (the record has status "error", as for any failing model). `params` and
    `active_params` are None when the model cannot be counted.
    """

    cell: Cell
    spec: archs.ArchSpec
    size: Size
    inputs: InputSpec  # the size's input with cell.seq_len applied
    variant_fields: dict  # the module fields the cell's implementation variant sets
    builder: Callable[..., Any]  # the module class with the size's config (ArchSpec.builder)
    module: Any = None
    error: BaseException | None = None
    num_outputs: int | None = None  # classes of a classifier, vocabulary of a language model
    params: int | None = None
    active_params: int | None = None

    def twin(self, **fields):
        """The cell's module with `fields` set: `unroll=` (counting every time step),
        `variant=None` (the family's default implementation), `remat="none"`; built from the
        size this plan holds, with the cell's dtype, variant and remat unless overridden."""
        variant = fields.pop("variant", self.cell.variant)
        if variant not in (None, self.cell.variant):
            raise ValueError(f"a twin has the cell's variant or None (the default), not {variant}")
        variant_fields = self.variant_fields if variant is not None else {}
        remat = {} if self.cell.remat is None else {"remat": self.cell.remat}
        config = {**variant_fields, **remat, **fields}
        return self.builder(dtype=DTYPES[self.cell.dtype], **config)

    def with_batch(self, batch: int) -> Plan:
        """This plan with another global batch (batch "auto" trying candidates); the caller
        passes multiples of the cell's batch shards (archbench.engine.cell.batch_shards)."""
        return dataclasses.replace(self, cell=dataclasses.replace(self.cell, batch=batch))

    @property
    def keys(self) -> dict:
        """The record's identity keys (archbench.engine.cell.IDENTITY_KEYS)."""
        counts = (self.params, self.active_params)
        return cell_keys(self.cell, self.spec, self.inputs, counts)


def resolve(cell: Cell, devices=None) -> Plan:
    """Validate `cell` (UserError, in one line, if it cannot be measured) and resolve it.

    `devices`: those the cell may use (a target topology's); None: the devices JAX sees here.
    A model that fails to build or count is no error here: the plan carries the failure.
    """
    spec = archs.get(cell.arch)
    size, variant_fields = spec.size(cell.size), dict(spec.variant(cell.variant))
    builder = spec.builder(cell.size)
    check(cell, spec, size, devices)
    inputs = with_seq_len(size.input, cell.seq_len)
    plan = Plan(cell, spec, size, inputs, variant_fields, builder)
    try:
        module = plan.twin()
    except Exception as exc:  # a broken model still gets a record, with status "error"
        return dataclasses.replace(plan, error=exc)
    outputs = module.num_classes if spec.task == "classify" else size.input.vocab_size
    params, active = _counts(plan, module, size.input)
    return dataclasses.replace(
        plan, module=module, num_outputs=outputs, params=params, active_params=active
    )


def _counts(plan: Plan, module, inputs: InputSpec) -> tuple[int | None, int | None]:
    """(params, active params) of the plan's module on the size's own input. A variant this
    backend cannot trace (archs.Unsupported) has the same parameters as the default one."""
    try:
        return archs.module_param_counts(module, inputs)
    except Unsupported:
        try:
            return archs.module_param_counts(plan.twin(variant=None), inputs)
        except Exception:
            return None, None
    except Exception:
        return None, None


def plan_of(cell_or_plan: Cell | Plan, devices=None) -> Plan:
    """A plan as is; a Cell resolved (the entry of callers that hold a Cell)."""
    return cell_or_plan if isinstance(cell_or_plan, Plan) else resolve(cell_or_plan, devices)
