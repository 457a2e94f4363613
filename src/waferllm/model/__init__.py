"""Model layer: configs, checkpoint loading (GGUF, HF), tokenizer and the JAX reference forward.

Imports only go downward: nothing here imports engine/perf/report/cli/server.
"""

from waferllm.model.config import ModelConfig, RopeScaling
from waferllm.model.errors import ModelError
from waferllm.model.presets import PRESETS
from waferllm.model.registry import ModelSource, get_config, known_models, load_model, resolve_model
from waferllm.model.tokenizer import Tokenizer
from waferllm.model.weights import LayerWeights, ModelWeights, build_weights, random_weights

__all__ = [
    "PRESETS", "LayerWeights", "ModelConfig", "ModelError", "ModelSource", "ModelWeights", "RopeScaling",
    "Tokenizer", "build_weights", "get_config", "known_models", "load_model", "random_weights", "resolve_model",
]
