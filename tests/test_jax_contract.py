"""What archbench reads from JAX, checked on a program whose answer is known exactly.

These are the parts of JAX's API that moved between releases before (cost analysis returned a
list of dicts, then a dict; memory analysis gained fields): a rename or a change of meaning in
the pinned jax fails here, not as a silently empty column in a report.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding

from archbench.engine import analysis
from archbench.engine.devices import data_parallel

M, K, N = 32, 64, 16


@pytest.fixture(scope="module")
def matmul():
    a, b = jnp.ones((M, K), jnp.float32), jnp.ones((K, N), jnp.float32)
    lowered = jax.jit(lambda a, b: a @ b).lower(a, b)
    return lowered, lowered.compile()


def test_cost_analysis_counts_a_matmul_exactly(matmul):
    lowered, compiled = matmul
    for stage in (lowered, compiled):
        flops, accessed = analysis.cost(stage)
        assert flops == 2 * M * K * N
        assert accessed is not None and accessed >= 4 * (M * K + K * N + M * N)


def test_memory_analysis_sizes_arguments_and_outputs(matmul):
    memory = analysis.compiled_memory(matmul[1])
    assert memory["argument_bytes"] == 4 * (M * K + K * N)
    assert memory["output_bytes"] == 4 * M * N
    assert memory["temp_bytes"] >= 0 and memory["alias_bytes"] == 0
    assert memory["compiled_bytes"] == (
        memory["argument_bytes"] + memory["output_bytes"] + memory["temp_bytes"]
    )


def test_data_parallel_shardings_are_named_over_a_data_axis():
    replicated, batch = data_parallel(jax.devices()[:1])
    assert isinstance(replicated, NamedSharding) and isinstance(batch, NamedSharding)
    assert batch.mesh.axis_names == ("data",)
    assert tuple(batch.spec) == ("data",) and tuple(replicated.spec) == ()
