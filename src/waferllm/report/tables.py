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


def fmt_value(v, unit: str) -> str:
    """A published or predicted figure in its unit (strings, e.g. published bounds, as they are)."""
    if isinstance(v, str):
        return v
    if unit == "s":
        return f"{v * 1e6:.3f} us" if v < 1e-3 else f"{v:.4g} s"
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "tokens":
        return f"{v:,.0f}"
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"


def fmt_error(err: float | None) -> str:
    """A relative error (predicted / published - 1) as a signed percentage; '' when the row is a bound."""
    return "" if err is None else f"{100 * err:+.1f}%"


def fmt_ratio(row: dict) -> str:
    """predicted / published of a validation row, so orders of magnitude read at a glance; '' for bounds."""
    if row.get("rel_error") is None:
        return ""
    r = 1 + row["rel_error"]
    return f"{r:.3g}x" if r >= 0.01 else f"1/{1 / r:,.0f}x" if r > 0 else "0"


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
