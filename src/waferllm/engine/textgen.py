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


class TextStream:
    """Incremental detokenisation of one sequence: EOS and stop strings end it; text held back while it
    could still become a stop string, and while it ends inside a multi-byte character."""

    def __init__(self, tokenizer, eos_ids, params: SamplingParams, prompt_token_ids: Sequence[int]):
        self.tok, self.eos, self.params = tokenizer, eos_ids, params
        self.res = GenerationResult(prompt_token_ids=list(prompt_token_ids))
        self.emitted = 0
        self.done = False

    def push(self, token_id: int) -> str:
        """Take one generated token; return the text that became final (may be empty)."""
        res, params = self.res, self.params
        if token_id in self.eos and not params.ignore_eos:
            res.finish_reason, self.done = "stop", True
            return self.flush()
        res.token_ids.append(token_id)
        text = self.tok.decode(res.token_ids, skip_special=True)
        cut = _stop_at(text, params.stop)
        if cut is not None:
            res.text, res.finish_reason, self.done = text[:cut], "stop", True
            return self.flush()
        res.text = text
        if len(res.token_ids) >= params.max_new_tokens:
            res.finish_reason, self.done = "length", True
            return self.flush()
        safe = _safe_prefix(text, params.stop)
        if safe > self.emitted and not text[:safe].endswith("\ufffd"):
            out, self.emitted = text[self.emitted:safe], safe
            return out
        return ""

    def flush(self) -> str:
        out = self.res.text[self.emitted:]
        self.emitted = len(self.res.text)
        return out


def generate_text(engine: Engine, ids: Sequence[int], params: SamplingParams,
                  on_text: Callable[[str], None] | None = None) -> GenerationResult:
    """Run one prompt; on_text receives text increments as they become final (stop strings held back)."""
    stream = TextStream(engine.tokenizer, engine.eos_ids, params, ids)
    t0 = time.perf_counter()
    for ev in engine.generate(ids, params, stream.res.timing):
        delta = stream.push(ev.token_id)
        if on_text and delta:
            on_text(delta)
        if stream.done:
            break
    stream.res.wall_s = time.perf_counter() - t0
    return stream.res


def generate_batch_text(engine: Engine, prompts: Sequence[Sequence[int]], params: SamplingParams
                        ) -> tuple[list[GenerationResult], float]:
    """Decode several prompts together (one lane each): their results and the batch's aggregate
    predicted decode tokens/s. Each sequence leaves the batch when it finishes."""
    t0 = time.perf_counter()
    batch = engine.batch([(ids, params) for ids in prompts])
    streams = {}
    for ids in prompts:  # prefill each prompt into its lane, then decode them all together
        stream = TextStream(engine.tokenizer, engine.eos_ids, params, ids)
        seq, ev = batch.add(ids, params, stream.res.timing)
        streams[seq] = stream
        push_token(batch, seq, stream, ev.token_id)
    while batch.live:
        for seq, ev in batch.step():
            push_token(batch, seq, streams[seq], ev.token_id)
    wall = time.perf_counter() - t0
    for s in streams.values():
        s.res.wall_s = wall
    return [s.res for s in streams.values()], batch.decode_tokens_per_s


def push_token(batch, seq, stream: TextStream, token_id: int) -> str:
    """A sequence's new token into its text stream; a finished stream frees the sequence's lane (the
    stream sees the same EOS ids and length limit the engine does, plus stop strings). Returns the delta."""
    text = stream.push(token_id)
    if stream.done:
        batch.finish(seq, stream.res.finish_reason)
    return text


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
