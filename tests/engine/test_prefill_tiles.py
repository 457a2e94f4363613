"""Prefill on per-core tiles: random-weight checkpoints prefilled on prime and non-dividing grids, handed
off to the decode cache, then decoded; every position's logits within 1e-4 of transformers. The numeric
prefill charges exactly what its shape-only run charges."""

from __future__ import annotations

import numpy as np
import pytest

from waferllm.engine.generate import Engine
from waferllm.engine.prefill import layer_ledger
from waferllm.engine.prefill_tiles import embed_tiles, place_weights
from waferllm.machine import Ledger
from waferllm.model.hf_loader import load_hf_weights

BASE = dict(hidden_size=40, intermediate_size=70, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, rms_norm_eps=1e-5)
CASES = {  # (arch, config, decode grid, prefill grid)
    "llama-gqa": ("llama", dict(BASE, num_key_value_heads=2, vocab_size=211), "3x5", "5x7"),
    "llama-mha": ("llama", dict(BASE, num_key_value_heads=4, vocab_size=97, tie_word_embeddings=True), "4x4", "3x3"),
    "llama-mqa-hd12": ("llama", dict(BASE, num_key_value_heads=1, head_dim=12, vocab_size=101), "2x7", "7x2"),
    "qwen2-bias": ("qwen2", dict(BASE, num_key_value_heads=2, vocab_size=150), "5x3", "4x6"),
    "qwen2-6heads": ("qwen2", dict(BASE, hidden_size=48, num_attention_heads=6, num_key_value_heads=3,
                                   vocab_size=131, tie_word_embeddings=True), "3x6", "1x5"),
}
N_PROMPT, N_TOTAL = 9, 13


def _model(case, tmp_path, build_hf_model):
    arch, kwargs, grid, pgrid = CASES[case]
    model = build_hf_model(arch, kwargs, seed=11)
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg, weights = load_hf_weights(tmp_path)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, N_TOTAL).tolist()
    return model, cfg, weights, ids, grid, pgrid


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("policy", ["shift", "concat"])
def test_prefill_handoff_decode_logits_match_transformers(case, policy, tmp_path, build_hf_model, roomy):
    import torch

    model, cfg, weights, ids, grid, pgrid = _model(case, tmp_path, build_hf_model)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].float().numpy()
    eng = Engine(cfg, weights, roomy, grid=grid, prefill_grid=pgrid, max_tokens=16, kv_policy=policy)
    caches = eng.new_cache(1, eng.slots)
    _, logits, caches, ttft, p = eng.fill_lane(caches, 0, ids[:N_PROMPT], eng.slots)
    np.testing.assert_allclose(eng.logits_vector(logits), want[N_PROMPT - 1], atol=1e-4, rtol=0)
    assert p == N_PROMPT and ttft > 0
    for n in range(N_PROMPT, N_TOTAL):  # the handed-off cache serves the decode steps
        _, logits, caches = eng.step(caches, [ids[n]], [n], [p], [True])
        np.testing.assert_allclose(eng.logits_vector(logits[0]), want[n], atol=1e-4, rtol=0)


def test_numeric_prefill_layer_charges_what_the_shape_only_run_charges(tmp_path, build_hf_model, roomy):
    """One code path: the layer run on numbers (eagerly, into a real ledger) equals its shape-only trace."""
    _, cfg, weights, ids, grid, pgrid = _model("qwen2-bias", tmp_path, build_hf_model)
    eng = Engine(cfg, weights, roomy, grid=grid, prefill_grid=pgrid, max_tokens=16)
    pre = eng.pre
    led = Ledger(clock_hz=roomy.clock_hz)
    mesh = pre.mesh(led)
    w = place_weights(cfg, weights, mesh, pre.wdt)[0]
    x = embed_tiles(pre.layout(N_PROMPT), eng.tok_emb, ids[:N_PROMPT])
    with mesh.phase("prefill/layer"):
        pre.layer(mesh, w, x)
    want = layer_ledger(pre, N_PROMPT)
    assert led.phases.keys() == want.phases.keys()
    for k, ph in want.phases.items():
        assert led.phases[k].cycles == pytest.approx(ph.cycles, rel=1e-12), k
        assert led.phases[k].steps == ph.steps, k
    assert led.peak_core_bytes == want.peak_core_bytes


def test_compute_shift_steps_are_one_compiled_loop(tmp_path, build_hf_model, roomy):
    """A 22x30 prefill grid has lcm 330 steps per GEMM; the layer program stays small (a loop, not 330 copies)."""
    import jax

    _, cfg, weights, ids, _, _ = _model("llama-gqa", tmp_path, build_hf_model)
    eng = Engine(cfg, weights, roomy, grid="3x5", prefill_grid="22x30", max_tokens=16)
    x = embed_tiles(eng.pre.layout(N_PROMPT), eng.tok_emb, ids[:N_PROMPT])
    hlo = eng._pre_layer.lower(eng.pre_weights[0], x).as_text()
    assert hlo.count("while") >= 6  # the four GEMMs' compute-shift loops and attention's two (scores, P.V)
    assert len(hlo) < 400_000  # an unrolled 330-step program would be tens of MB
    assert jax.numpy.isfinite(eng._pre_layer(eng.pre_weights[0], x)[0]).all()
