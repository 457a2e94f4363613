"""Traced ledgers kept on disk (engine/trace_store.py): a second process reads what the first traced, equal
to tracing afresh; keys that could collide are never stored; old code versions' folders are pruned."""

from __future__ import annotations

import os
import subprocess
import sys

from waferllm.engine import trace_store

PROBE = """
import json, sys, time
from waferllm.engine import cost, trace_store
from waferllm.engine.decode import DecodeProgram
from waferllm.engine.placement import plan_decode
from waferllm.model.registry import get_config
from waferllm.spec import get_device
trace_store.enable(sys.argv[1])
cfg, spec = get_config("llama3-8b"), get_device("wse2")
prog = DecodeProgram(cfg=cfg, plan=plan_decode(cfg, spec, (360, 360), "float16"), spec=spec)
t = time.perf_counter()
led = cost.layer_ledger(prog, [4096], 12, [0])
print(json.dumps({"time_s": led.time_s, "peak": led.peak_core_bytes, "phases": sorted(led.phases),
                  "trace_s": time.perf_counter() - t}))
"""


def _probe(folder) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", PROBE, str(folder)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_second_process_reads_the_first_ones_trace(tmp_path):
    first = _probe(tmp_path)
    files = list((tmp_path / trace_store.code_fingerprint()).glob("*.pkl"))
    assert files  # the first process stored its trace
    stamps = {f: f.stat().st_mtime_ns for f in files}
    second = _probe(tmp_path)
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # read, not traced and stored again
    assert {k: v for k, v in first.items() if k != "trace_s"} == {k: v for k, v in second.items() if k != "trace_s"}


def test_keys_that_could_collide_are_not_stored(tmp_path):
    import numpy as np

    trace_store.enable(tmp_path)
    try:
        trace_store.save(("x", np.arange(10_000)), "ledger")  # numpy elides the middle of a long array's repr
        trace_store.save(("y", object()), "ledger")  # an address changes every run
        assert trace_store.load(("x", np.arange(10_000))) is None
        trace_store.save(("z", 1, 2.5), "ledger")
        assert trace_store.load(("z", 1, 2.5)) == "ledger" and trace_store.load(("z", 1, 2.6)) is None
    finally:
        trace_store.enable(None)


def test_old_code_versions_are_pruned(tmp_path):
    for i in range(6):
        (tmp_path / f"old{i}").mkdir()
        os.utime(tmp_path / f"old{i}", (i, i))
    try:
        trace_store.enable(tmp_path)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert trace_store.code_fingerprint() in left and len(left) == trace_store.KEEP_VERSIONS
        assert "old5" in left and "old0" not in left
    finally:
        trace_store.enable(None)


def test_off_stores_nothing(tmp_path):
    trace_store.enable(None)
    trace_store.save(("z",), "ledger")
    assert trace_store.load(("z",)) is None and not any(tmp_path.iterdir())
