"""Decode speed of the mesh simulation against transformers, same model, same process, same tokens.

Prints a small table and, last, one JSON object with mesh_tokens_per_s and transformers_tokens_per_s.
Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def mesh_speed(n: int, grid: str, prompt_ids: list[int]) -> tuple[float, list[int]]:
    from waferllm.engine.generate import Engine
    from waferllm.model import load_model
    from waferllm.spec import get_device

    cfg, w, tok = load_model("smollm2-135m")
    eng = Engine(cfg, w, get_device("wse2"), grid=grid, max_tokens=len(prompt_ids) + n + 1, tokenizer=tok)
    caches = eng.new_cache()
    tokk = prompt_ids[0]
    nxt, _, caches, _ = eng.decode_one_token(caches, tokk, 0)  # compile
    out = []
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        nxt, _, caches, _ = eng.decode_one_token(caches, nxt, i)
        out.append(nxt)
    return n / (time.perf_counter() - t0), out


def transformers_speed(n: int, prompt_ids: list[int]) -> tuple[float, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    from waferllm.model.registry import find_bundled_gguf

    path = find_bundled_gguf("smollm2-135m")
    torch.set_num_threads(os.cpu_count() or 2)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.eval()
    ids = torch.tensor([prompt_ids[:1]])
    out = []
    with torch.no_grad():
        res = model(ids, use_cache=True)
        past, nxt = res.past_key_values, res.logits[0, -1].argmax()
        t0 = time.perf_counter()
        for _ in range(n):
            res = model(nxt.view(1, 1), past_key_values=past, use_cache=True)
            past, nxt = res.past_key_values, res.logits[0, -1].argmax()
            out.append(int(nxt))
    return n / (time.perf_counter() - t0), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--grid", default="20x20")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    prompt = [1]
    m, mt = mesh_speed(args.tokens, args.grid, prompt)
    t, tt = transformers_speed(args.tokens, prompt)
    res = {"tokens": args.tokens, "grid": args.grid, "mesh_tokens_per_s": m, "transformers_tokens_per_s": t,
           "ratio": m / t, "same_tokens": mt == tt}
    if not args.json:
        print(f"| simulator | tokens/s |\n| --- | ---: |\n| mesh ({args.grid}) | {m:.1f} |\n| transformers | {t:.1f} |")
        print(f"ratio mesh / transformers: {m / t:.2f}x; same tokens: {mt == tt}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
