"""GGUF loading: the bundled SmolLM2 against transformers, and small GGUF files written here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from waferllm.model import PRESETS, ModelError
from waferllm.model.gguf_loader import load_gguf_weights, unpermute_qk_rows
from waferllm.model.hf_loader import load_hf_weights
from waferllm.model.reference import forward, greedy

PROMPTS = {
    "chat": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    "raw": "The three primary colors are",
}
N_NEW = 24


def test_bundled_config_matches_preset(smollm):
    config, weights, _ = smollm
    preset = PRESETS["smollm2-135m"]
    assert config == preset  # float32 metadata (eps 9.99999975e-06) is read back as the source's 1e-05
    weights.validate(config)
    assert np.shares_memory(weights.lm_head, weights.tok_emb)  # tied: no output.weight in the file


def test_bundled_weights_equal_transformers(smollm, hf_gguf_model):
    config, weights, _ = smollm
    state = hf_gguf_model.state_dict()
    for i in (0, config.n_layers - 1):
        layer = weights.layers[i]
        for ours, theirs in ((layer.wq, "self_attn.q_proj"), (layer.wk, "self_attn.k_proj"),
                             (layer.wo, "self_attn.o_proj"), (layer.w_down, "mlp.down_proj")):
            np.testing.assert_array_equal(ours, state[f"model.layers.{i}.{theirs}.weight"].numpy().T)
    np.testing.assert_array_equal(weights.tok_emb, state["model.embed_tokens.weight"].numpy())


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_bundled_greedy_equals_transformers(smollm, hf_gguf_model, kind):
    import torch

    config, weights, tok = smollm
    prompt = PROMPTS[kind]
    ids = tok.encode_chat(prompt) if kind == "chat" else tok.encode(prompt)
    x, want = torch.tensor([ids]), []
    with torch.no_grad():
        for _ in range(N_NEW):
            want.append(int(hf_gguf_model(x).logits[0, -1].argmax()))
            x = torch.cat([x, torch.tensor([[want[-1]]])], dim=1)
    got = greedy(config, weights, ids, N_NEW)
    assert got == want, (tok.decode(got), tok.decode(want))
    if kind == "chat":
        assert "Paris" in tok.decode(got)


def test_unpermute_inverts_llama_cpp(gguf_writer):
    w = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6 * 8, 3)  # 6 heads of hd 8, 3 inputs
    np.testing.assert_array_equal(unpermute_qk_rows(gguf_writer.permute(w, 6), 6), w)
    assert not np.array_equal(gguf_writer.permute(w, 6), w)


SYNTH = {
    "llama-gqa": ("llama", dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                                num_key_value_heads=2, vocab_size=111, max_position_embeddings=128)),
    "llama-q": ("llama", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=64, max_position_embeddings=128,
                              tie_word_embeddings=True)),
    "qwen2": ("qwen2", dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
                            num_key_value_heads=3, vocab_size=90, max_position_embeddings=128)),
}


@pytest.fixture(scope="module")
def synth(build_hf_model, tmp_path_factory):
    """case -> (transformers model, folder saved by save_pretrained)."""
    out = {}
    for case, (arch, kwargs) in SYNTH.items():
        model = build_hf_model(arch, kwargs, seed=7)
        folder = tmp_path_factory.mktemp(case)
        model.save_pretrained(folder)
        out[case] = (model, folder)
    return out


@pytest.mark.parametrize("case,qtype", [("llama-gqa", "F32"), ("qwen2", "F32"), ("qwen2", "F16")])
def test_written_gguf_equals_hf_folder(synth, gguf_writer, tmp_path, case, qtype):
    arch, _ = SYNTH[case]
    model, folder = synth[case]
    path = tmp_path / "m.gguf"
    # llama.cpp permutes Q/K rows for llama only; qwen2 uses NEOX (rotate-half) RoPE as stored.
    gguf_writer.write(path, arch, model.config, gguf_writer.from_hf(model.state_dict(), model.config, arch == "llama"),
                      qtype)
    g_config, g_weights, _ = load_gguf_weights(path)
    h_config, h_weights = load_hf_weights(folder)
    assert dataclasses.replace(g_config, name="", bos_token_id=None, eos_token_ids=()) == \
        dataclasses.replace(h_config, name="", bos_token_id=None, eos_token_ids=())
    ours, theirs = g_weights.arrays(), h_weights.arrays()
    assert ours.keys() == theirs.keys()
    for key in ours:
        want = theirs[key].astype(np.float16).astype(np.float32) if qtype == "F16" and ours[key].ndim == 2 \
            else theirs[key]
        np.testing.assert_array_equal(ours[key], want, err_msg=key)
    ids = list(range(1, 20))
    np.testing.assert_allclose(forward(g_config, g_weights, ids), forward(h_config, h_weights, ids),
                               atol=5e-3 if qtype == "F16" else 0, rtol=0)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "BF16"])
def test_quantized_types_dequantize_in_canonical_layout(synth, gguf_writer, tmp_path, qtype):
    import gguf

    model, _ = synth["llama-q"]
    tensors = gguf_writer.from_hf(model.state_dict(), model.config, True)
    path = tmp_path / f"m-{qtype}.gguf"
    gguf_writer.write(path, "llama", model.config, tensors, qtype)
    config, weights, _ = load_gguf_weights(path)
    kind = gguf.GGMLQuantizationType[qtype]
    roundtrip = lambda w: gguf.quants.dequantize(gguf.quants.quantize(w, kind), kind)  # noqa: E731
    wq = model.state_dict()["model.layers.1.self_attn.q_proj.weight"].numpy()
    np.testing.assert_array_equal(weights.layers[1].wq, roundtrip(wq).T)  # quantised along rows, then unpermuted
    np.testing.assert_array_equal(weights.tok_emb, roundtrip(tensors["token_embd.weight"]))
    assert config.tie_embeddings and np.shares_memory(weights.lm_head, weights.tok_emb)


def test_llama3_rope_freqs_tensor(synth, gguf_writer, tmp_path):
    from waferllm.model.rope import base_inv_freq, inv_freq

    model, _ = synth["llama-gqa"]
    tensors = gguf_writer.from_hf(model.state_dict(), model.config, True)
    config, _, _ = load_gguf_weights(_write(gguf_writer, tmp_path / "plain.gguf", model, tensors))
    scaled = dataclasses.replace(config, rope_scaling=PRESETS_LLAMA31_SCALING)
    factors = base_inv_freq(config.head_dim, config.rope_theta) / inv_freq(scaled)
    path = _write(gguf_writer, tmp_path / "l31.gguf", model, dict(tensors, **{"rope_freqs.weight": factors}))
    got, _, _ = load_gguf_weights(path)
    assert got.rope_scaling == PRESETS_LLAMA31_SCALING
    bad = _write(gguf_writer, tmp_path / "bad.gguf", model, dict(tensors, **{"rope_freqs.weight": factors * 1.5}))
    with pytest.raises(ModelError, match="rope_freqs"):
        load_gguf_weights(bad)


def _write(gguf_writer, path, model, tensors):
    gguf_writer.write(path, "llama", model.config, tensors, "F32")
    return path


def _llama31_scaling():
    from waferllm.model import RopeScaling

    return RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=8192)


PRESETS_LLAMA31_SCALING = _llama31_scaling()
