"""Continuous batching for many clients: a worker thread owns one Batch; requests queue for a lane.

Between decode steps the worker admits waiting requests into free lanes (their prefill runs then, so
prefills interleave with decode), steps every live sequence once, and hands each request its text as it
becomes final (with its tokens' log-probabilities when asked). A cancelled request leaves the batch at the
next step. Admission is bounded: submit() takes a request while a lane is free or the queue has room, and
raises QueueFull only when every lane and the queue are taken. Everything here is engine-level; the HTTP
server only calls submit() and reads events.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from waferllm import WaferError
from waferllm.engine.batch import Batch
from waferllm.engine.lockstep import IDLE_S, Channel, LeaderBatch, LogitsBatch
from waferllm.engine.logprobs import TokenLogprob
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
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token id, when the request asked


@dataclass(eq=False)
class Request:
    """One submitted prompt; `listener` is called from the worker thread for every Event."""

    prompt_ids: list[int]
    params: SamplingParams
    listener: Callable[[Event], None]
    logprobs: int | None = None  # None: none; else alternatives reported with each token's log-probability
    submitted_s: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    stream: TextStream | None = None

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Owns the engine's decode batch: up to max_batch sequences, up to max_queue waiting requests."""

    def __init__(self, engine, *, max_batch: int = 8, max_queue: int = 64, max_tokens: int | None = None,
                 channel: Channel | None = None):
        """channel: the other processes of a multi-process run replay this batch (engine/lockstep.py)."""
        self.engine, self.max_batch, self.max_queue = engine, max_batch, max_queue
        slots = batch_slots(engine, max_batch, max_tokens)
        self.batch = LogitsBatch(engine, max_batch, slots) if channel is None else \
            LeaderBatch(engine, max_batch, slots, channel)
        self.idle_s = None if channel is None else IDLE_S
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: dict = {}  # Seq -> Request
        self.admitting = 0  # taken off the queue, not yet in `running` (its prefill is running)
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

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, listener: Callable[[Event], None],
               *, logprobs: int | None = None) -> Request:
        """Queue a request; QueueFull when every lane is taken and max_queue more requests wait."""
        self.check(prompt_ids, params)
        req = Request(prompt_ids=list(prompt_ids), params=params, listener=listener, logprobs=logprobs)
        with self.cv:
            if len(self.waiting) >= self.max_queue + self._free_lanes():  # hung-up requests hold no place
                self.waiting = collections.deque(r for r in self.waiting if not r.cancelled)
            if len(self.waiting) >= self.max_queue + self._free_lanes():
                raise QueueFull(f"all {self.max_batch} lanes are busy and {self.max_queue} requests are waiting; "
                                "retry later")
            self.waiting.append(req)
            self.cv.notify()
        return req

    def _free_lanes(self) -> int:
        """Lanes not held by a running or admitting request (call with self.cv held)."""
        return max(0, self.max_batch - len(self.running) - self.admitting)

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
                    if not self.cv.wait(self.idle_s) and self.idle_s is not None:
                        break  # idle for idle_s: tell the followers, outside the lock
                idle = not (self._stop or self.waiting or self.running)
                if self._stop:
                    self.batch.close()
                    return
            if idle:  # a collective: submit() must not wait on it
                self.batch.idle()  # the followers' collective returns, and they wait again
                continue
            try:
                self._tick()
            except Exception as e:  # a failure fails the running requests, never the worker
                self._fail_all(e)

    def _tick(self) -> None:
        """Drop cancelled requests, fill free lanes, then one decode step for every live sequence."""
        self._drop_cancelled()
        self._admit()
        if self.batch.live:
            events = self.batch.step()
            self.steps += 1
            for seq, ev in events:
                self._deliver(seq, ev.token_id)

    def _admit(self) -> None:
        while self.batch.free_lanes():
            with self.cv:
                if not self.waiting:
                    return
                req = self.waiting.popleft()
                self.admitting += 1
            try:
                self._start(req)
            finally:
                with self.cv:
                    self.admitting -= 1

    def _start(self, req: Request) -> None:
        """Prefill one request into a free lane and deliver its first token (or its error)."""
        if req.cancelled:
            return
        req.stream = TextStream(self.engine.tokenizer, self.engine.eos_ids, req.params, req.prompt_ids)
        try:
            seq, ev = self.batch.add(req.prompt_ids, req.params, req.stream.res.timing)
        except Exception as e:  # a request that fails its prefill fails alone
            _tell(req, Event(done=True, error=str(e)))
            return
        with self.cv:
            self.running[seq] = req
        self._deliver(seq, ev.token_id)

    def _deliver(self, seq, token_id: int) -> None:
        req = self.running[seq]
        lp = self._logprob(seq, req, token_id)
        n_before = len(req.stream.res.token_ids)
        text = push_token(self.batch, seq, req.stream, token_id)
        new_ids = req.stream.res.token_ids[n_before:]
        lps = [lp] if lp is not None and new_ids else []
        if req.stream.done:
            with self.cv:
                del self.running[seq]
            req.stream.res.wall_s = time.perf_counter() - req.submitted_s
            _tell(req, Event(text=text, token_ids=new_ids, done=True, result=req.stream.res,
                             timing=req.stream.res.timing, logprobs=lps))
        elif text or new_ids:
            _tell(req, Event(text=text, token_ids=new_ids, timing=req.stream.res.timing, logprobs=lps))

    def _logprob(self, seq, req: Request, token_id: int) -> TokenLogprob | None:
        """token_id's log-probability from the LM head's logits that chose it; its cost joins the token's time."""
        if req.logprobs is None:
            return None
        lp = self.batch.logprob(seq, token_id, req.logprobs)
        led = self.batch.head.ledger(req.logprobs)
        self.engine.ledger.merge(led)
        t = seq.timing
        if t.decode_s:
            t.decode_s[-1] += led.time_s
        else:
            t.ttft_s += led.time_s
        return lp

    def _drop_cancelled(self) -> None:
        for seq, req in list(self.running.items()):
            if req.cancelled:
                self.batch.finish(seq, "cancelled")
                with self.cv:
                    del self.running[seq]

    def _fail_all(self, e: Exception) -> None:
        for seq, req in list(self.running.items()):
            self.batch.finish(seq, "error")
            _tell(req, Event(done=True, error=f"decode step failed: {e}"))
        with self.cv:
            self.running.clear()


def _tell(req: Request, ev: Event) -> None:
    """Hand an event to its listener; a listener that fails (its client is gone) cancels its request."""
    try:
        req.listener(ev)
    except Exception:  # noqa: BLE001 - the worker serves everyone else
        req.cancel()


def batch_slots(engine, max_batch: int, max_tokens: int | None = None) -> int:
    """KV slots per row of one lane: its share of the cache, enough for max_tokens (default the engine's)."""
    return engine.slots_for(1, (max_tokens or engine.max_tokens) - 1, max_batch)
