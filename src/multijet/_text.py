"""Plain-text tables for the reports of :mod:`multijet.compare`, :mod:`multijet.autotune` and the CLI."""

from __future__ import annotations

__all__ = ["plain_table", "short"]


def short(s: str, n: int) -> str:
    """The first line of ``s``, cut to ``n`` characters (with an ellipsis)."""
    s = s.splitlines()[0] if s else s
    return s if len(s) <= n else s[: n - 1] + "…"


def plain_table(head: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule of dashes."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), line, *(fmt(r) for r in rows)])
