"""Running a plan on a backend: its direction groups in one pass, each composition ``c · P(Q f)`` by nesting.

A composition runs the outer plan on the function ``x ↦ (Q f)(x)`` that the inner plan computes: every
backend's jet program is itself a program of native primitives, so the outer pass captures and propagates
it like any other (eagerly on NumPy, inside the jit trace on JAX, into the fx graph on torch).
Framework-free: it only calls the backend module's ``run`` and ``compile``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .plan import JetGroup, Plan

__all__ = ["run_plan", "compile_plan"]


def run_plan(
    module, plan: Plan, f: Callable, x, *, method: str, return_grad: bool, **chunks: int | None
) -> tuple[Any, Any, Any]:
    """``(value, P f, gradient)`` (value and gradient only when ``return_grad``).

    ``chunks``: ``chunk_size`` (points per pass) and ``direction_chunk_size`` (directions per pass), given to
    the backend only when set; a composition's inner level runs at one point, so it takes the direction chunk.
    """
    chunks = {k: v for k, v in chunks.items() if v is not None}
    if not plan.compositions:
        return module.run(plan, f, x, method=method, return_grad=return_grad, **chunks)
    value = result = grad = None
    if plan.groups or return_grad:
        value, result, grad = module.run(_base(plan), f, x, method=method, return_grad=return_grad, **chunks)
        if not plan.groups:
            result = None
    for comp in plan.compositions:
        inner = _inner(module, comp.inner, f, method, _inner_chunks(chunks))
        part = run_plan(module, comp.outer, inner, x, method=method, return_grad=False, **chunks)[1]
        result = _add(result, part, comp.coefficient)
    return value, result, grad


def compile_plan(
    module, plan: Plan, f: Callable, x_example, *, method: str, return_grad: bool, **chunks: int | None
) -> Callable:
    """A callable ``x -> (value, P f, gradient)``, built once (traced where the backend can)."""
    builder = getattr(module, "compile", None)
    chunks = {k: v for k, v in chunks.items() if v is not None}

    def build(p: Plan, fn: Callable, rg: bool) -> Callable:
        if builder is None:
            return lambda x: module.run(p, fn, x, method=method, return_grad=rg, **chunks)
        return builder(p, fn, x_example, method=method, return_grad=rg, **chunks)

    if not plan.compositions:
        return build(plan, f, return_grad)
    base = build(_base(plan), f, return_grad) if (plan.groups or return_grad) else None
    comps = [
        (c.coefficient, compile_plan(module, c.outer, _inner(module, c.inner, f, method, _inner_chunks(chunks)),
                                     x_example, method=method, return_grad=False, **chunks))
        for c in plan.compositions
    ]  # fmt: skip
    return _Composite(base, comps, bool(plan.groups))


class _Composite:
    """The compiled pieces of a plan with compositions, summed on call."""

    def __init__(self, base, comps, base_counts: bool):
        self.base, self.comps, self.base_counts = base, comps, base_counts

    def __call__(self, x):
        value = result = grad = None
        if self.base is not None:
            value, result, grad = self.base(x)
            if not self.base_counts:
                result = None
        for c, fn in self.comps:
            result = _add(result, fn(x)[1], c)
        return value, result, grad

    def _pieces(self):
        return ([self.base] if self.base is not None else []) + [fn for _, fn in self.comps]

    @property
    def code(self) -> str | None:
        texts = [getattr(p, "code", None) for p in self._pieces()]
        return None if any(t is None for t in texts) else "\n\n# --- next piece ---\n\n".join(texts)

    @property
    def schedule(self) -> str | None:
        texts = [getattr(p, "schedule", None) for p in self._pieces()]
        return None if any(t is None for t in texts) else "\n\n".join(texts)

    @property
    def graph_module(self):
        return getattr(self.comps[0][1], "graph_module", None)


def _inner(module, inner: Plan, f: Callable, method: str, chunks: dict | None = None) -> Callable:
    """``x ↦ (Q f)(x)`` at one point, as a function the outer pass captures."""
    chunks = chunks or {}

    def inner_fn(x):
        return run_plan(module, inner, f, x, method=method, return_grad=False, **chunks)[1]

    inner_fn.__name__ = f"inner_{getattr(f, '__name__', 'f')}"
    return inner_fn


def _inner_chunks(chunks: dict) -> dict:
    """The inner level runs at one point: only the direction chunk applies."""
    return {k: v for k, v in chunks.items() if k in ("direction_chunk_size", "sparsity")}


def _base(plan: Plan) -> Plan:
    """The plan's direction groups alone (a zero-weight value group when it has none: value and gradient)."""
    groups = plan.groups or (JetGroup(0, np.zeros((1, plan.dim)), np.array([0.0]), "value"),)
    return Plan(plan.operator, plan.dim, groups, plan.samples, plan.distribution, plan.seed, plan.notes)


def _add(total, part, c: float):
    part = part if c == 1.0 else part * c
    return part if total is None else total + part
