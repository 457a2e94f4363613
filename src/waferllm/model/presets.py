"""Built-in model configs (no weights): the public config.json numbers of each checkpoint.

Every number of a preset is that checkpoint's Hugging Face config.json (SOURCES names the file); the
comment above each preset notes anything chosen among its variants (base or Instruct: same shapes).
"""

from __future__ import annotations

from waferllm.model.config import ModelConfig, RopeScaling

HF = "https://huggingface.co/{}/blob/main/config.json"

# Meta-Llama-3-8B(-Instruct): eos 128001 <|end_of_text|>, 128009 <|eot_id|>.
LLAMA3_8B = ModelConfig(
    name="llama3-8b", arch="llama", vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
    head_dim=128, ffn_dim=14336, norm_eps=1e-5, rope_theta=500000.0, max_seq_len=8192,
    bos_token_id=128000, eos_token_ids=(128001, 128009),
)

# Llama-2-13b-hf: multi-head attention (kv heads == heads).
LLAMA2_13B = ModelConfig(
    name="llama2-13b", arch="llama", vocab_size=32000, dim=5120, n_layers=40, n_heads=40, n_kv_heads=40,
    head_dim=128, ffn_dim=13824, norm_eps=1e-5, rope_theta=10000.0, max_seq_len=4096,
    bos_token_id=1, eos_token_ids=(2,),
)

# CodeLlama-34b-hf: GQA 64/8, theta 1e6, 16K context; vocab 32000 (7B/13B have 32016).
CODELLAMA_34B = ModelConfig(
    name="codellama-34b", arch="llama", vocab_size=32000, dim=8192, n_layers=48, n_heads=64, n_kv_heads=8,
    head_dim=128, ffn_dim=22016, norm_eps=1e-5, rope_theta=1000000.0, max_seq_len=16384,
    bos_token_id=1, eos_token_ids=(2,),
)

# Qwen2-72B-Instruct: q/k/v biases, eos 151645 <|im_end|> and 151643 <|endoftext|>.
QWEN2_72B = ModelConfig(
    name="qwen2-72b", arch="qwen2", vocab_size=152064, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
    head_dim=128, ffn_dim=29568, norm_eps=1e-6, rope_theta=1000000.0, max_seq_len=32768, qkv_bias=True,
    bos_token_id=151643, eos_token_ids=(151645, 151643),
)

# SmolLM2-135M-Instruct: 9 query / 3 kv heads of 64, tied embeddings; the bundled GGUF has these numbers.
SMOLLM2_135M = ModelConfig(
    name="smollm2-135m", arch="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
    head_dim=64, ffn_dim=1536, norm_eps=1e-5, rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True,
    bos_token_id=1, eos_token_ids=(2,),
)

# Llama 3.1 (the models of the public Cerebras Inference figures, docs/cerebras-inference.md): 128K context
# through 'llama3' RoPE scaling (factor 8, low/high frequency factors 1/4, 8192 original positions); eos as
# the Instruct checkpoints list them (128001 <|end_of_text|>, 128008 <|eom_id|>, 128009 <|eot_id|>).
LLAMA31_ROPE = RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=8192)

LLAMA31_8B = ModelConfig(
    name="llama3.1-8b", arch="llama", vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
    head_dim=128, ffn_dim=14336, norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA31_ROPE,
    max_seq_len=131072, bos_token_id=128000, eos_token_ids=(128001, 128008, 128009),
)

LLAMA31_70B = ModelConfig(
    name="llama3.1-70b", arch="llama", vocab_size=128256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
    head_dim=128, ffn_dim=28672, norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA31_ROPE,
    max_seq_len=131072, bos_token_id=128000, eos_token_ids=(128001, 128008, 128009),
)

LLAMA31_405B = ModelConfig(
    name="llama3.1-405b", arch="llama", vocab_size=128256, dim=16384, n_layers=126, n_heads=128, n_kv_heads=8,
    head_dim=128, ffn_dim=53248, norm_eps=1e-5, rope_theta=500000.0, rope_scaling=LLAMA31_ROPE,
    max_seq_len=131072, bos_token_id=128000, eos_token_ids=(128001, 128008, 128009),
)

PRESETS: dict[str, ModelConfig] = {
    c.name: c for c in (LLAMA3_8B, LLAMA2_13B, CODELLAMA_34B, QWEN2_72B, SMOLLM2_135M, LLAMA31_8B, LLAMA31_70B,
                        LLAMA31_405B)
}

# Where each preset's numbers come from (one config.json per preset).
SOURCES: dict[str, str] = {
    "llama3-8b": HF.format("meta-llama/Meta-Llama-3-8B-Instruct"),
    "llama2-13b": HF.format("meta-llama/Llama-2-13b-hf"),
    "codellama-34b": HF.format("codellama/CodeLlama-34b-hf"),
    "qwen2-72b": HF.format("Qwen/Qwen2-72B-Instruct"),
    "smollm2-135m": HF.format("HuggingFaceTB/SmolLM2-135M-Instruct") + " (the bundled GGUF carries the same numbers)",
    "llama3.1-8b": HF.format("meta-llama/Llama-3.1-8B-Instruct"),
    "llama3.1-70b": HF.format("meta-llama/Llama-3.1-70B-Instruct"),
    "llama3.1-405b": HF.format("meta-llama/Llama-3.1-405B-Instruct"),
}
