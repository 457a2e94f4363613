"""Shared fixtures: devices for kernel tests; the bundled model (ours and transformers'), tiny checkpoints.

Loaded once per session: the GGUF (~5 s), transformers' model for it (~15 s) and its tokenizer (~5 s).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# No model hub here: transformers must never try the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# The suite never reads or fills the user's cache: `waferllm` (in-process main() and the CLI subprocesses)
# keeps its JAX compile cache under $XDG_CACHE_HOME, a folder of this session's own.
_CACHE = tempfile.mkdtemp(prefix="waferllm-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from waferllm.model.registry import find_bundled_gguf  # noqa: E402
from waferllm.spec import get_device  # noqa: E402


@pytest.fixture(scope="session")
def wse2():
    return get_device("wse2")


@pytest.fixture(scope="session")
def roomy(wse2):
    """wse2 with 16 MiB per core, for numeric kernel tests with large tiles on tiny grids."""
    return wse2.replace(sram_bytes_per_core=1 << 24)



def import_torch():
    """torch on one thread: its OpenMP workers spin between ops and starve JAX (and vice versa) on 2 cores."""
    import torch

    torch.set_num_threads(1)
    return torch


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """The bundled SmolLM2-135M-Instruct Q4_1 GGUF."""
    return find_bundled_gguf("smollm2-135m")


@pytest.fixture(scope="session")
def smollm(gguf_path):
    """Our (config, weights, tokenizer) for the bundled model, loaded once (~7 s)."""
    from waferllm.model import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def hf_tokenizer(gguf_path):
    """transformers' tokenizer for the bundled GGUF (~5 s)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="session")
def hf_gguf_model(gguf_path):
    """transformers' float32 model for the bundled GGUF (~15 s)."""
    torch = import_torch()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    return model.eval()


# HF parameter suffix -> GGUF tensor suffix (per layer), as llama.cpp's converter names them.
GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
}


def llama_cpp_permute(w, n_head: int):
    """llama.cpp convert_hf_to_gguf's Q/K permutation (HF rotate-half rows -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_to_gguf_tensors(state: dict, cfg, permute: bool) -> dict:
    """GGUF-named numpy tensors [out, in] from a HF state dict; Q/K permuted like llama.cpp when asked."""
    out = {}
    for name, value in state.items():
        w = value.float().numpy()
        if name == "model.embed_tokens.weight":
            out["token_embd.weight"] = w
        elif name == "model.norm.weight":
            out["output_norm.weight"] = w
        elif name == "lm_head.weight":
            if not cfg.tie_word_embeddings:
                out["output.weight"] = w
        else:
            _, _, layer, rest = name.split(".", 3)
            if permute and rest.startswith("self_attn.q_proj"):
                w = llama_cpp_permute(w, cfg.num_attention_heads)
            elif permute and rest.startswith("self_attn.k_proj"):
                w = llama_cpp_permute(w, cfg.num_key_value_heads)
            out[f"blk.{layer}.{GGUF_LAYER_NAMES[rest]}"] = w
    return out


def write_gguf(path, arch: str, cfg, tensors: dict, qtype_name: str = "F32", extra=None) -> None:
    """A GGUF with llama.cpp's metadata keys; 2-D tensors stored as `qtype_name`, 1-D as F32."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[qtype_name]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    for key, value in (extra or {}).items():
        getattr(writer, f"add_{key}")(value)
    for name, w in tensors.items():
        if w.ndim == 1 or qtype_name == "F32":
            writer.add_tensor(name, np.ascontiguousarray(w, dtype=np.float32))
        elif qtype_name == "F16":
            writer.add_tensor(name, w.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(w.astype(np.float32), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="session")
def gguf_writer():
    """The helpers above, for tests that write their own small GGUF files."""
    import types

    return types.SimpleNamespace(write=write_gguf, from_hf=hf_to_gguf_tensors, permute=llama_cpp_permute)


def make_hf_model(arch: str, kwargs: dict, seed: int = 0):
    """A transformers model with every parameter random (biases and norms too, so they all matter)."""
    torch = import_torch()
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls, cfg_cls = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[arch]
    torch.manual_seed(seed)
    model = cls(cfg_cls(**kwargs, attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def build_hf_model():
    """make_hf_model: (arch, config kwargs, seed) -> a random transformers model."""
    return make_hf_model


# --- engines shared by the engine and server tests (placing and compiling one costs ~10 s) ---
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
