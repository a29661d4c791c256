"""The ``multijet`` command line's output: rich tables and progress bars when rich is installed, plain text
otherwise, and the table of ``multijet bench``'s fitted costs."""

from __future__ import annotations

from typing import Any

from ._text import plain_table

__all__ = ["show", "table", "folding_table", "Progress", "fits_table"]


def _console():
    try:
        from rich.console import Console

        return Console()
    except ImportError:
        return None


def show(obj: Any) -> None:
    """Print ``obj`` with rich when installed, else plainly."""
    console = _console()
    if console is not None:
        console.print(obj)
    else:
        print(obj)


def table(title: str, head: list[str], rows: list[list[str]]) -> Any:
    """A rich table, or the same as plain text."""
    try:
        from rich.table import Table  # noqa: F401 - rich installed?
    except ImportError:
        return f"{title}\n\n{plain_table(head, rows)}"
    from rich.markup import escape

    t = folding_table(title, head, rows)
    for r in rows:
        t.add_row(*map(escape, r))
    return t


def folding_table(title: str | None, head: list[str], rows: list[list[str]] = ()):
    """An empty rich table whose cells wrap onto more lines when the terminal is narrow (80 columns): a value is
    never cut off with an ellipsis, and a column of names (backends, methods) keeps its names whole."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=None if title is None else escape(title), title_justify="left")
    for i, h in enumerate(head):
        words = [w for r in rows if i < len(r) for w in str(r[i]).split()]
        named = words and all(w.replace("/", "").replace("_", "").replace("-", "").isalpha() for w in words)
        t.add_column(escape(h), overflow="fold", no_wrap=bool(named))
    return t


class Progress:
    """A rich progress bar, or one plain line per step."""

    def __init__(self, description: str):
        self.description = description
        self._bar = None
        self._task = None

    def __enter__(self) -> Progress:
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress
        except ImportError:
            return self
        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[step]}"),
        )  # fmt: skip
        self._bar.__enter__()
        self._task = self._bar.add_task(self.description, total=None, step="")
        return self

    def __call__(self, what: str, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, step=what)
        else:
            print(f"[{done}/{total}] {what}", flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def fits_table(result: dict[str, Any]) -> Any:
    """``multijet bench``'s summary: the fitted time and memory per unit of each backend × method."""
    unit = result["config"]["unit"]
    nested = {f["backend"]: f["time_ms_per_unit"] for f in result["fits"] if f["method"] == "nested"}

    def fmt(v: float | None, p: int = 3) -> str:
        return "—" if v is None else ("0" if abs(v) < 1e-9 else f"{v:.{p}g}")

    from .timing import slope_resolved

    def resolved(f) -> bool:
        return slope_resolved(f["time_ms_per_unit"], f.get("time_r2"))

    nested_ok = {f["backend"] for f in result["fits"] if f["method"] == "nested" and resolved(f)}
    rows = []
    for f in result["fits"]:
        ratio = None
        if f["backend"] in nested_ok and resolved(f):
            ratio = f["time_ms_per_unit"] / nested[f["backend"]]
        mem = [fmt(f[f"mem_{m}_mib_per_unit"]) for m in ("nondifferentiable", "differentiable")]
        time = fmt(f["time_ms_per_unit"]) if resolved(f) or f["time_ms_per_unit"] is None else "noise"
        rows.append([f["backend"], f["method"], time, fmt(ratio, 2), *mem, fmt(f["time_r2"], 3)])
    c = result["config"]
    title = f"{c['operator']} D={c['dim']} {c['dtype']}: fitted cost per {unit} (time: min of repetitions)"
    head = ["backend", "method", f"ms/{unit}", "× nested", f"MiB/{unit} (no grad)", f"MiB/{unit} (grad)", "R² time"]
    out = table(title, head, rows)
    if any(r[2] == "noise" for r in rows):
        note = (f"noise: the time did not grow measurably with the {unit}s (slope ≤ 0 or R² < 0.9); "
                "time more sizes, larger ones, or more repetitions")  # fmt: skip
        return _with_note(out, note)
    return out


def _with_note(obj: Any, note: str) -> Any:
    if isinstance(obj, str):
        return f"{obj}\n{note}"
    from rich.console import Group
    from rich.text import Text

    return Group(obj, Text(note))
