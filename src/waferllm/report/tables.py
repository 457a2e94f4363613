"""Plain-text tables in the style of llama-bench (pipes, right-aligned numbers)."""

from __future__ import annotations

from typing import Sequence


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.2f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.3f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown-pipe table; numbers right-aligned, text left-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    right = [all(_numeric(r[i]) for r in cells) if cells else False for i in range(len(headers))]

    def line(vals):
        return "| " + " | ".join(v.rjust(w) if rt else v.ljust(w) for v, w, rt in zip(vals, widths, right)) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if rt else "-" * w for w, rt in zip(widths, right)) + " |"
    return "\n".join([line(headers), sep] + [line(r) for r in cells])


def _numeric(s: str) -> bool:
    t = s.replace(",", "").replace("%", "").replace("x", "").split(" ")[0]
    try:
        float(t)
        return True
    except ValueError:
        return False
