"""A request body -> a Job (prompt ids, SamplingParams, logprobs, stream): CPU work, run in a worker thread.

Tokenization goes through the tokenizer backend's batch call, which releases the GIL, so a long prompt
being tokenized does not stall the event loop either.
"""

from __future__ import annotations

from dataclasses import dataclass

from waferllm import WaferError
from waferllm.engine.sampling import SamplingError, SamplingParams
from waferllm.server.protocol import ApiError, ChatRequest, CompletionRequest, check_noops
from waferllm.server.requests import parse

DEFAULT_MAX_TOKENS = 64  # the CLI's --max-new-tokens default: same settings, same text


@dataclass(frozen=True, kw_only=True)
class Job:
    """A validated request, ready for the scheduler."""

    ids: list[int]
    params: SamplingParams
    chat: bool
    stream: bool
    logprobs: int | None  # None: no logprobs; else alternatives per token


def prepare(raw: bytes, chat: bool, engine, model_id: str) -> Job:
    """Parse, validate and tokenize one request body; ApiError (4xx) for anything we do not serve."""
    body = parse(raw, ChatRequest if chat else CompletionRequest)
    if body.model != model_id:
        raise ApiError(404, f"model {body.model!r} does not exist; served: {model_id}", param="model",
                       code="model_not_found")
    check_noops(body)
    if body.stream_options is not None and not body.stream:
        raise ApiError(400, "stream_options is only allowed with stream=true", param="stream_options")
    params = _params(body, engine)
    ids = _chat_ids(body, engine.tokenizer) if chat else _prompt_ids(body, engine)
    if not ids:
        raise ApiError(400, "empty prompt: at least one token is needed", param="messages" if chat else "prompt")
    return Job(ids=ids, params=params, chat=chat, stream=bool(body.stream), logprobs=_logprobs(body, chat))


def _params(body, engine) -> SamplingParams:
    max_new = getattr(body, "max_completion_tokens", None) or body.max_tokens
    max_new = DEFAULT_MAX_TOKENS if max_new is None else max_new
    name = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    if max_new > engine.max_tokens:
        raise ApiError(400, f"{name} must be <= {engine.max_tokens} (prompt + completion tokens this server "
                            f"holds), got {max_new}", param=name, code="context_length_exceeded")
    try:
        return SamplingParams(max_new_tokens=max_new, temperature=_or(body.temperature, 0.0),
                              top_p=_or(body.top_p, 1.0), top_k=max(_or(body.top_k, 0), 0),
                              seed=_or(body.seed, 0), stop=body.stops(), ignore_eos=bool(body.ignore_eos))
    except (SamplingError, WaferError) as e:
        raise ApiError(400, str(e)) from None


def _or(value, default):
    return default if value is None else value


def _logprobs(body, chat: bool) -> int | None:
    if not chat:
        return body.logprobs
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    return (body.top_logprobs or 0) if body.logprobs else None


def _prompt_ids(body: CompletionRequest, engine) -> list[int]:
    """A string, a list of one string, or a list of token ids."""
    p = body.prompt
    if isinstance(p, str) or (len(p) == 1 and isinstance(p[0], str)):
        return encode(engine.tokenizer, p if isinstance(p, str) else p[0], add_special=True)
    if p and isinstance(p[0], str):
        raise ApiError(400, "prompt must be one string (batches of prompts: send concurrent requests)", param="prompt")
    vocab = engine.cfg.vocab_size
    for i, t in enumerate(p):
        if not 0 <= t < vocab:
            raise ApiError(400, f"prompt[{i}] = {t} is not a token id (0..{vocab - 1})", param=f"prompt[{i}]")
    return list(p)


def _chat_ids(body: ChatRequest, tokenizer) -> list[int]:
    msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        text = tokenizer.apply_chat_template(msgs)
    except WaferError as e:
        raise ApiError(400, str(e), param="messages") from None
    return encode(tokenizer, text, add_special=False)


def encode(tokenizer, text: str, *, add_special: bool) -> list[int]:
    """tokenizer.encode(text), through the backend's GIL-releasing batch call when it has one."""
    batch = getattr(getattr(tokenizer, "backend", None), "encode_batch", None)
    if batch is None:
        return tokenizer.encode(text, add_special=add_special)
    return list(batch([text], add_special_tokens=add_special)[0].ids)
