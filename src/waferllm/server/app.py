"""The FastAPI app: /v1/models, /v1/completions, /v1/chat/completions (SSE streaming), /health, /metrics.

It depends only on the engine interface (Scheduler.submit / check / stats, the tokenizer, the plan's facts):
a request body is read under a size limit, then parsed, validated and tokenized in a worker thread (the event
loop never does CPU work proportional to a body), and becomes (prompt ids, SamplingParams); events come back
from the scheduler's worker thread. Every response carries the predicted on-wafer TTFT/TPOT in a `waferllm`
field and in x-waferllm-* headers. Every error, expected or not, is an OpenAI error body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from waferllm.engine.generate import CapacityError
from waferllm.engine.scheduler import Event, QueueFull, Scheduler
from waferllm.server import responses as out
from waferllm.server.auth import BearerAuth
from waferllm.server.metrics import CONTENT_TYPE, Metrics
from waferllm.server.prepare import Job, prepare
from waferllm.server.protocol import ApiError, error_body
from waferllm.server.requests import read_body

log = logging.getLogger("waferllm.server")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Limits and access: the body size limit, the API key (None: no key), the 429's Retry-After."""

    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    retry_after_s: int = 1


def create_app(scheduler: Scheduler, model_id: str, config: ServerConfig = ServerConfig()) -> FastAPI:
    """An app serving one placed model through `scheduler` under the name `model_id`."""
    engine = scheduler.engine
    app = FastAPI(title="waferllm", version="0.1.0")
    metrics = Metrics(model_id, scheduler.stats)
    created = int(time.time())
    _install_error_handlers(app)
    if config.api_key:
        app.add_middleware(BearerAuth, key=config.api_key)

    @app.get("/health")
    async def health():
        return {"status": "ok", **scheduler.stats()}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        card = {"id": model_id, "object": "model", "created": created, "owned_by": "waferllm",
                "root": engine.cfg.name, "max_model_len": engine.max_tokens}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _handle(request, chat=True)

    async def _handle(request: Request, chat: bool):
        raw = await read_body(request, config.max_body_bytes)
        job = await anyio.to_thread.run_sync(prepare, raw, chat, engine, model_id)
        return await _serve(job, request)

    async def _serve(job: Job, request: Request):
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        req = _submit(scheduler, job, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev), config)
        run = _Run(job, req, events, request, metrics.track(len(job.ids)),
                   out.Logprobs(engine.tokenizer, job.chat, job.logprobs or 0) if job.logprobs is not None else None,
                   ("chatcmpl-" if job.chat else "cmpl-") + uuid.uuid4().hex[:24], model_id)
        if job.stream:
            first = await run.next()
            return StreamingResponse(run.sse(first), media_type="text/event-stream",
                                     headers=out.timing_headers(first.timing, done=False))
        return await run.whole()

    return app


def _submit(scheduler: Scheduler, job: Job, listener, config: ServerConfig):
    """scheduler.submit, its refusals as OpenAI errors: 429 with Retry-After, 400 for a request too long."""
    try:
        return scheduler.submit(job.ids, job.params, listener, logprobs=job.logprobs)
    except QueueFull as e:
        raise ApiError(429, str(e), "rate_limit_error", code="queue_full",
                       headers={"retry-after": str(config.retry_after_s)}) from None
    except CapacityError as e:  # named after the prompt when it alone is too long
        long_prompt = len(job.ids) >= scheduler.engine.max_tokens
        raise ApiError(400, str(e), param=("messages" if job.chat else "prompt") if long_prompt else "max_tokens",
                       code="context_length_exceeded") from None


class _Run:
    """One submitted request on its way back: events in, an OpenAI response (whole or streamed) out."""

    def __init__(self, job: Job, req, events: asyncio.Queue, request: Request, timer, logprobs, rid: str,
                 model_id: str):
        self.job, self.req, self.events, self.request, self.timer = job, req, events, request, timer
        self.lp, self.rid, self.model = logprobs, rid, model_id

    async def next(self) -> Event:
        """The next event; a disconnected client cancels the request; an engine error becomes a 500."""
        while True:
            try:
                ev = await asyncio.wait_for(self.events.get(), timeout=0.5)
                break
            except asyncio.TimeoutError:
                if await self.request.is_disconnected():
                    self.req.cancel()
                    raise ApiError(499, "client disconnected") from None
        if ev.error:
            log.error("request %s failed: %s", self.rid, ev.error)
            raise ApiError(500, f"generation failed: {ev.error.splitlines()[0] if ev.error else ''}", "server_error")
        self.timer.event(ev)
        return ev

    async def whole(self) -> JSONResponse:
        text, lps, ev = "", [], None
        while ev is None or not ev.done:
            ev = await self.next()
            text += ev.text
            lps += ev.logprobs
        res, job = ev.result, self.job
        body = out.full(self.rid, job.chat, self.model, text, res, len(job.ids), self.lp.part(lps) if self.lp else None)
        return JSONResponse(body, headers=out.timing_headers(res.timing))

    async def sse(self, first: Event):
        """The SSE body: a role chunk (chat), text chunks, a final chunk with usage and timings, [DONE]."""
        ev, chat = first, self.job.chat
        try:
            if chat:
                yield out.chunk(self.rid, chat, self.model, {"role": "assistant", "content": ""}, None)
            while True:
                lp = self.lp.part(ev.logprobs) if self.lp and ev.logprobs else None
                if ev.text or lp:
                    yield out.chunk(self.rid, chat, self.model, {"content": ev.text} if chat else ev.text, None, lp)
                if ev.done:
                    res = ev.result
                    yield out.chunk(self.rid, chat, self.model, {} if chat else "", res.finish_reason,
                                    extra={"usage": out.usage(len(self.job.ids), res), "waferllm": out.predicted(res)})
                    break
                ev = await self.next()
            yield "data: [DONE]\n\n"
        except ApiError as e:  # headers are gone: the error travels as the stream's last event
            if e.status != 499:
                yield f"data: {json.dumps(e.body)}\n\n"
        except Exception:  # noqa: BLE001 - logged here, never a traceback to the client
            log.exception("stream %s failed", self.rid)
            yield f"data: {json.dumps(error_body('internal server error', 'server_error'))}\n\n"
        finally:  # the client went away mid-stream (or we finished): never keep decoding for nobody
            if not ev.done:
                self.req.cancel()


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI error body: ours, routing (404/405), and anything unexpected (500)."""

    @app.exception_handler(ApiError)
    async def _api_error(_req, exc: ApiError):
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, exc: RequestValidationError):
        return JSONResponse(error_body("invalid request"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_req, exc: Exception):
        log.error("unexpected %s: %s", type(exc).__name__, exc)
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)
