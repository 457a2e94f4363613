"""The numeric simulation over two local processes (JAX distributed runtime, Gloo on CPU): same tokens and
the same predicted figures (the same ledger) as one process; bad flag combinations are one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

COMMON = ("generate", "--prompt", "The capital of France is", "--grid", "20x20", "--max-new-tokens", "6", "--json",
          "--temperature", "0.7", "--seed", "3")  # sampled: the logits themselves are gathered across processes


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "waferllm.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_two_processes_equal_one():
    one, two = _run(*COMMON), _run(*COMMON, "--num-processes", "2")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # process 0 alone prints: one JSON object
    assert a["token_ids"] == b["token_ids"] and a["text"] == b["text"]
    assert a["predicted"] == b["predicted"]
    assert (a["peak_core_bytes"], a["routes_per_core"], a["kv"]) == (b["peak_core_bytes"], b["routes_per_core"], b["kv"])
    assert b["processes"] == 2 and b["devices"] == 2 and a["processes"] == 1


@pytest.mark.parametrize("args,needle", [
    (("--num-processes", "0"), "--num-processes must be >= 1"),
    (("--process-id", "1"), "--process-id needs --coordinator"),
    (("--coordinator", "127.0.0.1:1234"), "--coordinator needs --process-id"),
    (("--coordinator", "nohost", "--process-id", "0"), "--coordinator must be HOST:PORT"),
    (("--coordinator", "127.0.0.1:1", "--process-id", "2", "--num-processes", "2"), "--process-id must be in 0..1"),
])
@pytest.mark.parametrize("command", [("generate", "--prompt", "a"), ("serve", "--port", "0")])
def test_bad_distributed_flags_are_one_line(command, args, needle):
    res = _run(*command, *args, timeout=120)
    assert res.returncode == 2 and needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_processes_die_with_their_launcher():
    """A launcher killed outright (SIGKILL: no clean-up runs) takes its processes with it."""
    import os
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "waferllm.cli", *COMMON, "--num-processes", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids, deadline = [], time.time() + 60
    while len(kids) < 2 and time.time() < deadline:
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
        kids = [int(p) for p in out.split()]
        time.sleep(0.2)
    assert len(kids) == 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while any(os.path.exists(f"/proc/{k}") and "Z" not in _state(k) for k in kids) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{k}") and "Z" not in _state(k) for k in kids)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
