"""``mj.compare``: run one operator on every installed backend and method and check that they agree.

An array-API program runs on NumPy, torch and JAX (float64 by default); a framework-native program (an
``nn.Module``, a function of JAX arrays, or any ``f`` given a torch / JAX ``x``) runs on its own framework,
whose ``collapsed`` and ``standard`` methods are checked against its ``nested`` AD. Every pair of results is
compared norm-wise, ``max|a − b| ≤ atol + rtol · max(max|a|, max|b|)``, with tolerances that grow with the
dtype's machine epsilon and the operator's order (:func:`tolerance`).
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import api
from ._dispatch import backend_methods, native_backend, to_numpy
from ._text import plain_table as _plain_table
from ._text import short as _short
from .backends import available_backends, infer_backend
from .spec import Operator

__all__ = ["compare", "CompareReport", "Candidate", "PairDiff", "tolerance", "native_backend"]


def tolerance(dtype: Any, order: int) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing two evaluations of an order-``order`` operator in ``dtype``.

    ``rtol = 8 ε^(2/3) · 3^(order−2)`` (float64 K=2: 3e-10, K=4: 3e-9; float32 K=2: 2e-4, K=4: 2e-3),
    ``atol = 100 ε`` for results that are zero up to round-off.
    """
    name = str(dtype).replace("torch.", "")  # "float32", torch.float32, jnp / np dtypes
    try:
        np_dtype = np.dtype(dtype if isinstance(dtype, type) else name)
    except TypeError:
        raise TypeError(f"tolerance needs a floating-point dtype, got {dtype!r}") from None
    eps = float(np.finfo(np_dtype).eps)
    return 8.0 * eps ** (2.0 / 3.0) * 3.0 ** (order - 2), 100.0 * eps


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
        return (
            f"PASS: {len(self.results)} results agree (max |diff| {self.max_abs:.3g}, max rel {self.max_rel:.3g}, "
            f"rtol {self.rtol:.2g})"
        )

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
                d = _pair(ref, c, self.rtol, self.atol)
                diff, rel, status = f"{d.max_abs:.2e}", f"{d.max_rel:.2e}", "ok" if d.passed else "DISAGREES"
            else:
                diff, rel, status = ("(reference)", "", "ok") if c is ref else ("—", "—", "ok")
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
                row.append("" if j <= i or p is None else f"{p.max_rel:.1e}" + ("" if p.passed else " !"))
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
        from rich.table import Table
        from rich.text import Text

        cand = Table(*map(escape, self._CAND_HEAD), title=escape(self._header()), title_justify="left")
        for row in self._candidate_rows(preview=1):
            cand.add_row(*map(escape, row), style=None if row[-1] == "ok" else "red")
        out: list = [cand]
        if self.pairs:
            head, rows = self._matrix_rows()
            matrix = Table(*map(escape, head))
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


def compare(
    op: Operator,
    f: Callable,
    x,
    backends: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    *,
    dtype: str | None = None,
    samples: int | None = None,
    distribution: str | None = None,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    allow_errors: bool = False,
) -> CompareReport:
    """Evaluate ``op`` on ``f`` at ``x`` with every backend × method and compare all pairs.

    ``backends`` defaults to every installed backend for an array-API program given NumPy ``x``, and to the
    program's own framework for a native one. ``methods`` defaults to each backend's methods (NumPy has no
    ``nested``). NumPy ``x`` is cast to ``dtype`` (default float64, or an ``nn.Module``'s parameter dtype;
    for JAX, float64 is switched on for the comparison only); a torch or JAX ``x`` keeps its dtype unless
    ``dtype`` is given. Randomised
    (``samples=S``) comparisons use the same ``seed``, hence the same directions, on every backend.
    ``rtol`` / ``atol`` override :func:`tolerance`. A candidate that raises is reported, not fatal; it fails the
    comparison unless ``allow_errors=True``.
    """
    if not isinstance(op, Operator):
        raise TypeError(f"expected an operator spec such as mj.Laplacian(), got {type(op).__name__}")
    native = native_backend(f, x)
    x = _cast(x, dtype or _module_dtype(f))
    if x.ndim not in (1, 2) or x.shape[-1] < 1:
        raise ValueError(f"x must have shape (D,) or (N, D) with D >= 1, got shape {tuple(x.shape)}")
    # an operator that cannot be planned fails the same way everywhere: say so once, not once per backend
    api.plan(op, int(x.shape[-1]), samples=samples, distribution=distribution, seed=seed)
    dt = str(x.dtype).replace("torch.", "")
    installed = available_backends()
    if backends is None:
        backends = [native] if native is not None else installed
    else:
        backends = list(backends)
    for b in backends:
        if not isinstance(b, str):
            raise TypeError(f"backends must be names such as 'torch', got {b!r}")
    if methods is not None:
        from .plan import METHODS

        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; expected some of {METHODS}")
    candidates: list[Candidate] = []
    for b in backends:
        if b not in installed:
            candidates.append(Candidate(b, "*", error=f"backend {b!r} is not installed (installed: {installed})"))
            continue
        try:
            offered = backend_methods(b)
        except Exception as exc:  # noqa: BLE001 - a broken backend is reported, not fatal
            candidates.append(Candidate(b, "*", error=f"{type(exc).__name__}: {exc}"))
            continue
        for m in methods if methods is not None else offered:
            if m not in offered:
                continue
            candidates.append(_evaluate(op, f, x, b, m, samples, distribution, seed, dt))
    order = int(op.order)
    r_default, a_default = tolerance(dt, order)
    rtol = r_default if rtol is None else float(rtol)
    atol = a_default if atol is None else float(atol)
    ok = [c for c in candidates if c.ok]
    pairs = [_pair(a, b, rtol, atol) for a, b in itertools.combinations(ok, 2)]
    return CompareReport(
        operator=repr(op), shape=tuple(int(s) for s in x.shape), dtype=dt, order=order, rtol=rtol, atol=atol,
        reference=_reference(ok, native), native=native, candidates=candidates, pairs=pairs, samples=samples,
        allow_errors=allow_errors,
    )  # fmt: skip


def _module_dtype(f) -> str | None:
    """The parameter dtype of an ``nn.Module`` (NumPy input is cast to it), else None."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(f, torch.nn.Module):
        p = next(iter(f.parameters()), None)
        if p is not None and p.is_floating_point():
            return str(p.dtype).replace("torch.", "")
    return None


def _cast(x, dtype: str | None):
    source = infer_backend(x)
    if source == "numpy":
        return np.asarray(x, dtype=dtype or "float64")
    if dtype is None:
        return x
    if source == "torch":
        import torch

        return x.to(getattr(torch, dtype))
    return x.astype(dtype)


@contextlib.contextmanager
def _x64(backend: str, dtype: str) -> Iterator[None]:
    """float64 for JAX during one evaluation, without changing the user's global JAX configuration."""
    if backend != "jax" or dtype != "float64":
        yield
        return
    import jax

    if jax.config.jax_enable_x64:
        yield
        return
    enable = getattr(jax, "enable_x64", None)
    if enable is not None:
        with enable(True):
            yield
        return
    jax.config.update("jax_enable_x64", True)  # pragma: no cover - old JAX without the context manager
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


def _evaluate(op, f, x, backend, method, samples, distribution, seed, dtype) -> Candidate:
    c = Candidate(backend, method)
    try:
        with _x64(backend, dtype):
            t0 = time.perf_counter()
            r = api.apply(op, f, x, backend=backend, method=method, samples=samples, distribution=distribution,
                          seed=seed)  # fmt: skip
            c.value = to_numpy(r)
            c.seconds = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - each candidate's failure is part of the report
        c.error = f"{type(exc).__name__}: {exc}"
    return c


def _pair(a: Candidate, b: Candidate, rtol: float, atol: float) -> PairDiff:
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


def _reference(ok: list[Candidate], native: str | None) -> str | None:
    """The native framework's nested AD, else the NumPy reference's collapsed mode, else the first result."""
    names = [c.name for c in ok]
    for want in ([f"{native}/nested"] if native else []) + ["numpy/collapsed", "torch/nested", "jax/nested"]:
        if want in names:
            return want
    return names[0] if names else None


# --- plain-text tables -----------------------------------------------------------------------------------------


def _preview(v: np.ndarray | None, k: int) -> str:
    if v is None:
        return "—"
    flat = np.asarray(v).ravel()
    s = ", ".join(f"{t:.10g}" for t in flat[:k])
    return f"[{s}{', …' if flat.size > k else ''}]" if np.ndim(v) else s


class _CallableModule(types.ModuleType):
    """``multijet.compare`` is both this module and the function: importing the submodule rebinds the package
    attribute to the module, so the module forwards calls to :func:`compare`."""

    def __call__(self, *args, **kwargs) -> CompareReport:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
