"""The data behind the paper-style tables, and the self-contained HTML report (`waferllm report`)."""

from __future__ import annotations

import datetime
import html
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from waferllm import WaferError
from waferllm.report import plots
from waferllm.report.tables import fmt_bytes, fmt_error, fmt_ratio, fmt_time, fmt_value

PAPER_MODELS = ("llama3-8b", "llama2-13b", "codellama-34b", "qwen2-72b")
PAPER_PREFILL, PAPER_DECODE = (480, 600, 720), (420, 540, 660)  # the grids of the paper's Tables 3 and 4
E2E_INPUT, E2E_OUTPUT = 2048, 128  # e2e kept cheap: 127 decode steps on top of one prefill
GPU, GPU_COUNTS = "a100-80gb", (1, 8, 16)

Progress = Callable[[int, int, str], None]  # (done, total, what is running now)


def _row(side: int, fn, sram: int) -> dict:
    """One table cell: predict() at side x side, or the one-line reason it cannot run."""
    try:
        p = fn()
    except WaferError as e:
        return {"side": side, "grid": f"{side}x{side}", "tokens_per_s": None, "error": str(e)}
    return {"side": side, "grid": f"{side}x{side}", "tokens_per_s": p.tokens_per_s, "error": None,
            "over_sram": p.peak_core_bytes > sram, "peak_core_bytes": p.peak_core_bytes,
            "paper_tokens_per_s": p.paper_tokens_per_s, "wafers": p.wafers, "time_s": p.time_s,
            "decode_grid": p.grid, "prefill_grid": p.prefill_grid}


def _mark_best(rows: list[dict], phase: str):
    """Flag the autotune.best choice among the rows (fewest wafers, then fastest); returns it or None."""
    from waferllm.perf.autotune import Point, best

    pts = [Point(side=r["side"], phase=phase, tokens_per_s=r["tokens_per_s"], wafers=r.get("wafers"),
                 reason=r["error"] or "") for r in rows]
    try:
        b = best(pts).side
    except WaferError:
        b = None
    for r in rows:
        r["best"] = r["side"] == b
    return b


def paper_tables(spec, models=PAPER_MODELS, dtype: str = "float16", context: int = 4096, input_len: int = 4096,
                 progress: Progress | None = None) -> dict:
    """predict() at the paper's grids: prefill (input_len tokens), decode (context, batch 1), e2e at the tuned grids."""
    from waferllm.model import get_config
    from waferllm.perf.autotune import best, prefill_point
    from waferllm.perf.predict import predict

    cfgs = [get_config(m) for m in models]  # resolve every name before any work (bad names fail fast)
    total, done = len(cfgs) * (len(PAPER_PREFILL) + len(PAPER_DECODE) + 2), 0
    out = {"device": spec.name, "dtype": dtype, "context": context, "input_len": input_len, "batch": 1,
           "e2e_input_len": E2E_INPUT, "e2e_output_len": E2E_OUTPUT, "models": {}}

    def step(what: str) -> None:
        nonlocal done
        if progress:
            progress(done, total, what)
        done += 1

    sram = spec.sram_bytes_per_core
    t0 = time.perf_counter()
    for cfg in cfgs:
        m = out["models"][cfg.name] = {}
        pre = []
        for s in PAPER_PREFILL:  # decode grid 'auto' only sets the wafer count, as `waferllm compare` does
            step(f"{cfg.name} prefill {s}x{s}")
            pre.append(_row(s, lambda s=s: predict(cfg, spec, phase="prefill", grid="auto", prefill_grid=(s, s),
                                                   input_len=input_len, output_len=1, dtype=dtype), sram))
        dec = []
        for s in PAPER_DECODE:  # input/output lengths are unused by decode; 1 keeps predict's length check on context
            step(f"{cfg.name} decode {s}x{s}")
            dec.append(_row(s, lambda s=s: predict(cfg, spec, phase="decode", grid=(s, s), context=context,
                                                   input_len=1, output_len=1, dtype=dtype), sram))
        _mark_best(pre, "prefill")
        d = _mark_best(dec, "decode")
        m["prefill"], m["decode"] = pre, dec
        # e2e: decode on the best paper decode grid; prefill grid tuned at the e2e prompt length (cheap, no LM trace)
        step(f"{cfg.name} tuning the e2e prefill grid")
        try:
            p = best([prefill_point(cfg, spec, s, dtype, E2E_INPUT, decode_side=d) for s in PAPER_PREFILL]).side
        except WaferError:  # no paper grid fits the prefill: cost the largest anyway, its row says "over SRAM"
            p = PAPER_PREFILL[-1]
        step(f"{cfg.name} e2e")
        if d is None:
            m["e2e"] = {"side": d, "grid": None, "tokens_per_s": None, "error": "no paper grid fits"}
        else:
            m["e2e"] = _row(d, lambda: predict(cfg, spec, phase="e2e", grid=(d, d), prefill_grid=(p, p),
                                               context=E2E_INPUT + E2E_OUTPUT, input_len=E2E_INPUT,
                                               output_len=E2E_OUTPUT, dtype=dtype), sram)
    out["wall_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------- HTML

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.best{background:#e7f5e7;font-weight:600}.miss{color:#c00;font-weight:700}.ok{color:#080}
.err{color:#999;font-size:.85em}small{color:#666}img{max-width:100%;border:1px solid #eee}
p.note{color:#555;font-size:.9em}"""


def _e(x) -> str:
    return html.escape(str(x))


def _table(headers, rows, numeric=()) -> str:
    """rows hold (html, css class) pairs or plain text (escaped here)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = []
        for i, c in enumerate(r):
            text, cls = c if isinstance(c, tuple) else (_e(c), "")
            cls = " ".join(x for x in (cls, "n" if i in numeric else "") if x)
            cells.append(f"<td class=\"{cls}\">{text}</td>" if cls else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _cell(r: dict) -> tuple[str, str]:
    if r.get("tokens_per_s") is None:
        return f"<span class=\"err\" title=\"{_e(r['error'])}\">- ({_e(r['error'][:60])})</span>", ""
    extra = f"artifact {r['paper_tokens_per_s']:,.0f} &middot; " if r.get("paper_tokens_per_s") else ""
    if r.get("over_sram"):
        extra = f"<span class=\"miss\">over SRAM: {fmt_bytes(r['peak_core_bytes'])}/core</span> &middot; " + extra
    return (f"{r['tokens_per_s']:,.0f}<br><small>{extra}{r['wafers']} wafer(s)</small>",
            "best" if r.get("best") else "")


def _paper_html(pt: dict) -> str:
    parts = []
    for phase, sides, what in (("prefill", PAPER_PREFILL, f"prefill of {pt['input_len']} tokens"),
                               ("decode", PAPER_DECODE, f"decode at context {pt['context']}, batch 1")):
        rows = [[name] + [_cell(r) for r in m[phase]] for name, m in pt["models"].items()]
        parts.append(f"<h3>{phase.capitalize()} tokens/s ({_e(what)})</h3>" +
                     _table(["model"] + [f"{s}x{s}" for s in sides], rows, numeric=range(1, 4)))
    rows = []
    for name, m in pt["models"].items():
        e = m["e2e"]
        rows.append([name, e.get("decode_grid") or "-", e.get("prefill_grid") or "-", _cell(e),
                     fmt_time(e["time_s"]) if e.get("time_s") else "-"])
    parts.append(f"<h3>End to end tokens/s (input {pt['e2e_input_len']}, output {pt['e2e_output_len']}, batch 1)</h3>"
                 + _table(["model", "decode grid", "prefill grid", "tokens/s", "total time"], rows, numeric=(3, 4)))
    return "\n".join(parts)


def _validation_html(v: dict, img: str) -> str:
    """Every row (published, predicted, error, ratio), the per-table summary and the scatter (perf/validation.py)."""
    out = [[r["table"], r["system"], r["id"], r["what"], fmt_value(r["published"], r["unit"]),
            fmt_value(r["predicted"], r["unit"]), fmt_error(r["rel_error"]), fmt_ratio(r), r["target"],
            ("ok", "ok") if r["ok"] else ("MISS", "miss")] for r in v["rows"]]
    summ = [[t["table"], t["system"], f"{t['ok']}/{t['rows']}",
             "bounds" if t["median_abs_error"] is None else f"{100 * t['median_abs_error']:.1f}%",
             "-" if t["worst_error"] is None else f"{fmt_error(t['worst_error'])} ({t['worst_id']})"]
            for t in v["tables"]]
    notes = "".join(f"<li>{_e(n['figure'])}: {_e(n['why'])}</li>" for n in v["not_rows"])
    return (img + _table(["table", "system", "on target", "median |error|", "worst error"], summ, numeric=(2, 3)) +
            f"<p>{v['n_ok']}/{v['n_rows']} rows within target (10% of the published figure, or the published "
            "bound). T10 and Ladder are the paper's baselines as we model them (--strategy t10|ladder); SGLang and "
            "A100 rows are perf/gpu.py's model.</p>" +
            _table(["table", "system", "figure", "what", "published", "predicted", "error", "pred/pub", "target",
                    "status"], out, numeric=(4, 5, 6, 7)) +
            (f"<p class=\"note\">Not rows of this table:</p><ul>{notes}</ul>" if notes else ""))


def _gpu_rows(cfg, spec, dec, pre) -> list[dict]:
    """`waferllm compare`-style rows: the wafer at its tuned grids, then GPU_COUNTS x GPU (perf.gpu's model)."""
    from waferllm.perf.gpu import get_gpu, gpu_predict

    gpu = get_gpu(GPU)
    rows = [{"system": f"{spec.name} (decode {dec.grid}, prefill {pre.prefill_grid}, {dec.wafers} wafer(s))",
             "prefill_tokens_per_s": pre.tokens_per_s, "decode_tokens_per_s": dec.tokens_per_s,
             "decode_j_per_token": spec.power_w * dec.wafers / dec.tokens_per_s}]
    for n in GPU_COUNTS:
        gp = gpu_predict(cfg, gpu, n, phase="prefill", input_len=4096)
        gd = gpu_predict(cfg, gpu, n, phase="decode", context=4096)
        rows.append({"system": f"{n} x {gpu.name}", "prefill_tokens_per_s": gp.tokens_per_s,
                     "decode_tokens_per_s": gd.tokens_per_s, "decode_j_per_token": gd.energy_j_per_token})
    for r in rows:
        r["prefill_speedup"] = rows[0]["prefill_tokens_per_s"] / r["prefill_tokens_per_s"]
        r["decode_speedup"] = rows[0]["decode_tokens_per_s"] / r["decode_tokens_per_s"]
    return rows


def _best_side(points) -> int | None:
    from waferllm.perf.autotune import best

    try:
        return best(points).side
    except WaferError:
        return None


STEPS = 7
FILES = ("index.html", "sweep.png", "breakdown_decode.png", "breakdown_prefill.png", "heatmap.png", "gpus.png",
         "validation.png")


def build_report(out_dir, model: str = "llama3-8b", spec=None, dtype: str = "float16", context: int = 4096,
                 input_len: int = 4096, paper_models=PAPER_MODELS, progress: Progress | None = None) -> Path:
    """Compute every section, draw the PNGs in a temporary folder, then move them into out_dir; -> index.html."""
    from waferllm.engine.placement import plan_decode
    from waferllm.model import get_config
    from waferllm.perf.autotune import candidate_sides, decode_point, prefill_point, sweep
    from waferllm.perf.predict import predict
    from waferllm.perf.validation import validate
    from waferllm.spec import get_device

    spec = spec or get_device("wse2")
    cfg = get_config(model)
    out_dir = Path(out_dir)
    say = progress or (lambda *a: None)
    sec = {}
    say(0, STEPS, "paper tables")
    pt = paper_tables(spec, paper_models, dtype, context, input_len)
    sec["paper"] = _paper_html(pt) + f"<p class=\"note\">computed in {pt['wall_s']:.1f} s. Cells: engine tokens/s; " \
        "<small>artifact</small> = the paper artifact's definition (one layer x layer count); green = autotuned " \
        "choice among the row's grids (fewest wafers, then fastest).</p>"
    say(1, STEPS, f"{cfg.name}: sweeping grid sides")
    sides = candidate_sides(spec)
    series = {f"{cfg.name} decode": sweep(lambda s: decode_point(cfg, spec, s, dtype, context), sides),
              f"{cfg.name} prefill": sweep(lambda s: prefill_point(cfg, spec, s, dtype, input_len), sides)}
    tuned = {k: _best_side(v) for k, v in series.items()}
    # nothing fits: still cost a grid (the paper's), so the page shows why rather than nothing
    d = tuned[f"{cfg.name} decode"] or PAPER_DECODE[0]
    p = tuned[f"{cfg.name} prefill"] or PAPER_PREFILL[-1]
    say(2, STEPS, "breakdowns")
    dec = predict(cfg, spec, phase="decode", grid=(d, d), context=context, input_len=1, output_len=1, dtype=dtype)
    pre = predict(cfg, spec, phase="prefill", grid="auto", prefill_grid=(p, p), input_len=input_len, output_len=1,
                  dtype=dtype)
    plan = plan_decode(cfg, spec, (d, d), dtype, min_tokens=context)
    say(3, STEPS, "wafer vs GPUs")
    gpu_rows = _gpu_rows(cfg, spec, dec, pre)
    say(4, STEPS, "validation")
    val = validate(spec)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".waferllm-report-", dir=out_dir.parent))  # same filesystem: os.replace works
    try:
        say(5, STEPS, "drawing figures")
        figs = {"sweep": plots.tokens_vs_grid(series, tmp / "sweep.png", best=tuned,
                                              title=f"{cfg.name} on {spec.name}: tokens/s against grid side"),
                "decode": plots.breakdown_bar(dec.breakdown, tmp / "breakdown_decode.png", spec.clock_hz,
                                              f"decode step on {dec.grid} (context {context})"),
                "prefill": plots.breakdown_bar(pre.breakdown, tmp / "breakdown_prefill.png", spec.clock_hz,
                                               f"prefill of {input_len} tokens on {pre.prefill_grid}"),
                "heat": plots.wafer_heatmap(plan, spec, tmp / "heatmap.png", cfg.n_layers),
                "gpus": plots.wafer_vs_gpus(gpu_rows, tmp / "gpus.png", f"{cfg.name}: {spec.name} vs {GPU}"),
                "validation": plots.validation_scatter(val["rows"], tmp / "validation.png",
                                                       f"{val['model']} on {spec.name}: predicted against published")}
        say(6, STEPS, "writing the page")
        page = _page(cfg, spec, dtype, context, input_len, sec, series, tuned, dec, pre, plan, gpu_rows, val, figs)
        (tmp / "index.html").write_text(page, encoding="utf-8")
        # every figure and the page exist: only now does anything land in out_dir
        out_dir.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(STEPS, STEPS, "done")
    return out_dir / "index.html"


def _page(cfg, spec, dtype, context, input_len, sec, series, tuned, dec, pre, plan, gpu_rows, val, figs) -> str:
    img = {k: f"<img src=\"{_e(v.name)}\" alt=\"{_e(k)}\">" for k, v in figs.items()}
    sweep_rows = [[k, f"{v}x{v}", f"{p.tokens_per_s:,.0f}", p.wafers] if v else
                  [k, ("no grid fits", "miss"), "-", "-"]
                  for k, v in tuned.items() for p in [next((p for p in series[k] if p.side == v), None)]]
    mem = [[k, fmt_bytes(v)] for k, v in plan.breakdown.items()]
    mem += [["LM-head core", fmt_bytes(plan.lm_core_bytes)], ["SRAM per core", fmt_bytes(spec.sram_bytes_per_core)]]
    gpu = [[r["system"], f"{r['prefill_tokens_per_s']:,.1f}", f"{r['decode_tokens_per_s']:,.1f}",
            f"{r['prefill_speedup']:,.1f}x", f"{r['decode_speedup']:,.1f}x", f"{r['decode_j_per_token']:.4g}"]
           for r in gpu_rows]
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>waferllm report: {_e(cfg.name)} on {_e(spec.name)}</title>
<style>{CSS}</style></head><body>
<h1>waferllm report: {_e(cfg.name)} on {_e(spec.name)}</h1>
<p class="note">Predicted from shape-only runs of the engine's mesh programs; {_e(dtype)}; generated {now}.</p>
<h2>1. Paper-style tables (predicted)</h2>
{sec['paper']}
<h2>2. Tokens/s against grid side</h2>
{img['sweep']}
{_table(['series', 'autotuned grid', 'tokens/s', 'wafers'], sweep_rows, numeric=(2, 3))}
<p class="note">Decode at context {context}, batch 1; prefill of {input_len} tokens. Square grids in steps of 60 cores;
autotuned = fastest among the grids on the fewest wafers.</p>
<h2>3. Time per layer phase</h2>
{''.join(f'<p class="miss">{_e(k)}: no candidate grid fits; costed on the paper grid anyway.</p>'
         for k, v in tuned.items() if v is None)}
<p>Decode step: {fmt_time(dec.time_s)} on {_e(dec.grid)} ({dec.tokens_per_s:,.1f} tokens/s).
Prefill: {fmt_time(pre.time_s)} on {_e(pre.prefill_grid)} ({pre.tokens_per_s:,.1f} tokens/s).</p>
{img['decode']}
{img['prefill']}
<h2>4. Bytes per core over the wafer (decode plan {_e(plan.grid)})</h2>
{img['heat']}
{_table(['per core', 'bytes'], mem, numeric=(1,))}
<p class="note">Regions lie along a tape over the wafer's bands (docs/decode-layout.md): {plan.layer_regions} layer
regions ({plan.layers_per_stage} layer(s) each), then {plan.lm_regions} LM-head region(s), overlapping where they
outnumber the tape; a core holds the tiles of every region over it (up to {plan.layers_per_region} layers), the KV
cache filling the rest; unused cores are 0.</p>
<h2>5. Wafer vs GPUs</h2>
{_table(['system', 'prefill t/s', 'decode t/s', 'prefill speed-up', 'decode speed-up', 'decode J/token'], gpu,
        numeric=range(1, 6))}
{img['gpus']}
<p class="note">GPUs: perf.gpu's roofline + allreduce model fitted to SGLang figures (prefill 4096 tokens, decode at
context 4096, batch 1); speed-up = wafer / row.</p>
<h2>6. Validation against published figures</h2>
{_validation_html(val, img['validation'])}
</body></html>
"""
