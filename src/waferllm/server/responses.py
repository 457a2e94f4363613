"""OpenAI response bodies: completions and chat (whole or as SSE chunks), usage, logprobs, predicted timings."""

from __future__ import annotations

import json
import re
import time
from functools import lru_cache

from waferllm.model.tokenizer import bytes_to_unicode


class Logprobs:
    """OpenAI logprobs objects for one request: chat ({"content": [...]}) or completions (parallel lists)."""

    def __init__(self, tokenizer, chat: bool, top_n: int):
        self.tok, self.chat, self.top_n = tokenizer, chat, top_n
        self.offset = 0  # completions' text_offset runs over the whole completion

    def part(self, lps) -> dict:
        """The logprobs object for these tokens (one event's, or all of them)."""
        if self.chat:
            return {"content": [self._entry(lp.token_id, lp.logprob, [self._entry(i, v) for i, v in lp.top])
                                for lp in lps], "refusal": None}
        tokens = [self._text(lp.token_id) for lp in lps]
        offsets = []
        for t in tokens:
            offsets.append(self.offset)
            self.offset += len(t)
        tops = [{self._text(i): v for i, v in lp.top} | {tokens[k]: lp.logprob} for k, lp in enumerate(lps)]
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in lps],
                "top_logprobs": tops if self.top_n else None, "text_offset": offsets}

    def _entry(self, token_id: int, logprob: float, top: list | None = None) -> dict:
        e = {"token": self._text(token_id), "logprob": logprob, "bytes": self._bytes(token_id)}
        if top is not None:
            e["top_logprobs"] = top
        return e

    def _text(self, token_id: int) -> str:
        return self.tok.decode([token_id])

    def _bytes(self, token_id: int) -> list[int]:
        """The token's own bytes (a token may hold part of a UTF-8 character, which text cannot show)."""
        text = self._text(token_id)
        if "\ufffd" not in text:
            return list(text.encode("utf-8"))
        piece = self.tok.id_to_token(token_id) or ""
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)  # sentencepiece byte fallback
        if m:
            return [int(m.group(1), 16)]
        dec = _byte_decoder()
        if piece and all(c in dec for c in piece):  # byte-level BPE: one character per byte
            return [dec[c] for c in piece]
        return list(text.encode("utf-8"))


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def predicted(res) -> dict:
    """The `waferllm` field: predicted on-wafer figures beside the wall clock."""
    t = res.timing
    return {"predicted_ttft_s": t.ttft_s, "predicted_tpot_s": t.tpot_s, "predicted_e2e_s": t.ttft_s + sum(t.decode_s),
            "predicted_decode_steps": len(t.decode_s), "wall_s": res.wall_s}


def timing_headers(t, done: bool = True) -> dict:
    """Predicted timings as headers; a stream's headers leave after the first token, so only TTFT is known
    (its final chunk's `waferllm` field carries TPOT)."""
    h = {"x-waferllm-predicted-ttft-s": f"{t.ttft_s:.9g}"}
    if done:
        h["x-waferllm-predicted-tpot-s"] = f"{t.tpot_s:.9g}"
    return h


def usage(n_prompt: int, res) -> dict:
    n = len(res.token_ids)
    return {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}


def full(rid: str, chat: bool, model: str, text: str, res, n_prompt: int, logprobs: dict | None) -> dict:
    """A whole (non-streamed) response."""
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                  "finish_reason": res.finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": res.finish_reason}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage(n_prompt, res), "waferllm": predicted(res)}


def chunk(rid: str, chat: bool, model: str, delta, finish: str | None, logprobs: dict | None = None,
          extra: dict | None = None) -> str:
    """One SSE `data:` line: a chat delta or a completions text piece."""
    if chat:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": delta, "logprobs": logprobs, "finish_reason": finish}
    obj = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
           "model": model, "choices": [choice], **(extra or {})}
    return f"data: {json.dumps(obj)}\n\n"
