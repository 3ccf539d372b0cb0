"""Which synthetic pool `enigma sft` learns from, as its docstrings say: the pre-training pool for its rows, the
evaluation pool "test" for its held-out prompts, never a question of the GRPO pool "rl" or of the test pool."""

from __future__ import annotations

from enigma_cli.sft.config import SftConfig
from enigma_cli.sft.data import load_rows
from enigma_cli.tasks.synthetic import heldout_pool


def test_sft_rows_and_held_out_prompts_come_from_the_documented_pools():
    rows, held = load_rows(SftConfig(rows=300, eval_prompts=40))
    assert {heldout_pool(r.question) for r in rows} == {None}  # not held out: the pre-training pool
    assert {heldout_pool(e.question) for e in held} == {"test"}
