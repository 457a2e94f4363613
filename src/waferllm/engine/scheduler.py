"""Continuous batching for many clients: a worker thread owns one Batch; requests queue for a lane.

Between decode steps the worker admits waiting requests into free lanes (their prefill runs then, so
prefills interleave with decode), steps every live sequence once, and hands each request its text as it
becomes final. A cancelled request leaves the batch at the next step. The queue is bounded: submit()
raises QueueFull instead of growing without bound. Everything here is engine-level; the HTTP server only
calls submit() and reads events.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from waferllm import WaferError
from waferllm.engine.batch import Batch
from waferllm.engine.sampling import SamplingParams
from waferllm.engine.textgen import GenerationResult, TextStream, push_token


class QueueFull(WaferError):
    """The request queue is full; try again later."""


@dataclass
class Event:
    """What a request hears: a text delta (with its token ids), then one final event (done or error)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    done: bool = False
    error: str | None = None
    result: GenerationResult | None = None
    timing: object | None = None  # the request's batch.Timing (TTFT known from the first event on)


@dataclass(eq=False)
class Request:
    """One submitted prompt; `listener` is called from the worker thread for every Event."""

    prompt_ids: list[int]
    params: SamplingParams
    listener: Callable[[Event], None]
    submitted_s: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    stream: TextStream | None = None

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Owns the engine's decode batch: up to max_batch sequences, up to max_queue waiting requests."""

    def __init__(self, engine, *, max_batch: int = 8, max_queue: int = 64, max_tokens: int | None = None):
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        max_tokens = max_tokens or engine.max_tokens
        slots = engine.slots_for(1, max_tokens - 1, max_batch)  # one lane's share, enough for max_tokens
        self.batch = Batch(engine, max_batch, slots)
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: dict = {}  # Seq -> Request
        self.cv = threading.Condition()
        self.steps = 0
        self._stop = False
        self.thread = threading.Thread(target=self._loop, name="waferllm-scheduler", daemon=True)
        self.thread.start()

    # --- client side ---------------------------------------------------------------
    def check(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """CapacityError now (not later in the worker) if the request can never fit one lane."""
        self.engine.check_capacity(len(prompt_ids), params.max_new_tokens, lanes=self.max_batch,
                                   slots=self.batch.slots)

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, listener: Callable[[Event], None]) -> Request:
        self.check(prompt_ids, params)
        req = Request(prompt_ids=list(prompt_ids), params=params, listener=listener)
        with self.cv:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the request queue is full ({self.max_queue} waiting); retry later")
            self.waiting.append(req)
            self.cv.notify()
        return req

    def close(self) -> None:
        with self.cv:
            self._stop = True
            self.cv.notify()
        self.thread.join(timeout=10)

    def stats(self) -> dict:
        return {"running": len(self.running), "waiting": len(self.waiting), "max_batch": self.max_batch,
                "max_queue": self.max_queue, "steps": self.steps,
                "predicted_decode_tokens_per_s": self.batch.decode_tokens_per_s}

    # --- worker --------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self._stop and not self.waiting and not self.running:
                    self.cv.wait()
                if self._stop:
                    return
            self._drop_cancelled()
            self._admit()
            if self.batch.live:
                try:
                    events = self.batch.step()
                except Exception as e:  # a failed step fails its requests, never the server
                    self._fail_all(e)
                    continue
                self.steps += 1
                for seq, ev in events:
                    self._deliver(seq, ev.token_id)

    def _admit(self) -> None:
        while self.batch.free_lanes():
            with self.cv:
                if not self.waiting:
                    return
                req = self.waiting.popleft()
            if req.cancelled:
                continue
            req.stream = TextStream(self.engine.tokenizer, self.engine.eos_ids, req.params, req.prompt_ids)
            try:
                seq, ev = self.batch.add(req.prompt_ids, req.params, req.stream.res.timing)
            except Exception as e:
                req.listener(Event(done=True, error=str(e)))
                continue
            self.running[seq] = req
            self._deliver(seq, ev.token_id)

    def _deliver(self, seq, token_id: int) -> None:
        req = self.running[seq]
        n_before = len(req.stream.res.token_ids)
        text = push_token(self.batch, seq, req.stream, token_id)
        new_ids = req.stream.res.token_ids[n_before:]
        if req.stream.done:
            del self.running[seq]
            req.stream.res.wall_s = time.perf_counter() - req.submitted_s
            req.listener(Event(text=text, token_ids=new_ids, done=True, result=req.stream.res,
                               timing=req.stream.res.timing))
        elif text or new_ids:
            req.listener(Event(text=text, token_ids=new_ids, timing=req.stream.res.timing))

    def _drop_cancelled(self) -> None:
        for seq, req in list(self.running.items()):
            if req.cancelled:
                self.batch.finish(seq, "cancelled")
                del self.running[seq]

    def _fail_all(self, e: Exception) -> None:
        for seq, req in list(self.running.items()):
            self.batch.finish(seq, "error")
            req.listener(Event(done=True, error=f"decode step failed: {e}"))
        self.running.clear()
