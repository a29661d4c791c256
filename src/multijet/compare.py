"""``mj.compare``: run one operator on every installed backend and method and check that they agree.

An array-API program runs on NumPy, torch and JAX (float64 by default); a framework-native program (an
``nn.Module``, a function of JAX arrays, or any ``f`` given a torch / JAX ``x``) runs on its own framework,
whose ``collapsed`` and ``standard`` methods are checked against its ``nested`` AD. Every pair of results is
compared norm-wise, ``max|a − b| ≤ atol + rtol · max(max|a|, max|b|)``, with tolerances that grow with the
dtype's machine epsilon and the operator's order (:func:`tolerance`).
"""

from __future__ import annotations

import itertools
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import api
from ._compare_report import Candidate, CompareReport, PairDiff, pair_diff
from ._dispatch import backend_methods, native_backend, to_numpy
from .backends import available_backends, infer_backend
from .backends.interop import interop, native_program_backend
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
    pairs = [pair_diff(a, b, rtol, atol) for a, b in itertools.combinations(ok, 2)]
    _mark_ties(pairs, ok, op, f, x, samples, distribution, seed, dt, rtol, atol)
    return CompareReport(
        operator=repr(op), shape=tuple(int(s) for s in x.shape), dtype=dt, order=order, rtol=rtol, atol=atol,
        reference=_reference(ok, native), native=native, candidates=candidates, pairs=pairs, samples=samples,
        allow_errors=allow_errors,
    )  # fmt: skip


def _module_dtype(f) -> str | None:
    """The parameter dtype of a framework-native program (an ``nn.Module``: NumPy input is cast to it)."""
    owner_of_f = native_program_backend(f)
    return None if owner_of_f is None else interop(owner_of_f).program_dtype(f)


def _cast(x, dtype: str | None):
    source = infer_backend(x)
    if source == "numpy":
        return np.asarray(x, dtype=dtype or "float64")
    return x if dtype is None else interop(source).cast(x, dtype)


def _evaluate(op, f, x, backend, method, samples, distribution, seed, dtype) -> Candidate:
    c = Candidate(backend, method)
    try:
        with interop(backend).precision(dtype):
            t0 = time.perf_counter()
            r = api.apply(op, f, x, backend=backend, method=method, samples=samples, distribution=distribution,
                          seed=seed)  # fmt: skip
            c.value = to_numpy(r)
            c.seconds = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - each candidate's failure is part of the report
        c.error = f"{type(exc).__name__}: {exc}"
    return c


def _mark_ties(pairs, ok, op, f, x, samples, distribution, seed, dtype, rtol, atol) -> None:
    """A failing pair whose two candidates agree at two points just beside ``x`` (``x ± δ d``) differs only
    at an exact tie of a selection: mark it as such (it is a convention, not an error)."""
    failing = [p for p in pairs if not p.passed]
    if not failing:
        return
    names = {p.a for p in failing} | {p.b for p in failing}
    base = np.asarray(to_numpy(x), dtype=np.float64)
    d = np.random.default_rng(0).standard_normal(base.shape)
    step = 1e-4 * (1.0 + float(np.max(np.abs(base))))
    beside: dict[str, list[Candidate]] = {n: [] for n in names}
    for sign in (1.0, -1.0):
        xs = _like(base + sign * step * d, x)
        for c in ok:
            if c.name in names:
                beside[c.name].append(_evaluate(op, f, xs, c.backend, c.method, samples, distribution, seed, dtype))
    for p in failing:
        pa, pb = beside[p.a], beside[p.b]
        if all(a.ok and b.ok and pair_diff(a, b, rtol, atol).passed for a, b in zip(pa, pb, strict=True)):
            p.passed, p.tie = True, True
            p.note = " (exact tie: the frameworks' conventions differ at this kink; they agree beside it)"


def _like(arr: np.ndarray, x):
    """``arr`` as an array of ``x``'s framework and dtype."""
    return interop(infer_backend(x)).like(arr, x)


def _reference(ok: list[Candidate], native: str | None) -> str | None:
    """The native framework's nested AD, else the NumPy reference's collapsed mode, else the first result."""
    names = [c.name for c in ok]
    for want in ([f"{native}/nested"] if native else []) + ["numpy/collapsed", "torch/nested", "jax/nested"]:
        if want in names:
            return want
    return names[0] if names else None


class _CallableModule(types.ModuleType):
    """``multijet.compare`` is both this module and the function: importing the submodule rebinds the package
    attribute to the module, so the module forwards calls to :func:`compare`."""

    def __call__(self, *args, **kwargs) -> CompareReport:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
