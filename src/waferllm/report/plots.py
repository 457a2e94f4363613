"""PNG figures for the report and `waferllm sweep --plot`: each function writes one PNG and returns its path.

Figures are drawn on a bare matplotlib Figure (Agg canvas) rather than through pyplot, so no global backend
is chosen and nothing is left open between calls.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

DPI = 110
COMPUTE, COMM = "#3b75af", "#ef8636"


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")  # format given: the name need not end in .png
    return path


def tokens_vs_grid(points: Mapping[str, Sequence], path, title: str = "",
                   best: Mapping[str, int | None] | None = None) -> Path:
    """Tokens/s against square grid side (cores), one line per label; points are autotune.Point-like."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    for label, pts in points.items():
        ok = sorted((p.side, p.tokens_per_s) for p in pts if p.tokens_per_s)
        if not ok:
            continue  # nothing fits: no line (the table says why)
        xs, ys = zip(*ok)
        (line,) = ax.plot(xs, ys, marker="o", ms=3.5, label=label)
        b = (best or {}).get(label)
        if b in xs:
            ax.plot([b], [ys[xs.index(b)]], marker="*", ms=13, color=line.get_color(), mec="black", mew=0.6)
    ax.set_xlabel("grid side (cores, square grid)")
    ax.set_ylabel("tokens/s")
    ax.set_yscale("log")  # prefill and decode differ by 10x or more; log keeps both readable
    ax.grid(alpha=0.3, which="both")
    ax.set_title(title or "predicted tokens/s against grid side (star: autotuned choice)", fontsize=10)
    if ax.lines:
        ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def breakdown_bar(breakdown: Mapping[str, Mapping[str, float]], path, clock_hz: float | None = None,
                  title: str = "", top: int = 14) -> Path:
    """Stacked compute vs communication time per phase label (ms at clock_hz, else cycles)."""
    items = sorted(breakdown.items(), key=lambda kv: -kv[1]["cycles"])
    if len(items) > top:  # keep the chart readable: the tail is merged into one bar
        rest = items[top - 1:]
        items = items[:top - 1] + [(f"other ({len(rest)})", {k: sum(v[k] for _, v in rest)
                                                            for k in ("cycles", "compute_cycles", "comm_cycles")})]
    scale = 1e3 / clock_hz if clock_hz else 1.0
    labels = [k for k, _ in items][::-1]  # largest on top
    comp = np.array([v["compute_cycles"] for _, v in items][::-1]) * scale
    comm = np.array([v["comm_cycles"] for _, v in items][::-1]) * scale
    fig = Figure(figsize=(7.5, 0.32 * len(labels) + 1.4))
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    ax.barh(y, comp, color=COMPUTE, label="compute")
    ax.barh(y, comm, left=comp, color=COMM, label="communication")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("time (ms)" if clock_hz else "cycles")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "time per phase", fontsize=10)
    return _save(fig, path)


def region_bytes(plan, n_layers: int | None = None) -> list[float]:
    """Bytes per core of every region's tiles in pipeline order (layer regions, then LM-head regions); a core
    under several regions holds them all, plus one set of working buffers (wafer_images adds them)."""
    n_layers = n_layers or plan.layers_per_stage * plan.layer_regions
    per_layer = plan.layer_weight_bytes + plan.kv_tokens_per_row * plan.kv_bytes_per_token
    g = plan.layers_per_stage
    out = [min(g, n_layers - i * g) * per_layer for i in range(plan.layer_regions)]  # the last may hold fewer
    return out + [float(plan.lm_core_bytes)] * plan.lm_regions


def region_boxes(plan, spec) -> list[tuple[int, int, int, int, int, str]]:
    """(wafer, y0, x0, height, width, kind) of every piece of every region, kind 'layer' or 'lm'
    (engine/placement.region_pieces: a region bent over a seam of the tape comes in pieces)."""
    from waferllm.engine.placement import region_pieces

    return [piece + ("layer" if g < plan.layer_regions else "lm",)
            for g in range(plan.layer_regions + plan.lm_regions) for piece in region_pieces(plan, spec, g)]


def wafer_images(plan, spec, n_layers: int | None = None) -> list[np.ndarray]:
    """One height_cores x width_cores array of bytes per core for each wafer; unused cores are 0."""
    from waferllm.engine.placement import region_pieces

    imgs = [np.zeros((spec.height_cores, spec.width_cores)) for _ in range(max(plan.wafers, 1))]
    busy = [np.zeros_like(i, dtype=bool) for i in imgs]  # cores holding a layer: one set of buffers each
    for g, b in enumerate(region_bytes(plan, n_layers)):
        for w, y, x, h, wd in region_pieces(plan, spec, g):
            imgs[w][y:y + h, x:x + wd] += b
            if g < plan.layer_regions:
                busy[w][y:y + h, x:x + wd] = True
    return [i + plan.breakdown["buffers"] * m for i, m in zip(imgs, busy)]


def wafer_heatmap(plan, spec, path, n_layers: int | None = None, max_wafers: int = 16) -> Path:
    """Heat map of bytes per core (KiB) over each wafer of a decode plan; colour scale ends at the SRAM size."""
    from matplotlib.patches import Rectangle

    imgs = wafer_images(plan, spec, n_layers)[:max_wafers]
    n = len(imgs)
    nc = min(n, 4)
    nr = math.ceil(n / nc)
    panel = 3.4 if nc > 1 else 4.2
    fig = Figure(figsize=(panel * nc + 1.2, panel * spec.height_cores / spec.width_cores * nr + 1.2),
                 layout="constrained")  # constrained layout makes room for the shared colorbar and the title
    axes = fig.subplots(nr, nc, squeeze=False).ravel()
    vmax = spec.sram_bytes_per_core / 1024
    im = None
    for i, ax in enumerate(axes):
        if i >= n:
            ax.set_axis_off()
            continue
        im = ax.imshow(imgs[i] / 1024, cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"wafer {i + 1}", fontsize=9)
        ax.set_xlabel("x (cores)", fontsize=8)
        ax.set_ylabel("y (cores)", fontsize=8)
        ax.tick_params(labelsize=7)
    for w, y, x, h, wd, kind in region_boxes(plan, spec):  # outlines: overlapping regions would otherwise merge
        if w < n:
            axes[w].add_patch(Rectangle((x - 0.5, y - 0.5), wd, h, fill=False, ec="white", lw=0.4))
            if kind == "lm":
                axes[w].text(x + wd / 2, y + h / 2, "LM", color="white", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=axes.tolist(), label="KiB per core (scale ends at the SRAM size)", shrink=0.85)
    more = f" (first {max_wafers} of {plan.wafers})" if plan.wafers > max_wafers else ""
    fig.suptitle(f"{plan.model} decode plan on {spec.name}: {plan.grid} regions, up to {plan.layers_per_region} "
                 f"layer(s) on a core\n{plan.layer_regions} layer + {plan.lm_regions} LM-head regions on {plan.wafers} "
                 f"wafer(s){more}", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=DPI, format="png")  # no tight_layout: constrained layout already placed everything
    return path


def wafer_vs_gpus(rows: Sequence[Mapping], path, title: str = "") -> Path:
    """Grouped bars of prefill and decode tokens/s per system (rows as `waferllm compare --json` rows)."""
    names = [r["system"] for r in rows]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(6.0, 1.3 * len(names) + 2), 4.2))
    ax = fig.add_subplot()
    for off, key, label in ((-0.2, "prefill_tokens_per_s", "prefill"), (0.2, "decode_tokens_per_s", "decode")):
        vals = [r[key] for r in rows]
        bars = ax.bar(x + off, vals, width=0.4, label=label)
        ax.bar_label(bars, labels=[f"{v:,.0f}" for v in vals], fontsize=7)
    ax.set_xticks(x, [n.split(" (")[0] for n in names], fontsize=8, rotation=10)
    ax.set_yscale("log")
    ax.set_ylabel("tokens/s")
    ax.grid(alpha=0.3, axis="y", which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or "wafer vs GPUs (predicted)", fontsize=10)
    return _save(fig, path)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
BAND = 0.10  # validation target: within 10% of the published figure


def validation_scatter(rows: Sequence[Mapping], path, title: str = "") -> Path:
    """Predicted against published for every numeric validation row (perf/validation.py): a log-log scatter with
    the y = x line and a +-10% band (marker: the paper's table; colour: the system), and beside it each row's
    predicted / published ratio, so that rows of different units (seconds, tokens/s, tokens) all read."""
    pts = [r for r in rows if not isinstance(r["published"], str) and r["published"] > 0 and r["predicted"] > 0]
    tables = list(dict.fromkeys(r["table"] for r in pts))
    systems = list(dict.fromkeys(r["system"] for r in pts))
    colour = {s: f"C{i % 10}" for i, s in enumerate(systems)}
    marker = {t: MARKERS[i % len(MARKERS)] for i, t in enumerate(tables)}
    fig = Figure(figsize=(12, 5.2))
    ax, rx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.25]})
    if pts:
        lo = min(min(r["published"], r["predicted"]) for r in pts) / 3
        hi = max(max(r["published"], r["predicted"]) for r in pts) * 3
        xs = np.geomspace(lo, hi, 50)
        ax.fill_between(xs, xs * (1 - BAND), xs * (1 + BAND), color="#9c9", alpha=0.5, lw=0, label="within 10%")
        ax.plot(xs, xs, color="black", lw=0.8, label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    for i, r in enumerate(pts):
        style = dict(marker=marker[r["table"]], color=colour[r["system"]], ms=6, ls="none", mec="black", mew=0.4)
        ax.plot([r["published"]], [r["predicted"]], **style)
        rx.plot([i], [r["predicted"] / r["published"]], **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("published (the row's unit: s, tokens/s or tokens)")
    ax.set_ylabel("predicted (same unit)")
    ax.grid(alpha=0.3, which="major")
    ax.set_title(title or "predicted against published", fontsize=10)
    rx.axhspan(1 - BAND, 1 + BAND, color="#9c9", alpha=0.5, lw=0)
    rx.axhline(1.0, color="black", lw=0.8)
    rx.set_yscale("log")
    rx.set_xticks(range(len(pts)), [r["id"] for r in pts], rotation=90, fontsize=5)
    rx.set_ylabel("predicted / published")
    rx.grid(alpha=0.3, axis="y", which="major")
    rx.set_title("each row (band: within 10%)", fontsize=10)
    handles = [Line2D([], [], marker=marker[t], color="grey", ls="none", mec="black", mew=0.4, label=t) for t in tables]
    handles += [Line2D([], [], marker="o", color=colour[s], ls="none", label=s) for s in systems]
    ax.legend(handles=handles, fontsize=7, loc="upper left", ncol=2)
    return _save(fig, path)
