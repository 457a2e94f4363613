"""The checkpoint cache: a GGUF file converted once (dequantised, unpermuted, input-major) and kept on disk.

Reading a GGUF means parsing its metadata (the vocabulary is ~10^5 strings) and dequantising every tensor,
seconds for a small model. The converted form is one safetensors file plus a JSON of the config and the
tokenizer, in $XDG_CACHE_HOME/waferllm/checkpoints (~/.cache/waferllm/checkpoints), under a key made of
the file's resolved path, size and modification time and CACHE_VERSION: an edited or replaced file is a
new key, never a stale hit. Entries are written to a temporary folder and renamed into place, so an
interrupted run leaves no half entry. The CLI turns it on (`--checkpoint-cache DIR|off`); library callers
pass `cache_dir` to load_model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from waferllm.model.config import ModelConfig, RopeScaling
from waferllm.model.tokenizer import Tokenizer
from waferllm.model.weights import ModelWeights, build_weights

CACHE_VERSION = 1  # bump when the converted form or the conversion changes
OFF = "off"
_WEIGHTS, _META = "weights.safetensors", "meta.json"


def cache_root() -> Path:
    """$XDG_CACHE_HOME/waferllm, or ~/.cache/waferllm (a relative XDG_CACHE_HOME is ignored, per the spec)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if base and os.path.isabs(base) else Path.home() / ".cache") / "waferllm"


def default_checkpoint_cache_dir() -> Path:
    """cache_root()/checkpoints."""
    return cache_root() / "checkpoints"


def entry_key(path: Path) -> str:
    """Hex key of a checkpoint file: resolved path, size, mtime (ns) and CACHE_VERSION."""
    st = path.stat()
    ident = json.dumps([CACHE_VERSION, str(path.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(ident.encode()).hexdigest()[:24]


def load_entry(folder: Path, key: str) -> tuple[ModelConfig, ModelWeights, Tokenizer] | None:
    """The cached (config, weights, tokenizer) under `key`, or None when absent or unreadable."""
    entry = folder / key
    try:
        meta = json.loads((entry / _META).read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer as Backend

        config = _config_from_json(meta["config"])
        weights = build_weights(config, load_file(str(entry / _WEIGHTS)))
        tok = meta["tokenizer"]
        tokenizer = Tokenizer(backend=Backend.from_str(tok["backend"]), chat_template=tok["chat_template"],
                              special_tokens=tok["special_tokens"], bos_id=tok["bos_id"], eos_id=tok["eos_id"],
                              eos_ids=tuple(tok["eos_ids"]))
    except Exception:  # a damaged or foreign entry (any reader error) is a miss: convert again
        return None
    return config, weights, tokenizer


def store_entry(folder: Path, key: str, config: ModelConfig, weights: ModelWeights, tokenizer: Tokenizer) -> bool:
    """Write an entry atomically (temporary folder, then rename); False (nothing left behind) when it cannot."""
    from safetensors.numpy import save_file

    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder))
        save_file(weights.arrays(), str(tmp / _WEIGHTS))
        tok = {"backend": tokenizer.backend.to_str(), "chat_template": tokenizer.chat_template,
               "special_tokens": dict(tokenizer.special_tokens), "bos_id": tokenizer.bos_id,
               "eos_id": tokenizer.eos_id, "eos_ids": list(tokenizer.eos_ids)}
        meta = {"version": CACHE_VERSION, "config": dataclasses.asdict(config), "tokenizer": tok}
        (tmp / _META).write_text(json.dumps(meta))
        os.replace(tmp, folder / key)  # another process may have won the race: then its entry stays
        return True
    except OSError:
        return False
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _config_from_json(d: dict) -> ModelConfig:
    d = dict(d)
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    d["eos_token_ids"] = tuple(d["eos_token_ids"])
    return ModelConfig(**d)
