"""Issue 23: what a new user hit, each case as the user ran into it (results files made here)."""

import re

import pytest

import archbench
from archbench.cli.main import main
from tests.test_compare import make_row, write_results


def generate_row(arch, batch, prompt_len=8, gen_len=4, **kw):
    """One generate cell, as `archbench run --mode generate` records it."""
    row = make_row(arch, mode="generate", batch=batch, step_time_s=1e-4 * batch, **kw)
    row["extra_info"].update(
        prompt_len=prompt_len,
        gen_len=gen_len,
        samples_per_s=None,
        prefill_s=2e-4 * batch,
        decode_token_s=1e-4 * batch,
        decode_token_iqr_s=1e-5,
        decode_tokens_per_s=1e4,
        cache_bytes=6144,
        bandwidth_bytes_per_s=1.6e9,
        bandwidth_fraction=0.5,
    )
    return row


def test_report_of_generate_cells_only_at_two_batches(tmp_path):
    """The README's generation example (generate cells only, batch 1,2) crashed the report and
    archbench.plot in the scaling plots (a figure of 0 panels); the generation section draws
    them, the train/infer scaling plots say why they are left out."""
    rows = [generate_row(arch, batch) for arch in ("gpt", "llama", "mamba") for batch in (1, 2)]
    gen = write_results(tmp_path / "gen.json", rows)
    md = tmp_path / "gen.md"
    assert main(["report", gen, "-o", str(tmp_path / "gen.html"), "--md", str(md)]) == 0
    text = md.read_text()
    assert "generation_vs_batch.svg" in text
    figures = archbench.plot(gen)
    assert "generation_vs_batch" in figures and "step_time_vs_batch" not in figures
    with pytest.raises(archbench.UserError, match=r"generate cells.*generation_vs_batch"):
        archbench.plot(gen, "step_time_vs_batch")
    assert re.search(r"Step time vs batch size.*generate cells", text, re.S)
