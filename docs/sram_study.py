"""The SRAM-per-core study of docs/sram-study.md: its explore sweep, its table and its plot in one command.

    .venv/bin/python docs/sram_study.py [--out STORE] [--num-cpus N] [--plot docs/sram-study.png]

Sweeps (perf/explore.py, on a local Ray runtime; resumable through the store) SRAM per core on wse2 for
Llama3-8B, CodeLlama-34B and Qwen2-72B: from 48 KiB to 480 KiB in 24 KiB steps, decode (batch 1, 4096 tokens
of context) and prefill (4096 tokens) on the autotuner's grids and decode on the paper's 420x420 grid; and,
to find where one pipeline stage becomes possible, decode on five fixed grids from 48 KiB to 1,696 KiB in
8 KiB steps (3,219 points in all). Prints the doc's two markdown tables and draws the plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MODELS = ("llama3-8b", "codellama-34b", "qwen2-72b")
KIB = 1024
SRAM = tuple(range(48 * KIB, 480 * KIB + 1, 24 * KIB))
FIXED = "420x420"
FINE = tuple(range(48 * KIB, 1696 * KIB + 1, 8 * KIB))
THRESHOLD_GRIDS = ("300x300", "360x360", "420x420", "480x480", "660x660")


def space_points():
    from waferllm.perf import explore as ex

    common = dict(models=MODELS, vary=(("sram_bytes_per_core", SRAM),), contexts=(4096,), input_lens=(4096,))
    fine = dict(common, vary=(("sram_bytes_per_core", FINE),))
    return ex.points(ex.Space(phases=("decode", "prefill"), **common)) + \
        ex.points(ex.Space(phases=("decode",), grids=(FIXED,), **common)) + \
        ex.points(ex.Space(phases=("decode",), grids=THRESHOLD_GRIDS, **fine))


def sweep(out: str, num_cpus: int | None) -> list[dict]:
    """Run (or resume) the sweep; every row of the study's points."""
    from rich.progress import Progress

    from waferllm.perf import explore as ex

    items = ex.resolve(space_points())
    with ex.open_store(out) as store, Progress(transient=True) as prog:
        task = prog.add_task("sram study (starting Ray)", total=None)
        s = ex.explore(items, store, num_cpus=num_cpus,
                       on_start=lambda todo, resumed, w: prog.update(task, total=todo, description="sram study"),
                       on_rows=lambda n: prog.advance(task, n))
        print(f"{s.points} points: {s.computed} computed, {s.resumed} resumed from {out}", file=sys.stderr)
        return store.rows(it.key for it in items)


def pick(rows: list[dict], model: str, phase: str, grid: str, sram: int) -> dict:
    return next(r for r in rows if (r["model"], r["phase"], r["grid_arg"], r["sram_bytes_per_core"])
                == (model, phase, grid, sram))


def table(rows: list[dict]) -> str:
    """Markdown: per model and SRAM (every 48 KiB), the autotuned decode plan, speed and energy, the decode
    plan on 420x420, and the autotuned prefill."""
    head = ["model", "SRAM/core", "decode grid", "wafers", "stages", "min stages", "decode tok/s", "J/token",
            "420x420: wafers", "min stages", "decode tok/s", "prefill grid", "wafers", "prefill tok/s"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i > 1 else "---" for i in range(len(head))) + "|"]
    for m in MODELS:
        for sram in SRAM[::2]:
            d, f, p = (pick(rows, m, ph, g, sram) for ph, g in (("decode", "auto"), ("decode", FIXED),
                                                               ("prefill", "auto")))
            cells = [m, f"{sram // KIB} KiB ({sram / SRAM[0]:.0f}x)"]
            cells += [d["grid"], d["wafers"], d["pipeline_stages"], d["min_pipeline_stages"], _tps(d), _joules(d)]
            cells += [f["wafers"], f["min_pipeline_stages"], _tps(f), p["prefill_grid"], p["wafers"], _tps(p)]
            out.append("| " + " | ".join("-" if c is None else str(c) for c in cells) + " |")
    return "\n".join(out)


def thresholds(rows: list[dict]) -> str:
    """Markdown: per model and decode grid, the least SRAM per core (8 KiB steps) for one pipeline stage,
    and for one wafer."""
    def first(m: str, grid: str, ok) -> str:
        hit = [s for s in FINE if ok(pick(rows, m, "decode", grid, s))]
        return f"{hit[0] // KIB} KiB ({hit[0] / FINE[0]:.1f}x)" if hit else f"> {FINE[-1] // KIB} KiB"

    out = ["| model | decode grid | one stage from | one wafer from | decode tok/s there |", "|---|---|---:|---:|---:|"]
    for m in MODELS:
        for g in THRESHOLD_GRIDS:
            one = [s for s in FINE if pick(rows, m, "decode", g, s)["min_pipeline_stages"] == 1]
            tps = _tps(pick(rows, m, "decode", g, one[0])) if one else "-"
            out.append(f"| {m} | {g} | {first(m, g, lambda r: r['min_pipeline_stages'] == 1)} | "
                       f"{first(m, g, lambda r: r['wafers'] == 1)} | {tps} |")
    return "\n".join(out)


def _tps(r: dict) -> str:
    return f"{r['tokens_per_s']:,.0f}" if r["ok"] else "infeasible"


def _joules(r: dict) -> str:
    """Energy per token: every wafer in use at the device's power, for one token's time."""
    return f"{r['power_w'] * r['wafers'] / r['tokens_per_s']:.1f}" if r["ok"] else "-"


def plot(rows: list[dict], path: str) -> None:
    """Four panels against SRAM per core, one colour per model: the fewest pipeline stages the decode grid
    allows, wafers, decode and prefill tokens/s (autotuned grids solid, 420x420 dashed, prefill dotted);
    the 5-6x band shaded."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(2, 2).ravel()
    lines = (("decode", "auto", "min_pipeline_stages", 0, "-"), ("decode", FIXED, "min_pipeline_stages", 0, "--"),
             ("decode", "auto", "wafers", 1, "-"), ("decode", FIXED, "wafers", 1, "--"),
             ("prefill", "auto", "wafers", 1, ":"), ("decode", "auto", "tokens_per_s", 2, "-"),
             ("decode", FIXED, "tokens_per_s", 2, "--"), ("prefill", "auto", "tokens_per_s", 3, "-"))
    for i, m in enumerate(MODELS):
        for ph, grid, col, k, style in lines:
            pts = [(s / KIB, pick(rows, m, ph, grid, s)[col]) for s in SRAM]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                what = "prefill" if ph == "prefill" else ("autotuned" if grid == "auto" else grid)
                axes[k].plot(*zip(*pts), style, color=f"C{i}", marker="o", ms=2.5, label=f"{m} {what}")
    titles = ("fewest pipeline stages the decode grid's SRAM allows", "wafers (decode; prefill dotted)",
              "decode tokens/s (batch 1, context 4096)", "prefill tokens/s (4096 tokens, autotuned grid)")
    for ax, title in zip(axes, titles):
        ax.axvspan(5 * 48, 6 * 48, color="grey", alpha=0.15)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("SRAM per core (KiB); shaded: 5-6x of 48 KiB")
        ax.grid(alpha=0.3)
    for k in (0, 1):
        axes[k].set_yscale("log", base=2)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=6, ncol=1)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="sram-study.duckdb", help="the explore store (resumed when it exists)")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--plot", default=str(Path(__file__).with_name("sram-study.png")))
    args = p.parse_args()
    rows = sweep(args.out, args.num_cpus)
    plot(rows, args.plot)
    print(table(rows))
    print()
    print(thresholds(rows))
    print(f"\nplot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
