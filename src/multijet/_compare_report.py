"""The report of :func:`multijet.compare`: candidates, pairwise differences, verdict, tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._text import plain_table as _plain_table
from ._text import short as _short

__all__ = ["Candidate", "PairDiff", "CompareReport", "pair_diff"]


@dataclass
class Candidate:
    """One backend × method evaluation: its value (NumPy) or the error it raised."""

    backend: str
    method: str
    value: np.ndarray | None = None
    error: str | None = None
    seconds: float = float("nan")

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.method}"

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class PairDiff:
    """The agreement of two candidates: max absolute difference, and relative to the larger result."""

    a: str
    b: str
    max_abs: float
    max_rel: float
    tol: float  # the bound max_abs was checked against: atol + rtol · scale
    passed: bool
    note: str = ""
    tie: bool = False  # differs at x only: the two frameworks' AD conventions at an exact kink


@dataclass
class CompareReport:
    """What :func:`compare` found. ``bool(report)`` is ``report.passed``; ``print(report)`` shows the tables."""

    operator: str
    shape: tuple[int, ...]
    dtype: str
    order: int
    rtol: float
    atol: float
    reference: str | None
    native: str | None
    candidates: list[Candidate]
    pairs: list[PairDiff] = field(default_factory=list)
    samples: int | None = None
    allow_errors: bool = False

    @property
    def results(self) -> list[Candidate]:
        return [c for c in self.candidates if c.ok]

    @property
    def values(self) -> dict[str, np.ndarray]:
        """Each successful candidate's value, keyed ``"backend/method"``."""
        return {c.name: c.value for c in self.results}

    @property
    def errors(self) -> dict[str, str]:
        """Candidates that could not run, with the reason (an unsupported primitive, a missing framework…)."""
        return {c.name: c.error for c in self.candidates if not c.ok}

    @property
    def failures(self) -> list[PairDiff]:
        return [p for p in self.pairs if not p.passed]

    @property
    def ties(self) -> list[PairDiff]:
        """Pairs that differ at ``x`` but agree just beside it: ``x`` lies on a kink (max, min, clip, abs,
        sort, …) where the frameworks' own AD choose different one-sided derivatives."""
        return [p for p in self.pairs if p.tie]

    @property
    def passed(self) -> bool:
        """At least two results, every pair of them within tolerance, and (unless ``allow_errors``) no
        candidate that raised."""
        return len(self.results) >= 2 and not self.failures and (self.allow_errors or not self.errors)

    @property
    def max_abs(self) -> float:
        return max((p.max_abs for p in self.pairs), default=float("nan"))

    @property
    def max_rel(self) -> float:
        return max((p.max_rel for p in self.pairs), default=float("nan"))

    def __bool__(self) -> bool:
        return self.passed

    def verdict(self) -> str:
        if len(self.results) < 2:
            return f"INCONCLUSIVE: {len(self.results)} result(s), need two to compare"
        if self.failures:
            worst = max(self.failures, key=lambda p: p.max_rel)
            return (
                f"FAIL: {len(self.failures)} of {len(self.pairs)} pairs disagree "
                f"(worst {worst.a} vs {worst.b}: max |diff| {worst.max_abs:.3g} > tol {worst.tol:.3g})"
            )
        if self.errors and not self.allow_errors:
            return (
                f"FAIL: {len(self.errors)} candidate(s) raised ({', '.join(self.errors)}); the other "
                f"{len(self.results)} agree. Pass allow_errors=True to judge only the candidates that ran"
            )
        agree = [p for p in self.pairs if not p.tie]
        worst_abs = max((p.max_abs for p in agree), default=0.0)
        worst_rel = max((p.max_rel for p in agree), default=0.0)
        text = (
            f"PASS: {len(self.results)} results agree (max |diff| {worst_abs:.3g}, max rel {worst_rel:.3g}, "
            f"rtol {self.rtol:.2g})"
        )
        if self.ties:
            first = self.ties[0]
            text += (
                f"; {len(self.ties)} pair(s) differ only at an exact tie (e.g. {first.a} vs {first.b}): x lies on "
                "a kink (max, min, "
                "clip, abs, sort, …) where the frameworks' own AD use different conventions; they agree at "
                "points beside x"
            )
        return text

    def _header(self) -> str:
        kind = f"randomised, {self.samples} samples (same directions everywhere)" if self.samples else "exact"
        ref = f"; reference {self.reference}" if self.reference else ""
        nat = f"; framework-native program ({self.native}): its methods against its nested AD" if self.native else ""
        return f"compare {self.operator} on x{list(self.shape)} {self.dtype}, order {self.order}, {kind}{ref}{nat}"

    def _candidate_rows(self, preview: int = 3) -> list[list[str]]:
        ref = next((c for c in self.candidates if c.name == self.reference), None)
        rows = []
        for i, c in enumerate(self.candidates, 1):
            if not c.ok:
                rows.append([str(i), c.backend, c.method, "—", "—", "—", "—", "error: " + _short(c.error or "", 70)])
                continue
            if ref is not None and c is not ref:
                d = pair_diff(ref, c, self.rtol, self.atol)
                tie = any(p.tie and {p.a, p.b} == {ref.name, c.name} for p in self.pairs)
                status = "tie" if tie else ("ok" if d.passed else "DISAGREES")
                diff, rel = f"{d.max_abs:.2e}", f"{d.max_rel:.2e}"
            else:
                diff, rel, status = ("reference", "", "ok") if c is ref else ("—", "—", "ok")
            ms = f"{c.seconds * 1e3:.1f}"
            rows.append([str(i), c.backend, c.method, _preview(c.value, preview), diff, rel, ms, status])
        return rows

    def _matrix_rows(self) -> tuple[list[str], list[list[str]]]:
        """Upper triangle of max relative differences, rows and columns numbered as in the first table."""
        idx = {c.name: i for i, c in enumerate(self.candidates, 1)}
        ok = [c for c in self.candidates if c.ok]
        by = {(p.a, p.b): p for p in self.pairs}
        head = ["max rel diff", *(str(idx[c.name]) for c in ok[1:])]
        rows = []
        for i, a in enumerate(ok[:-1]):
            row = [f"{idx[a.name]} {a.name}"]
            for j, b in enumerate(ok[1:], 1):
                p = by.get((a.name, b.name))
                mark = " t" if p is not None and p.tie else ("" if p is None or p.passed else " !")
                row.append("" if j <= i or p is None else f"{p.max_rel:.1e}" + mark)
            rows.append(row)
        return head, rows

    def _pair_rows(self) -> list[list[str]]:
        rows = []
        for p in self.pairs:
            verdict = ("pass" if p.passed else "FAIL") + p.note
            rows.append([p.a, p.b, f"{p.max_abs:.2e}", f"{p.max_rel:.2e}", f"{p.tol:.2e}", verdict])
        return rows

    _CAND_HEAD = ["#", "backend", "method", "value", "|diff| vs ref", "rel", "ms", "status"]
    _PAIR_HEAD = ["a", "b", "max |a-b|", "max rel", "bound", "result"]

    def table(self, pairs: bool = False) -> str:
        """Plain-text report; ``pairs=True`` lists every pair (absolute, relative, bound) instead of the matrix."""
        parts = [self._header(), _plain_table(self._CAND_HEAD, self._candidate_rows())]
        if self.pairs and pairs:
            parts.append(_plain_table(self._PAIR_HEAD, self._pair_rows()))
        elif self.pairs:
            parts.append(_plain_table(*self._matrix_rows()))
        parts.append(self.verdict())
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.table()

    __repr__ = __str__

    def __rich__(self):  # pragma: no cover - exercised when rich prints the report
        from rich.console import Group
        from rich.markup import escape
        from rich.text import Text

        from ._cli_output import folding_table

        cand_rows = self._candidate_rows(preview=1)
        cand = folding_table(self._header(), self._CAND_HEAD, cand_rows)
        for row in cand_rows:
            cand.add_row(*map(escape, row), style=None if row[-1] in ("ok", "tie") else "red")
        out: list = [cand]
        if self.pairs:
            head, rows = self._matrix_rows()
            matrix = folding_table(None, head, rows)
            for row in rows:
                matrix.add_row(escape(row[0].split()[0]), *map(escape, row[1:]))
            out.append(matrix)
        out.append(Text(self.verdict(), style="bold green" if self.passed else "bold red"))
        return Group(*out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (values as nested lists)."""
        return {
            "operator": self.operator, "shape": list(self.shape), "dtype": self.dtype, "order": self.order,
            "samples": self.samples, "rtol": self.rtol, "atol": self.atol, "reference": self.reference,
            "native": self.native, "passed": self.passed, "verdict": self.verdict(),
            "candidates": [
                {"backend": c.backend, "method": c.method, "seconds": c.seconds, "error": c.error,
                 "value": None if c.value is None else np.asarray(c.value).tolist()}
                for c in self.candidates
            ],
            "pairs": [p.__dict__ for p in self.pairs],
        }  # fmt: skip

    def assert_passed(self) -> None:
        """Raise ``AssertionError`` with the whole report unless every pair agrees."""
        if not self.passed:
            raise AssertionError(str(self))


def pair_diff(a: Candidate, b: Candidate, rtol: float, atol: float) -> PairDiff:
    va, vb = np.asarray(a.value, dtype=np.float64), np.asarray(b.value, dtype=np.float64)
    if va.shape != vb.shape:
        return PairDiff(a.name, b.name, float("inf"), float("inf"), 0.0, False, f" (shapes {va.shape} vs {vb.shape})")
    if va.size == 0:
        return PairDiff(a.name, b.name, 0.0, 0.0, atol, True)
    finite = np.isfinite(va) & np.isfinite(vb)
    if not finite.all():
        same = np.array_equal(va[~finite], vb[~finite], equal_nan=True)
        if not same:
            return PairDiff(a.name, b.name, float("inf"), float("inf"), 0.0, False, " (non-finite values differ)")
    diff = float(np.max(np.abs(va - vb)[finite], initial=0.0))
    scale = float(max(np.max(np.abs(va[finite]), initial=0.0), np.max(np.abs(vb[finite]), initial=0.0)))
    tol = atol + rtol * scale
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    return PairDiff(a.name, b.name, diff, rel, tol, diff <= tol)


# --- plain-text tables -----------------------------------------------------------------------------------------


def _preview(v: np.ndarray | None, k: int) -> str:
    if v is None:
        return "—"
    flat = np.asarray(v).ravel()
    s = ", ".join(f"{t:.4g}" for t in flat[:k])  # a few digits: the diff columns carry the precision
    return f"[{s}{f', +{flat.size - k} more' if flat.size > k else ''}]" if np.ndim(v) else s


