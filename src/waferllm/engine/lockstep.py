"""Serving across processes: process 0 drives the batch, every other process replays it in lockstep.

A multi-process simulation is SPMD: every process must launch the same programs, on the same inputs, in
the same order, or the collectives inside them wait forever. Only process 0 hears clients, so its
batch announces each operation that reaches the device (add a sequence, step, take a sequence out, a
token's logprobs) before running it; the others receive it with JAX's own collective
(multihost_utils.broadcast_one_to_all) and run the same operation on their own copy of the batch. What a
Batch decides by itself (end of sequence, length) every copy decides alike, so it is never sent.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from waferllm.engine.batch import Batch
from waferllm.engine.logprobs import LogprobHead
from waferllm.engine.sampling import SamplingParams

MIN_PAYLOAD_BYTES = 256  # payloads are padded to a power of two from here: few shapes, few compiles
IDLE_S = 5.0  # an idle leader says so this often, so followers never sit in one collective for long


class Channel:
    """Commands from process 0 to every process: (op, args) as JSON over broadcast_one_to_all."""

    def __init__(self, leader: bool):
        self.leader = leader

    def send(self, op: str, **args) -> None:
        self._exchange(json.dumps({"op": op, **args}).encode())

    def recv(self) -> dict:
        return json.loads(self._exchange(b"").decode())

    def _exchange(self, data: bytes) -> bytes:
        """data from process 0 to all: its length first, then the bytes padded to a power of two."""
        from jax.experimental.multihost_utils import broadcast_one_to_all

        n = int(broadcast_one_to_all(np.array([len(data)], np.int64), is_source=self.leader)[0])
        size = max(MIN_PAYLOAD_BYTES, 1 << (n - 1).bit_length())
        buf = np.zeros(size, np.uint8)
        buf[: len(data)] = np.frombuffer(data, np.uint8)
        return bytes(np.asarray(broadcast_one_to_all(buf, is_source=self.leader))[:n])


def _params_json(p: SamplingParams) -> dict:
    return {**dataclasses.asdict(p), "stop": list(p.stop)}


class LogitsBatch(Batch):
    """A Batch that keeps each sequence's latest logits_x, for the requests that ask for logprobs."""

    def __init__(self, engine, lanes: int, slots: int):
        super().__init__(engine, lanes, slots)
        self.head = LogprobHead(engine.prog, engine.cfg.vocab_size)

    def logprob(self, seq, token_id: int, top_n: int):
        """token_id's TokenLogprob (and the top_n best) from the sequence's latest logits."""
        return self.head.token(seq.logits_x, token_id, top_n)

    def idle(self) -> None:
        """Nothing waits on a single process."""

    def close(self) -> None:
        """Nothing to release on a single process."""

    def _emit(self, seq, greedy_tok: int, logits, first: bool):
        seq.logits_x = logits
        return super()._emit(seq, greedy_tok, logits, first)


class LeaderBatch(LogitsBatch):
    """Process 0's batch: announces every operation to the followers, then runs it."""

    def __init__(self, engine, lanes: int, slots: int, channel: Channel):
        super().__init__(engine, lanes, slots)
        self.channel, self._inside = channel, False

    def add(self, prompt_ids, params, timing=None):
        self.channel.send("add", prompt_ids=[int(i) for i in prompt_ids], params=_params_json(params))
        return self._quiet(super().add, prompt_ids, params, timing)

    def step(self):
        if not self.live:  # Batch.step returns before any device work: nothing to announce
            return []
        self.channel.send("step")
        return self._quiet(super().step)

    def finish(self, seq, reason: str = "stop") -> None:
        if not self._inside and self.seqs[seq.lane] is seq:  # a decision of the caller's, not the batch's
            self.channel.send("finish", lane=seq.lane, reason=reason)
        super().finish(seq, reason)

    def logprob(self, seq, token_id: int, top_n: int):
        self.channel.send("logprob", lane=seq.lane, token_id=int(token_id), top_n=int(top_n))
        return super().logprob(seq, token_id, top_n)

    def idle(self) -> None:
        self.channel.send("idle")

    def close(self) -> None:
        self.channel.send("stop")

    def _quiet(self, fn, *args):
        self._inside = True
        try:
            return fn(*args)
        finally:
            self._inside = False


def follow(engine, lanes: int, slots: int, channel: Channel) -> None:
    """Replay process 0's batch operations on this process's copy until it stops."""
    batch = LogitsBatch(engine, lanes, slots)
    recent: dict[int, object] = {}  # lane -> its latest sequence (a finished one still has logits)
    while (cmd := channel.recv())["op"] != "stop":
        op = cmd["op"]
        if op == "add":
            params = SamplingParams(**{**cmd["params"], "stop": tuple(cmd["params"]["stop"])})
            try:
                seq, _ = batch.add(cmd["prompt_ids"], params)
            except Exception:  # noqa: BLE001 - process 0 failed this request the same way, before any collective
                continue
            recent[seq.lane] = seq
        elif op == "step":
            batch.step()
        elif op == "finish" and batch.seqs[cmd["lane"]] is not None:
            batch.finish(batch.seqs[cmd["lane"]], cmd["reason"])
        elif op == "logprob":
            batch.logprob(recent[cmd["lane"]], cmd["token_id"], cmd["top_n"])
