"""Text in, text out: prompt encoding (raw or chat template), streaming detokenisation, stop strings.

Shared by the CLI and the server so both give the same text for the same settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from waferllm.engine.generate import Engine, Timing
from waferllm.engine.sampling import SamplingParams


@dataclass
class GenerationResult:
    """What one prompt produced, with predicted on-device timings."""

    prompt_token_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    timing: Timing = field(default_factory=Timing)
    wall_s: float = 0.0


def prompt_ids(tokenizer, text: str, *, chat: bool, system: str | None = None) -> list[int]:
    """Token ids of a raw prompt (with the tokenizer's BOS rule) or of a one-turn chat."""
    if chat:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        return tokenizer.encode_chat(msgs)
    return tokenizer.encode(text)


def generate_text(engine: Engine, ids: Sequence[int], params: SamplingParams,
                  on_text: Callable[[str], None] | None = None) -> GenerationResult:
    """Run one prompt; on_text receives text increments as they become final (stop strings held back)."""
    tok = engine.tokenizer
    res = GenerationResult(prompt_token_ids=list(ids))
    t0 = time.perf_counter()
    emitted = 0
    eos = set(engine.cfg.eos_token_ids) | set(getattr(tok, "eos_ids", ()) or ())
    for ev in engine.generate(ids, params, res.timing):
        if ev.token_id in eos and not params.ignore_eos:
            res.finish_reason = "stop"
            break
        res.token_ids.append(ev.token_id)
        text = tok.decode(res.token_ids, skip_special=True)
        cut = _stop_at(text, params.stop)
        if cut is not None:
            res.text, res.finish_reason = text[:cut], "stop"
            break
        res.text = text
        safe = _safe_prefix(text, params.stop)
        if on_text and safe > emitted and not text[:safe].endswith("\ufffd"):
            on_text(text[emitted:safe])
            emitted = safe
    if on_text and len(res.text) > emitted:
        on_text(res.text[emitted:])
    res.wall_s = time.perf_counter() - t0
    return res


def _stop_at(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _safe_prefix(text: str, stops: Sequence[str]) -> int:
    """Length of text that cannot become part of a stop string with more tokens."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return len(text) - hold
