"""Request bodies in: a size-limited read, then (in a worker thread) JSON, Unicode and type checks.

Every failure is an ApiError with one clear message and the parameter it names: 413 for a body over the
limit, 400 for malformed JSON, NaN or infinity, lone surrogates, wrong types and unknown parameters.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from waferllm.server.protocol import ApiError

M = TypeVar("M", bound=BaseModel)
DRAIN_FACTOR = 16  # an over-limit body is read and dropped up to this many limits, so the client hears 413


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or ApiError 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        await _drain(request, limit, int(declared))
        raise _too_large(limit, int(declared))
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                await _drain(request, limit, size)
                raise _too_large(limit, None)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client closed the connection before sending the whole body") from None
    return b"".join(chunks)


def _too_large(limit: int, size: int | None) -> ApiError:
    got = f" ({size} bytes)" if size is not None else ""
    return ApiError(413, f"request body too large{got}: the limit is {limit} bytes (serve --max-body-bytes)",
                    code="request_too_large")


async def _drain(request: Request, limit: int, seen: int) -> None:
    """Read and drop the rest of an over-limit body up to DRAIN_FACTOR limits, so a sending client hears 413."""
    if seen > DRAIN_FACTOR * limit:
        return
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > DRAIN_FACTOR * limit:
                return
    except (ClientDisconnect, RuntimeError):  # gone, or the stream was already read
        return


def parse(raw: bytes, cls: type[M]) -> M:
    """raw JSON -> a validated `cls` (CPU work: call it from a worker thread)."""
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not valid UTF-8") from None
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply") from None
    except ValueError as e:
        raise ApiError(400, f"malformed JSON body: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {_json_type(data)}")
    check_unicode(data)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a valid JSON number (numbers must be finite)")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{text} is out of range for a number (numbers must be finite)")
    return v


def check_unicode(data: Any) -> None:
    """ApiError naming the first string (or key) holding a lone surrogate: it has no UTF-8 form."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                _check_str(f"{path}.{k}" if path else str(k), k, key=True)
                stack.append((f"{path}.{k}" if path else k, x))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", x) for i, x in enumerate(v))
        elif isinstance(v, str):
            _check_str(path, v)


def _check_str(path: str, s: str, key: bool = False) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        what = f"a key in {path.rpartition('.')[0] or 'the body'}" if key else path
        raise ApiError(400, f"{what} is not valid Unicode: lone surrogate {s[e.start]!r} at character {e.start}",
                       param=None if key else path) from None


# --- pydantic errors -> one message naming the parameter ----------------------------------
_EXPECT = {"int_type": "an integer", "int_parsing": "an integer", "bool_type": "a boolean", "float_type": "a number",
           "string_type": "a string", "list_type": "an array", "dict_type": "an object", "model_type": "an object",
           "model_attributes_type": "an object", "int_from_float": "an integer"}


def validation_error(e: ValidationError) -> ApiError:
    """The most specific of pydantic's errors as an OpenAI 400 (deepest; in a union, the branch whose type fit)."""
    err = max(e.errors(), key=lambda x: (len(x.get("loc", ())), x.get("type") not in _EXPECT))
    param = param_path(err.get("loc", ()))
    kind, value, ctx = err.get("type", ""), err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        msg = f"unsupported parameter: {param}"
    elif kind == "missing":
        msg = f"{param} is required"
    elif kind in _EXPECT:
        msg = f"{param} must be {_EXPECT[kind]}, got {_json_type(value)}"
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "?")
        msg = f"{param} must be {op} {bound}, got {value!r}"
    elif kind == "finite_number":
        msg = f"{param} must be a finite number"
    else:
        msg = f"{param}: {err.get('msg', 'invalid value')}"
    return ApiError(400, msg, param=param)


_UNION_TAGS = ("str", "int", "float", "bool")


def param_path(loc) -> str:
    """('messages', 0, 'content') -> 'messages[0].content' (pydantic's union branch names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or "[" in part:
            continue
        else:
            out += f".{part}" if out else part
    return out or "body"


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({'true' if v else 'false'})"
    if isinstance(v, (int, float)):
        return f"a number ({v!r})"
    if isinstance(v, str):
        return "a string"
    return "an array" if isinstance(v, list) else "an object"
