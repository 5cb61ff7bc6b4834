"""Selecting generate cells: the error names the real cause, other modes still run, and the
API fills in the documented default lengths (issue 23, item 2)."""

from __future__ import annotations

import pytest

import archbench
from archbench.engine import cell as cells_
from archbench.engine.cell import Cell
from archbench.errors import UserError
from archbench.matrix import cells


def test_generate_that_does_not_fit_says_so():
    # gpt tiny has 16 positions; the default prompt (64) and generated tokens (32) do not fit
    with pytest.raises(UserError, match=r"64-token prompt .* positions of gpt tiny \(16\)"):
        cells.select(arch="gpt", size="tiny", mode="generate", batch="1")


def test_generate_beside_other_modes_does_not_refuse_them():
    chosen = cells.select(arch="gpt", size="tiny", mode="generate,train")
    assert [c.mode for c in chosen] == ["train"]


def test_generate_of_a_model_without_a_decode_path():
    with pytest.raises(UserError, match=r"decode path .*none among mlp"):
        cells.select(arch="mlp", size="tiny", mode="generate")


def test_generate_cells_take_the_default_lengths_where_they_fit():
    (mamba,) = cells.select(arch="mamba", size="tiny", mode="generate")  # no position limit
    assert (mamba.prompt_len, mamba.gen_len) == (64, 32)
    given = cells.select(arch="gpt", size="tiny", mode="generate", prompt_len="8", gen_len="4")
    assert [(c.prompt_len, c.gen_len) for c in given] == [(8, 4)]


def test_the_api_fills_in_the_default_lengths(monkeypatch):
    from archbench.engine import run

    seen = []
    monkeypatch.setattr(run, "_generate", lambda plan, *args, **kw: seen.append(plan.cell) or {})
    archbench.measure("mamba", "tiny", mode="generate", batch=2)
    assert (seen[0].prompt_len, seen[0].gen_len) == (64, 32)
    assert cells_.filled(Cell("gpt", "tiny", "train")).prompt_len is None  # not for train


def test_split_deals_shards_of_about_equal_cost():
    every = cells.select(arch="gpt,llama,mlp,lstm", size="tiny", mode="train,infer")
    parts = [cells.select(arch="gpt,llama,mlp,lstm", size="tiny", mode="train,infer",
                          split=f"{k}/2") for k in (1, 2)]  # fmt: skip
    assert sorted(c.id for p in parts for c in p) == sorted(c.id for c in every)
    assert not {c.id for c in parts[0]} & {c.id for c in parts[1]}
    assert {c.mode for c in parts[0]} == {"train", "infer"}  # not every train cell in shard 1
    costs = [sum(cells.cost(c) for c in p) for p in parts]
    assert max(costs) <= 1.5 * min(costs)
