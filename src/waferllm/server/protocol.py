"""OpenAI request bodies (the subset we serve, strictly typed), OpenAI-style error bodies, and ApiError.

Types are strict (a bool is not an int, "yes" is not a bool, 1e30 is not an int) and unknown fields are
refused by name. Parameters OpenAI defines that we do not implement are accepted only at their no-op value
(see NOOP); anything else is a 400 naming the parameter.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_LOGPROBS = 20  # most alternatives per token (OpenAI's top_logprobs limit)
MAX_STOPS = 16
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ApiError(Exception):
    """An error answered with `status` and an OpenAI error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, kind, param, code), headers


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class StreamOptions(BaseModel):
    """stream_options: usage always rides on the final chunk, so include_usage is accepted either way."""

    model_config = STRICT
    include_usage: bool | None = None


class _Common(BaseModel):
    model_config = STRICT

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)  # vLLM's extension; -1 and 0 = off
    n: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None  # vLLM's extension
    user: str | None = None  # an end-user id for the caller's records; it changes nothing
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class TextPart(BaseModel):
    model_config = STRICT

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = STRICT

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)


# parameter -> the values that change nothing (so a client that always sends them still works)
NOOP = {"n": (None, 1), "frequency_penalty": (None, 0), "presence_penalty": (None, 0), "logit_bias": (None, {}),
        "echo": (None, False), "best_of": (None, 1), "suffix": (None, "")}


def check_noops(body: BaseModel) -> None:
    """ApiError naming the first parameter set to a value we do not implement (types are checked already)."""
    for name, ok in NOOP.items():
        value = getattr(body, name, None)
        if value not in ok:
            allowed = " or ".join("null" if v is None else repr(v) for v in ok)
            raise ApiError(400, f"{name}={value!r} is not supported (only {allowed})", param=name)
