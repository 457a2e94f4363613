"""Greedy tokens on the mesh equal transformers' greedy tokens (fp32, 48 new tokens, several grids)."""

from __future__ import annotations

import pytest

from waferllm.engine.sampling import SamplingParams
from waferllm.engine.textgen import prompt_ids

PROMPTS = [("What is the capital of France?", True), ("The three laws of robotics are", False),
           ("Write a haiku about silicon wafers.", True)]
N_NEW = 48
_HF: dict = {}


def _hf_tokens(hf_greedy, model, ids):
    key = tuple(ids)
    if key not in _HF:
        _HF[key] = hf_greedy(model, list(ids), N_NEW)
    return _HF[key]


@pytest.mark.slow
@pytest.mark.parametrize("grid, sram, prompts", [
    ("23x29", None, [0, 1]),  # unmodified wse2, rectangular, sides divide neither D=576 nor F=1536 nor Hkv=3
    ("20x20", None, [2]),  # square, unmodified wse2
    ("6x9", 1 << 22, [1, 2]),  # heads aligned with columns (9 = 3 KV heads x 3 columns), roomy cores
])
def test_greedy_equals_transformers(engine_for, smollm, hf_gguf_model, hf_greedy, grid, sram, prompts):
    eng = engine_for(grid, sram)
    tok = smollm[2]
    for i in prompts:
        text, chat = PROMPTS[i]
        ids = prompt_ids(tok, text, chat=chat)
        ours = [e.token_id for e in eng.generate(ids, SamplingParams(max_new_tokens=N_NEW, ignore_eos=True))]
        assert ours == _hf_tokens(hf_greedy, hf_gguf_model, ids), (grid, text)
    assert eng.ledger.peak_core_bytes <= eng.spec.sram_bytes_per_core or sram


def test_prompt_ids_equal_transformers_tokenizer(smollm, hf_tokenizer):
    tok = smollm[2]
    for text, chat in PROMPTS:
        ours = prompt_ids(tok, text, chat=chat)
        if chat:
            theirs = hf_tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                      tokenize=True)
            theirs = list(theirs["input_ids"]) if hasattr(theirs, "keys") else list(theirs)
        else:
            theirs = hf_tokenizer(text)["input_ids"]
        assert ours == theirs, text
