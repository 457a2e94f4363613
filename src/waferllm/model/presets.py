"""Built-in model configs (no weights): the public config.json numbers of each checkpoint."""

from __future__ import annotations

from waferllm.model.config import ModelConfig

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

PRESETS: dict[str, ModelConfig] = {
    c.name: c for c in (LLAMA3_8B, LLAMA2_13B, CODELLAMA_34B, QWEN2_72B, SMOLLM2_135M)
}
