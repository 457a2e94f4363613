"""Tokenizer: the `tokenizers` library, built from tokenizer.json or GGUF metadata, plus the chat template."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from waferllm.model.errors import ModelError, known_list

# llama.cpp token types (tokenizer.ggml.token_type).
CONTROL, USER_DEFINED = 3, 4

# Split regexes for GGUF pre-tokenizer names, as transformers maps them; other names get GPT-2's.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GGUF_PRE_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen"), _QWEN2_SPLIT),
}
GGUF_TOKENIZER_MODELS = ("gpt2",)


@dataclass(frozen=True, kw_only=True, eq=False)
class Tokenizer:
    """Text <-> token ids, identical to transformers' tokenizer for the same checkpoint."""

    backend: Any  # tokenizers.Tokenizer
    chat_template: str | None = None
    special_tokens: Mapping[str, str] = field(default_factory=dict)  # bos_token, eos_token, ... -> text
    bos_id: int | None = None
    eos_id: int | None = None
    eos_ids: tuple[int, ...] = ()  # every id that ends generation (eos, end-of-turn, config's)

    @property
    def vocab_size(self) -> int:
        """Size of the id space, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special: bool = True) -> list[int]:
        """Token ids of `text`; add_special adds BOS/EOS the way the checkpoint asks. ModelError for text the
        tokenizer cannot take (not a string; lone surrogates, e.g. undecodable bytes from the command line)."""
        return list(self.backend.encode(check_text(text), add_special_tokens=add_special).ids)

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of `ids` (special tokens kept unless skip_special)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(int(token_id))

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                            **extra: Any) -> str:
        """The prompt text for `messages` ([{'role', 'content'}]), rendered like transformers does."""
        if not self.chat_template:
            raise ModelError("this checkpoint has no chat template; encode plain text instead")
        template = _compile_template(self.chat_template)
        values = {**self.special_tokens, **extra}
        try:
            return template.render(messages=[dict(m) for m in messages],
                                   add_generation_prompt=add_generation_prompt, **values)
        except Exception as err:  # the template may raise_exception() on bad roles
            raise ModelError(f"chat template failed: {err}") from None

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> list[int]:
        """Ids of the rendered chat; the template writes its own special tokens."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt),
                           add_special=False)

    def with_eos_ids(self, ids: Sequence[int]) -> "Tokenizer":
        """A copy that also stops on `ids` (e.g. the model config's eos ids)."""
        merged = tuple(dict.fromkeys((*self.eos_ids, *(int(i) for i in ids))))
        return dataclasses.replace(self, eos_ids=merged)

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> "Tokenizer":
        """Rebuild the tokenizer a GGUF describes (tokenizer.ggml.*), as transformers' GGUF loader does."""
        model = meta.get("tokenizer.ggml.model")
        if model not in GGUF_TOKENIZER_MODELS:
            raise ModelError(f"GGUF tokenizer model {model!r} is not supported; supported: "
                             f"{known_list(GGUF_TOKENIZER_MODELS)}")
        tokens = list(meta["tokenizer.ggml.tokens"])
        backend = _byte_level_bpe(tokens, list(meta.get("tokenizer.ggml.merges") or ()),
                                  list(meta.get("tokenizer.ggml.token_type") or ()),
                                  meta.get("tokenizer.ggml.pre"))
        ids = {name: meta.get(f"tokenizer.ggml.{key}") for name, key in
               (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id"))}
        special = {name: tokens[int(i)] for name, i in ids.items() if i is not None and 0 <= int(i) < len(tokens)}
        bos, eos = ids["bos_token"], ids["eos_token"]
        _set_post_processor(backend, bos if meta.get("tokenizer.ggml.add_bos_token") else None,
                            eos if meta.get("tokenizer.ggml.add_eos_token") else None)
        eos_ids = [int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                          "tokenizer.ggml.eom_token_id") if meta.get(k) is not None]
        return cls(backend=backend, chat_template=meta.get("tokenizer.chat_template"), special_tokens=special,
                   bos_id=None if bos is None else int(bos), eos_id=None if eos is None else int(eos),
                   eos_ids=tuple(dict.fromkeys(eos_ids)))

    @classmethod
    def from_hf_folder(cls, folder: str | Path) -> "Tokenizer":
        """From tokenizer.json + tokenizer_config.json (+ chat_template.jinja) in a HF folder."""
        from tokenizers import Tokenizer as Backend

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelError(f"no tokenizer.json in {folder}")
        try:
            backend = Backend.from_file(str(path))
        except Exception as err:
            raise ModelError(f"{path}: not a readable tokenizer ({err})") from None
        tcfg = _read_json(folder / "tokenizer_config.json")
        special = {k: _token_text(tcfg[k]) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                   if tcfg.get(k) is not None}
        bos = backend.token_to_id(special["bos_token"]) if "bos_token" in special else None
        eos = backend.token_to_id(special["eos_token"]) if "eos_token" in special else None
        return cls(backend=backend, chat_template=_hf_chat_template(folder, tcfg), special_tokens=special,
                   bos_id=bos, eos_id=eos, eos_ids=() if eos is None else (eos,))


def check_text(text: Any, what: str = "text") -> str:
    """`text` unchanged when it is a str encodable as UTF-8; ModelError naming the first bad character otherwise."""
    if not isinstance(text, str):
        raise ModelError(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        raise ModelError(f"{what} is not valid Unicode: lone surrogate {bad!r} at character {err.start} "
                         "(undecodable bytes?); give UTF-8 text") from None
    return text


def _byte_level_bpe(tokens: list[str], merges: list[str], types: list[int], pre: str | None):
    """A GPT-2 style byte-level BPE backend with the file's control/user tokens added whole."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    # A token written in raw UTF-8 instead of the byte alphabet is respelled, as transformers does.
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ")) for m in merges]
    backend = Backend(models.BPE(vocab=vocab, merges=pairs, dropout=None, unk_token=None,
                                 continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                                 byte_fallback=False))
    split = GGUF_PRE_SPLITS.get(pre or "")
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    # Control tokens spelled outside the byte alphabet are llama.cpp mislabels; transformers skips them.
    # Files without token types get no added tokens (zip stops at the shorter list), as in transformers.
    control = [t for t, k in zip(tokens, types, strict=False) if k == CONTROL and set(t) <= alphabet]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    user = [t for t, k in zip(tokens, types, strict=False) if k == USER_DEFINED and t in vocab]
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    return backend


def _set_post_processor(backend, bos: int | None, eos: int | None) -> None:
    """Add BOS/EOS around a single sequence when the checkpoint asks for them."""
    from tokenizers import processors

    bos_text = [] if bos is None else [backend.id_to_token(int(bos))]
    eos_text = [] if eos is None else [backend.id_to_token(int(eos))]
    ids = [int(x) for x in (bos, eos) if x is not None]
    specials = list(dict(zip(bos_text + eos_text, ids, strict=True)).items())
    single = bos_text + ["$A:0"] + eos_text
    backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (bytes that print stand for themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


def _read_json(path: Path) -> dict:
    """A JSON object from `path`, or {} when the file is absent."""
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path}: not readable JSON ({err})") from None
    return value if isinstance(value, dict) else {}


def _token_text(value: Any) -> str:
    """A special token from tokenizer_config: a string or an AddedToken dict."""
    return value["content"] if isinstance(value, dict) else str(value)


def _hf_chat_template(folder: Path, tcfg: Mapping[str, Any]) -> str | None:
    """chat_template.jinja, else tokenizer_config's chat_template (a string or named list: 'default')."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tcfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        return named.get("default") or next(iter(named.values()), None)
    return template


@lru_cache(maxsize=8)
def _compile_template(source: str):
    """A jinja2 template in the sandbox and with the helpers transformers gives chat templates."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; chat templates expect plain JSON
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise ModelError(f"chat template does not parse: {err}") from None
