"""The matrix product of every dense layer: its inputs' leading dimensions flattened to one.

`nn.Dense` and `nn.DenseGeneral` contract an input of shape (B, T, D) with a kernel (D, F)
as one `lax.dot_general`. Its gradient with respect to the kernel then contracts over two
dimensions, B and T, and XLA:CPU (jaxlib 0.12) lays that product out as a dot whose left
operand contracts its dimension 0 and whose right operand contracts its dimension 1, after
transposing the output gradient. That form runs on XLA's own dot emitter at about a third
of the speed of the others: (4096 x 128)^T times (1024 x 4096)^T in 32.7 ms, 33 GFLOP/s,
against 10.3 ms for the same product with both operands contracting dimension 0 (one
thread, 2-core AMD EPYC VM, `taskset -c 0 python -m archbench.checks.cpu_forms`; every
Transformer and Mixer family's training step had such dots: docs/performance.md, "Weight
gradients on the slow dot form").

Written as (B*T, D) times (D, F), the kernel's gradient contracts one dimension and XLA
keeps both operands as they are. On a GPU or TPU the reshapes are free (a bitcast).
jax-ml/jax#19327 (open) is XLA:CPU's speed depending on the dimension order of a dot.
"""

import math

from jax import lax


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """lax.dot_general, with a layer's product x @ kernel done on 2-D operands.

    The flattened form applies where `lhs`'s trailing dimensions contract `rhs`'s leading
    ones and there are no batch dimensions (what nn.Dense and nn.DenseGeneral over trailing
    axes pass); any other product is lax.dot_general's own. Same products, same sums: the
    outputs differ at most by float32 rounding.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n = len(lhs_contract)
    kept = lhs.ndim - n
    flattenable = (
        not lhs_batch
        and not rhs_batch
        and tuple(lhs_contract) == tuple(range(kept, lhs.ndim))
        and tuple(rhs_contract) == tuple(range(n))
        and kept > 1
    )
    if not flattenable:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
    lead, inner, features = lhs.shape[:kept], math.prod(lhs.shape[kept:]), rhs.shape[n:]
    out = lax.dot_general(
        lhs.reshape(math.prod(lead), inner),
        rhs.reshape(inner, math.prod(features)),
        (((1,), (0,)), ((), ())),
        precision,
        preferred_element_type,
    )
    return out.reshape(*lead, *features)
