"""Layer 4: placement of a model on the wafer, the decode program, KV cache, sampling, generation."""
