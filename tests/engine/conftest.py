"""Engines shared across the engine tests (placing and compiling one costs ~10 s)."""

from __future__ import annotations

import pytest

from waferllm.spec import get_device

_ENGINES: dict = {}


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    """transformers' greedy continuation (no EOS stop), with its KV cache."""
    import torch

    out, past = [], None
    x = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            res = model(x, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            x = torch.tensor([[nxt]])
    return out


@pytest.fixture(scope="session")
def hf_greedy():
    """(transformers model, prompt ids, n) -> n greedy tokens."""
    return _hf_greedy


@pytest.fixture(scope="session")
def engine_for(smollm):
    """engine_for(grid, sram=None, dtype='float32') -> a cached Engine for the bundled model."""
    from waferllm.engine.generate import Engine

    cfg, weights, tok = smollm

    def make(grid: str, sram: int | None = None, dtype: str = "float32", max_tokens: int = 128):
        key = (grid, sram, dtype, max_tokens)
        if key not in _ENGINES:
            spec = get_device("wse2") if sram is None else get_device("wse2").replace(sram_bytes_per_core=sram)
            _ENGINES[key] = Engine(cfg, weights, spec, grid=grid, dtype=dtype, max_tokens=max_tokens, tokenizer=tok)
        return _ENGINES[key]

    return make
