"""The FastAPI app: /v1/models, /v1/completions, /v1/chat/completions (SSE streaming), /health.

It depends only on the engine interface (Scheduler.submit / check, the tokenizer, the plan's facts):
requests become (prompt ids, SamplingParams), events come back from the scheduler's worker thread.
Every response carries the predicted on-wafer TTFT/TPOT in a `waferllm` field and in x-waferllm-* headers.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from waferllm import WaferError
from waferllm.engine.generate import CapacityError
from waferllm.engine.sampling import SamplingError, SamplingParams
from waferllm.engine.scheduler import Event, QueueFull, Scheduler
from waferllm.server.protocol import ChatRequest, CompletionRequest, error_body

DEFAULT_MAX_TOKENS = 64  # the CLI's --max-new-tokens default: same settings, same text


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind, param, code)


def create_app(scheduler: Scheduler, model_id: str) -> FastAPI:
    """An app serving one placed model through `scheduler` under the name `model_id`."""
    engine = scheduler.engine
    app = FastAPI(title="waferllm", version="0.1.0")
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(_req, exc: ApiError):
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ())[1:]) or None
        msg = "malformed JSON body" if err.get("type") == "json_invalid" else \
            f"{where or 'body'}: {err.get('msg', 'invalid request')}"
        return JSONResponse(error_body(msg, param=where), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "not_found_error" if exc.status_code == 404
                                       else "invalid_request_error"), status_code=exc.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok", **scheduler.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                             "owned_by": "waferllm", "root": engine.cfg.name,
                                             "max_model_len": engine.max_tokens}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        if isinstance(body.prompt, list) and len(body.prompt) != 1:
            raise ApiError(400, "prompt must be one string (batches of prompts: send concurrent requests)", param="prompt")
        text = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
        ids = engine.tokenizer.encode(text)
        return await _serve(body, ids, request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        msgs = [{"role": m.role, "content": m.content} for m in body.messages]
        ids = engine.tokenizer.encode_chat(msgs)
        return await _serve(body, ids, request, chat=True)

    async def _serve(body, ids: list[int], request: Request, chat: bool):
        params = _params(body, model_id)
        if not ids:
            raise ApiError(400, "empty prompt: at least one token is needed", param="prompt")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        try:
            req = scheduler.submit(ids, params, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        except QueueFull as e:
            raise ApiError(429, str(e), "rate_limit_error", code="queue_full") from None
        except CapacityError as e:
            raise ApiError(400, str(e), param="max_tokens", code="context_length_exceeded") from None
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.stream:
            first = await _next(events, request, req)
            if first.error:
                raise ApiError(500, first.error, "server_error")
            return StreamingResponse(_sse(first, events, request, req, rid, chat, len(ids)),
                                     media_type="text/event-stream", headers=_headers(first.timing, done=False))
        text, last = "", None
        while last is None or not last.done:
            last = await _next(events, request, req)
            if last.error:
                raise ApiError(500, last.error, "server_error")
            text += last.text
        res = last.result
        return JSONResponse(_full(rid, chat, model_id, text, res, len(ids)), headers=_headers(res.timing))

    async def _sse(first: Event, events, request: Request, req, rid: str, chat: bool, n_prompt: int):
        ev = first
        try:
            if chat:
                yield _chunk(rid, chat, model_id, {"role": "assistant", "content": ""}, None)
            while True:
                if ev.error:
                    yield f"data: {json.dumps(error_body(ev.error, 'server_error'))}\n\n"
                    break
                if ev.text:
                    yield _chunk(rid, chat, model_id, {"content": ev.text} if chat else ev.text, None)
                if ev.done:
                    res = ev.result
                    final = json.loads(_chunk(rid, chat, model_id, {} if chat else "", res.finish_reason)[6:])
                    final["usage"] = _usage(n_prompt, res)
                    final["waferllm"] = _predicted(res)
                    yield f"data: {json.dumps(final)}\n\n"
                    break
                try:
                    ev = await _next(events, request, req)
                except ApiError:  # disconnected: _next cancelled the request
                    return
            yield "data: [DONE]\n\n"
        finally:  # the client went away mid-stream (or we finished): never keep decoding for nobody
            if not (ev.done or ev.error):
                req.cancel()

    return app


async def _next(events: asyncio.Queue, request: Request, req) -> Event:
    """The next event for this request; a disconnected client cancels it."""
    while True:
        try:
            return await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                req.cancel()
                raise ApiError(499, "client disconnected") from None


def _params(body, model_id: str) -> SamplingParams:
    if body.model != model_id:
        raise ApiError(404, f"model {body.model!r} does not exist; served: {model_id}", param="model",
                       code="model_not_found")
    if body.n != 1:
        raise ApiError(400, f"only n = 1 is supported, got {body.n}", param="n")
    max_new = body.max_completion_tokens or body.max_tokens
    max_new = DEFAULT_MAX_TOKENS if max_new is None else max_new
    if max_new <= 0:
        raise ApiError(400, f"max_tokens must be >= 1, got {max_new}", param="max_tokens")
    try:
        return SamplingParams(max_new_tokens=max_new, temperature=body.temperature, top_p=body.top_p,
                              top_k=body.top_k, seed=body.seed or 0, stop=body.stops(), ignore_eos=body.ignore_eos)
    except (SamplingError, WaferError) as e:
        raise ApiError(400, str(e)) from None


def _predicted(res) -> dict:
    t = res.timing
    return {"predicted_ttft_s": t.ttft_s, "predicted_tpot_s": t.tpot_s, "predicted_e2e_s": t.ttft_s + sum(t.decode_s),
            "predicted_decode_steps": len(t.decode_s), "wall_s": res.wall_s}


def _headers(t, done: bool = True) -> dict:
    """Predicted timings as headers; a stream's headers leave after the first token, so only TTFT is known
    (its final chunk's `waferllm` field carries TPOT)."""
    h = {"x-waferllm-predicted-ttft-s": f"{t.ttft_s:.9g}"}
    if done:
        h["x-waferllm-predicted-tpot-s"] = f"{t.tpot_s:.9g}"
    return h


def _usage(n_prompt: int, res) -> dict:
    n = len(res.token_ids)
    return {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}


def _full(rid: str, chat: bool, model: str, text: str, res, n_prompt: int) -> dict:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": res.finish_reason}
    else:
        choice = {"index": 0, "text": text, "finish_reason": res.finish_reason, "logprobs": None}
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": _usage(n_prompt, res), "waferllm": _predicted(res)}


def _chunk(rid: str, chat: bool, model: str, delta, finish: str | None) -> str:
    if chat:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
    obj = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
           "model": model, "choices": [choice]}
    return f"data: {json.dumps(obj)}\n\n"
