"""The checkpoint cache: a converted GGUF read back equals the conversion; stale or damaged entries are misses."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from waferllm.model import cache, load_model
from waferllm.model import gguf_loader


def _same(a, b):
    (ca, wa, ta), (cb, wb, tb) = a, b
    assert ca == cb
    xa, xb = wa.arrays(), wb.arrays()
    assert sorted(xa) == sorted(xb)
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k])
    assert np.shares_memory(wb.lm_head, wb.tok_emb) == np.shares_memory(wa.lm_head, wa.tok_emb)
    text = "Hello, wafer! 12345 <|im_end|>"
    assert ta.encode(text) == tb.encode(text)
    msgs = [{"role": "user", "content": "hi"}]
    assert ta.encode_chat(msgs) == tb.encode_chat(msgs)
    assert (ta.bos_id, ta.eos_id, ta.eos_ids, dict(ta.special_tokens)) == \
        (tb.bos_id, tb.eos_id, tb.eos_ids, dict(tb.special_tokens))


def test_entry_round_trips(smollm, tmp_path):
    assert cache.store_entry(tmp_path, "k", *smollm)
    _same(smollm, cache.load_entry(tmp_path, "k"))
    assert [p.name for p in tmp_path.iterdir()] == ["k"]  # no temporary folder left behind


def test_load_model_hits_without_reading_the_gguf(smollm, gguf_path, tmp_path, monkeypatch):
    calls = []
    real = gguf_loader.load_gguf

    def counting(path):
        calls.append(path)
        return real(path) if len(calls) == 1 else pytest.fail("the GGUF was read again")

    monkeypatch.setattr(gguf_loader, "load_gguf", counting)
    first = load_model(gguf_path, cache_dir=tmp_path)
    second = load_model(gguf_path, cache_dir=tmp_path)
    assert len(calls) == 1
    _same(first, second)
    _same(smollm, (dataclasses.replace(first[0], name=smollm[0].name), *first[1:]))  # named after the file


def test_a_changed_file_is_a_new_key(gguf_path, tmp_path):
    copy = tmp_path / "m.gguf"
    shutil.copyfile(gguf_path, copy)
    before = cache.entry_key(copy)
    os.utime(copy, ns=(1, 1))
    assert cache.entry_key(copy) != before


def test_a_damaged_entry_is_a_miss(smollm, tmp_path):
    assert cache.store_entry(tmp_path, "k", *smollm)
    (tmp_path / "k" / "weights.safetensors").write_bytes(b"not safetensors")
    assert cache.load_entry(tmp_path, "k") is None
    assert cache.load_entry(tmp_path, "absent") is None


def test_cli_checkpoint_cache_flag(tmp_path):
    from waferllm.cli import build_parser

    p = build_parser()
    assert p.parse_args(["generate"]).checkpoint_cache is None
    assert p.parse_args(["generate", "--checkpoint-cache", "off"]).checkpoint_cache == "off"
    assert p.parse_args(["serve", "--checkpoint-cache", "/x"]).checkpoint_cache == "/x"
    f = tmp_path / "file"
    f.write_text("")
    res = subprocess.run([sys.executable, "-m", "waferllm.cli", "generate", "--checkpoint-cache", str(f / "sub"),
                          "--prompt", "a"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "as the checkpoint cache" in res.stderr
