"""Sharding strategies: each one's train step against the same step on one device.

The sharded runs happen in a subprocess with four simulated CPU devices. Each strategy's
step is compiled as the benchmark compiles it (engine.program.compile_cell, from the state's
shapes and shardings alone: the values come from the one device, so no sharded init is run),
is given the one-device cell's initial state and batch (placed with the strategy's own
shardings), takes one step, and must give the same loss and the same updated parameters as
the one device, within float32 tolerance. The strategies are tables from the
logical axes the families name (archbench.archs._logical) to mesh axes: a family gets tp or
ep because it names their axes, whatever its layers are called.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from archbench import archs
from archbench.archs import Unsupported, UserError
from archbench.engine import analysis, sharding
from archbench.engine.cell import Cell, from_id, validate
from tests import xla_flags

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from archbench.engine.cell import Cell
    from archbench.engine.outcome import failure
    from archbench.engine.program import compile_cell
    from archbench.engine.sharding import path_keys, path_text

    def host(a):
        # placed from a copy on the host: no resharding program to compile for each shape, and
        # the step, which donates its state, never writes into the arrays kept for later runs
        is_key = jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)
        return jax.random.clone(a) if is_key else np.array(a, copy=True)

    def one_step(compiled, target, state, batch):
        # target: the step's arguments (arrays or shapes) with this strategy's shardings
        leaves = [host(a) for a in jax.tree.leaves((state, batch))]
        values = jax.tree.unflatten(jax.tree.structure(target), leaves)
        where = jax.tree.map(lambda a: a.sharding, target)
        new_state, metrics = compiled(*jax.device_put(values, where))
        params = jax.tree.map(np.asarray, new_state.params)
        return float(metrics["loss"]), params

    def placed(state):
        # each parameter's shard shape; [matched, mismatched]: optimizer moments mirroring a
        # parameter (same path tail and shape) with and without its sharding
        leaves = jax.tree_util.tree_leaves_with_path(state.params)
        shards = {path_text(k): list(a.sharding.shard_shape(a.shape)) for k, a in leaves}
        by_keys = {path_keys(k): a for k, a in leaves}
        same = [0, 0]
        for k, m in jax.tree_util.tree_leaves_with_path(state.opt_state):
            keys = path_keys(k)
            tails = [keys[i:] for i in range(len(keys)) if keys[i:] in by_keys]
            if tails and by_keys[tails[0]].shape == m.shape:
                same[m.sharding != by_keys[tails[0]].sharding] += 1
        return shards, same

    def reference(arch):
        # one device's step (the counts of the record are not compared here: compiled without)
        ref, (state, batch), _ = compile_cell(Cell(arch, "tiny", "train", 8, "float32"),
                                              jax.devices()[:1], count=False)
        return (state, batch), one_step(ref, (state, batch), state, batch)

    out = {}
    for arch, strategies in json.loads(sys.argv[1]).items():
        ref = None  # built for the first strategy that compiles: none may (resnet under tp)
        for strategy, mesh in strategies:
            cell = Cell(arch, "tiny", "train", 8, "float32", 4, sharding=strategy, mesh=mesh)
            try:
                compiled, shapes, facts = compile_cell(
                    cell, jax.devices()[:4], abstract=True, count=False
                )
            except Exception as e:
                out[cell.id] = {"status": failure(cell, e)["status"]}
                continue
            ref = ref or reference(arch)
            (state, batch), (loss1, params1) = ref
            specs = {str(a.sharding.spec) for a in jax.tree.leaves(shapes[0].params)}
            shards, moments = placed(shapes[0])
            loss, params = one_step(compiled, shapes, state, batch)
            diff = max(
                float(np.max(np.abs(a - b)))
                for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params))
            )
            out[cell.id] = {
                "status": "ok", "loss": [loss1, loss], "max_param_diff": diff,
                "specs": sorted(specs), "argument_bytes": facts["argument_bytes"],
                "collectives": facts["collectives"], "shards": shards, "moments": moments,
            }
    print(json.dumps(out))
    """
)

CASES = {
    # MLP tiny: 32 hidden units (mlp), 8 per device under tp; no experts, so no ep
    "mlp": [["dp", None], ["fsdp", None], ["tp", None], ["ep", None]],
    # GPT tiny has 2 heads: tensor parallel over model=2, data parallel over the other 2
    "gpt": [["dp", None], ["fsdp", None], ["tp", "data=2,model=2"], ["fsdp+tp", "data=2,model=2"]],
    # Llama tiny: grouped-query attention (4 query heads, 2 key/value heads) and SwiGLU
    "llama": [["fsdp", None], ["tp", "data=2,model=2"]],
    # Mixture of Experts tiny: 4 experts, one per device under expert parallelism; under tp
    # its heads and every expert's hidden units
    "moe": [["ep", None], ["tp", "data=2,model=2"]],
    # Mamba tiny: 64 inner channels (mlp), split over model=2 with the conv, A and D
    "mamba": [["tp", "data=2,model=2"]],
    # LeNet-5 tiny: its F6 layer's 8 units (mlp); the convolutions stay whole
    "lenet5": [["tp", None]],
    # ResNet names conv_in, conv_out and classes only: nothing tp splits
    "resnet": [["tp", None]],
}


@pytest.fixture(scope="module")
def four_devices():
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags.with_devices(4),
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "cell_id",
    [
        "mlp-tiny-train-b8-float32-d4",
        "mlp-tiny-train-b8-float32-d4-sfsdp",
        "gpt-tiny-train-b8-float32-d4",
        "gpt-tiny-train-b8-float32-d4-sfsdp",
        "gpt-tiny-train-b8-float32-d4-stp-mdata2model2",
        "gpt-tiny-train-b8-float32-d4-sfsdp+tp-mdata2model2",
        "llama-tiny-train-b8-float32-d4-sfsdp",
        "llama-tiny-train-b8-float32-d4-stp-mdata2model2",
        "moe-tiny-train-b8-float32-d4-sep",
        "mlp-tiny-train-b8-float32-d4-stp",
        "moe-tiny-train-b8-float32-d4-stp-mdata2model2",
        "mamba-tiny-train-b8-float32-d4-stp-mdata2model2",
        "lenet5-tiny-train-b8-float32-d4-stp",
    ],
)
def test_sharded_step_matches_one_device(four_devices, cell_id):
    r = four_devices[cell_id]
    assert r["status"] == "ok"
    loss1, loss = r["loss"]
    assert loss == pytest.approx(loss1, rel=1e-5)
    assert r["max_param_diff"] < 1e-5
    if "-s" not in cell_id:  # dp: every parameter replicated, one gradient all-reduce
        assert not any("data" in s or "model" in s for s in r["specs"])
        assert "all-reduce" in r["collectives"]
    if "fsdp" in cell_id:
        assert any("data" in s for s in r["specs"])
        assert "all-gather" in r["collectives"]
    if "tp" in cell_id:
        assert any("model" in s for s in r["specs"])
    if "-sep" in cell_id:  # the experts' (E, ...) weights split, one expert per device
        assert "P('data', None, None)" in r["specs"]
    matched, mismatched = r["moments"]  # adamw's mu and nu: two per parameter
    assert matched == 2 * len(r["shards"]) and mismatched == 0


def test_fsdp_splits_the_state_a_quarter_per_device(four_devices):
    dp = four_devices["gpt-tiny-train-b8-float32-d4"]["argument_bytes"]
    fsdp = four_devices["gpt-tiny-train-b8-float32-d4-sfsdp"]["argument_bytes"]
    assert fsdp < 0.5 * dp


def test_shards_are_what_the_tables_imply(four_devices):
    """Per device, under tp over model=2: heads and hidden units halved, the rest whole;
    under fsdp+tp also the largest free dimension halved over data=2 (GPT tiny: width 32,
    2 heads of 16, 128 hidden units, 128 tokens)."""
    tp = four_devices["gpt-tiny-train-b8-float32-d4-stp-mdata2model2"]["shards"]
    assert tp["/block_0/self_attn/query/kernel"] == [32, 1, 16]  # (embed, heads, kv)
    assert tp["/block_0/self_attn/query/bias"] == [1, 16]  # (heads, kv)
    assert tp["/block_0/self_attn/out/kernel"] == [1, 16, 32]  # (heads, kv, embed): by rows
    assert tp["/block_0/mlp/fc/kernel"] == [32, 64]  # (embed, mlp): by columns
    assert tp["/block_0/mlp/proj/kernel"] == [64, 32]  # (mlp, embed): by rows
    assert tp["/block_0/mlp/proj/bias"] == [32]  # (embed,): whole, added after the reduction
    assert tp["/token_embed/embedding"] == [128, 32]  # (vocab, embed): no tp axis
    both = four_devices["gpt-tiny-train-b8-float32-d4-sfsdp+tp-mdata2model2"]["shards"]
    assert both["/block_0/mlp/fc/kernel"] == [16, 64]
    assert both["/block_0/self_attn/query/kernel"] == [16, 1, 16]
    assert both["/token_embed/embedding"] == [64, 32]
    fsdp = four_devices["gpt-tiny-train-b8-float32-d4-sfsdp"]["shards"]
    assert fsdp["/block_0/mlp/fc/kernel"] == [32, 32]  # the largest dimension over data=4
    ep = four_devices["moe-tiny-train-b8-float32-d4-sep"]["shards"]
    assert ep["/block_0/mlp/experts/w1"] == [1, 32, 64]  # (expert, embed, mlp): one expert
    assert ep["/block_0/mlp/router/kernel"] == [32, 4]  # (embed, None): every device routes
    moe_tp = four_devices["moe-tiny-train-b8-float32-d4-stp-mdata2model2"]["shards"]
    assert moe_tp["/block_0/mlp/experts/w2"] == [4, 32, 32]  # (expert, mlp, embed): by rows
    assert moe_tp["/block_0/attention/key/kernel"] == [32, 1, 8]  # (embed, kv_heads, kv)
    mlp_tp = four_devices["mlp-tiny-train-b8-float32-d4-stp"]["shards"]
    assert mlp_tp["/Dense_0/kernel"] == [784, 8] and mlp_tp["/Dense_1/kernel"] == [8, 10]


def test_a_family_naming_no_axis_of_the_table_is_unsupported(four_devices):
    assert four_devices["resnet-tiny-train-b8-float32-d4-stp"] == {"status": "unsupported"}
    assert four_devices["mlp-tiny-train-b8-float32-d4-sep"] == {"status": "unsupported"}
    layout = sharding.layout("tp", jax.devices()[:1])
    shapes = {"Dense_0": {"kernel": jax.ShapeDtypeStruct((8, 4), jnp.float32)}}
    with pytest.raises(Unsupported, match="tp splits heads, kv_heads, mlp; this family names"):
        layout.state(shapes, {("Dense_0", "kernel"): ("conv_in", "conv_out")})
    with pytest.raises(Unsupported, match="names none"):
        layout.state(shapes)  # no names at all


def test_tables_map_logical_axes_that_families_name():
    """Every table's key is a logical axis some registered family names: the tables speak
    the families' language, not their layers' names."""
    named = set()
    for arch in archs.names():
        spec = archs.get(arch)
        names = archs.logical_axes(spec.build("tiny"), spec.size("tiny").input)
        named |= {n for dims in names.values() for n in dims if n}
    for part in sharding.PARTS.values():
        assert set(part.table) <= named, part
    assert {"heads", "mlp", "expert", "embed", "vocab", "conv_out"} <= named


def test_specs_follow_the_names_then_the_fill():
    sizes = {"data": 2, "model": 2}
    spec = sharding.spec_of
    assert spec(("embed", "heads", "kv"), (32, 2, 16), ("tp",), sizes) == (None, "model", None)
    assert spec(("embed", "heads", "kv"), (32, 2, 16), ("fsdp", "tp"), sizes) == (
        "data",
        "model",
        None,
    )
    assert spec(("expert", "embed", "mlp"), (4, 32, 64), ("ep",), sizes) == ("data", None, None)
    assert spec(("mlp", "mlp"), (8, 8), ("tp",), sizes) == ("model", None)  # one axis once
    with pytest.raises(Unsupported, match="3 along 'heads' is not divisible by model=2"):
        spec(("embed", "heads", "kv"), (32, 3, 16), ("tp",), sizes)
    # an optimizer moment takes the names of the parameter whose path ends its own
    logical = {("block_0", "mlp", "fc", "kernel"): ("embed", "mlp")}
    keys = ("opt_state", "0", "mu", "block_0", "mlp", "fc", "kernel")
    assert sharding.names_at(keys, 2, logical) == ("embed", "mlp")
    assert sharding.names_at((*keys[:-1], "bias"), 1, logical) == (None,)
    # fsdp: the largest dimension the data axis divides; an indivisible array stays whole
    assert sharding.fsdp_spec((784, 512), 4, (None, None)) == ("data", None)
    assert sharding.fsdp_spec((10,), 4, (None,)) == (None,)
    assert sharding.fsdp_spec((128, 32), 2, ("model", None)) == ("model", "data")


@pytest.mark.parametrize(
    ("strategy", "devices", "mesh", "words"),
    [
        ("zero", 4, None, "unknown sharding"),
        ("tp", 4, "data=3,model=2", "multiply to 6"),
        ("tp", 4, "data=4", "no 'model' axis"),
        ("dp", 4, "data=2,pipe=2", "AXIS=SIZE"),
        ("fsdp+tp", 4, None, "needs --mesh"),
        ("ep", 4, "model=4", "no 'data' axis"),
    ],
)
def test_bad_strategies_and_meshes_are_one_line_errors(strategy, devices, mesh, words):
    with pytest.raises(UserError, match=words):
        sharding.mesh_axes(strategy, devices, mesh)


def test_cell_ids_name_the_strategy_and_mesh_and_parse_back():
    cell = Cell("gpt", "tiny", "train", 8, "float32", 4, sharding="fsdp+tp", mesh="data=2,model=2")
    assert cell.id == "gpt-tiny-train-b8-float32-d4-sfsdp+tp-mdata2model2"
    assert from_id(cell.id) == cell
    assert Cell("gpt", "tiny", "train", 8, "float32", 4).id == "gpt-tiny-train-b8-float32-d4"


def test_batch_must_divide_into_the_strategys_batch_shards(monkeypatch):
    monkeypatch.setattr("jax.devices", lambda: [object()] * 4)
    with pytest.raises(UserError, match="2 batch shards"):
        validate(
            Cell("gpt", "tiny", "train", 3, "float32", 4, sharding="tp", mesh="data=2,model=2")
        )


def test_collectives_are_read_from_hlo_text_with_tuples():
    hlo = (
        "%all-reduce.8 = (f32[512]{0}, f32[10,512]{1,0}, /*index=2*/f32[]) all-reduce(%a, %b, %c)\n"
        "%ag = bf16[8,16]{1,0} all-gather(%x), dimensions={0}\n"
        "%ags = (f32[2,4]{1,0}, f32[8,4]{1,0}) all-gather-start(%y)\n"
        "%agd = f32[8,4]{1,0} all-gather-done(%ags)\n"
    )
    found = analysis.collectives(hlo)
    assert found["all-reduce"] == {"count": 1, "bytes": 4 * (512 + 5120 + 1)}
    assert found["all-gather"] == {"count": 2, "bytes": 2 * 128 + 4 * 32}
    assert found["reduce-scatter"] == {"count": 0, "bytes": 0}


def test_a_collective_split_over_tpu_async_fusions_is_counted_once():
    # XLA's TPU compiler puts a copy of one asynchronous all-gather (one channel_id) in its
    # start fusion, in each fusion that overlaps it with compute, and in its done fusion.
    piece = (
        "  %all-gather.{n} = bf16[8,1024,64]{{1,2,0:T(8,128)(2,1)}} all-gather(%param_0.{n}), "
        "channel_id=578, replica_groups=mesh['axis_0'=4] {{'axis_0'}}, dimensions={{0}}\n"
    )
    hlo = "".join(piece.format(n=n) for n in range(4)) + (
        "  %all-gather.9 = bf16[8,1024,64]{1,2,0} all-gather(%p), channel_id=579, dimensions={0}\n"
        "  %all-reduce.1 = f32[16]{0} all-reduce(%q), channel_id=578, to_apply=%add\n"
        "  %all-reduce.2 = f32[16]{0} all-reduce(%r), to_apply=%add\n"
        "  %all-reduce.3 = f32[16]{0} all-reduce(%s), to_apply=%add\n"
    )
    found = analysis.collectives(hlo)
    assert found["all-gather"] == {"count": 2, "bytes": 2 * 2 * 8 * 1024 * 64}
    assert found["all-reduce"] == {"count": 3, "bytes": 3 * 4 * 16}  # no channel: each counts


def test_report_has_a_strategy_table_with_efficiency_and_a_memory_plot(tmp_path):
    from archbench.cli.main import main
    from tests.test_compare import make_row, write_results

    def row(devices, strategy, step, argument_bytes, mesh=None):
        return make_row(
            "gpt", step_time_s=step, devices=devices, sharding=strategy,
            mesh=mesh or f"data={devices}", argument_bytes=argument_bytes, temp_bytes=1000,
            collective_count=0 if devices == 1 else 1,
            collective_bytes=0 if devices == 1 else 4096,
            collectives={} if devices == 1 else {"all-reduce": {"count": 1, "bytes": 4096}},
        )  # fmt: skip

    rows = [
        row(1, "dp", 0.04, 4_000_000),
        row(2, "dp", 0.025, 4_000_000),
        row(4, "dp", 0.02, 4_000_000),
        row(2, "fsdp", 0.03, 2_000_000),
        row(4, "fsdp", 0.016, 1_000_000),
        make_row("mlp", devices=4, sharding="tp", mesh="model=4", status="unsupported",
                 error="Unsupported: no tensor-parallel rule matches this family's parameters"),
    ]  # fmt: skip
    path = write_results(tmp_path / "r.json", rows, device_count=4)
    md = tmp_path / "r.md"
    assert main(["report", path, "--md", str(md)]) == 0
    text = md.read_text()
    table = text.split("## Sharding strategies", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in table.splitlines() if line.startswith("| ")][1:]  # no header
    assert len(lines) == 5  # every cell on several devices; the one-device dp cell is the base
    by_cell = {tuple(c.strip() for c in line.split("|")[3:5]): line for line in lines}
    assert "50%" in by_cell[("4", "dp")]  # 0.04 / (4 * 0.02)
    assert "62.5%" in by_cell[("4", "fsdp")]  # 0.04 / (4 * 0.016)
    assert "977 KiB" in by_cell[("4", "fsdp")] and "all-reduce ×1" in by_cell[("4", "fsdp")]
    assert "unsupported: Unsupported: no tensor-parallel rule" in by_cell[("4", "tp")]
    assert (tmp_path / "r_files" / "memory_vs_devices.svg").exists()
    assert (tmp_path / "r_files" / "step_time_vs_devices.svg").exists()
