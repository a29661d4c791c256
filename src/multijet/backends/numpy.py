"""The NumPy reference executor: ``f`` captured by a recording array-API tracer, the shared engine run eagerly.

``f`` is written against the array API (``xp = array_namespace(x)``) or NumPy's own functions; inside
multijet ``x`` is a :class:`Tracer` (:mod:`.numpy_tracer`) whose namespace (:mod:`.numpy_namespace`) records
one :class:`~multijet.engine.program.Equation` per operation, with the kind record and lifted callables of
:mod:`.numpy_table`. ``f`` is called once per batch, or once per point when data-dependent Python control
flow (``if x[0] > 0``) needs concrete values. The recorded :class:`~multijet.engine.program.Program` is then
propagated by :func:`multijet.engine.evaluate` in the layout ``(N | 1, R | 1, *point_shape)`` (:class:`Layout`).

Non-smooth points, as the reference follows them (collapsed and standard agree there):

* ``maximum``/``minimum`` and the reductions ``max``/``min``: tied operands share the derivative equally
  (``split``, as torch and JAX);
* ``clip``: ``inclusive`` — on a bound ``x`` keeps its derivative (as torch's ``clamp``); a missing bound
  is no bound;
* ``where``: the branch the predicate picks at ``x_0`` (the predicate has no derivative);
* ``abs``: derivative ``sign(x)``, so 0 at 0 (as torch); ``relu``: 0 at 0;
* ``sort``: a stable sort (tied entries keep their order, also descending), the permutation applied to
  every coefficient; ``argmax``, ``sign``, comparisons, ``floor`` … have no derivative.

When ``mj.laplacian`` (any operator) is called inside a function that is itself being captured, ``x`` is a
tracer and the propagation runs on tracers: the jet program is recorded into the enclosing capture, so
``mj.laplacian(lambda x: mj.laplacian(f, x), X)`` is ``Δ(Δf)``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from .. import engine
from ..chunking import by_points
from ..engine.program import Var
from ..plan import Plan
from .numpy_namespace import EXTRA_RULES, NS
from .numpy_sparse import SparseOps
from .numpy_tracer import NAME, PerPoint, Tracer, capture, is_tracer, unsupported, xp_of

__all__ = ["NAME", "NESTS", "Tracer", "Layout", "run", "register_rule", "namespace"]

#: the jet program can be captured again (nesting), so composition routes run here
NESTS = True


def register_rule(name: str, rule: Callable) -> None:
    """Add ``xp.<name>`` to the tracer namespace; ``rule(xp, *args, **kwargs)`` composes supported ops."""
    EXTRA_RULES[name] = rule


def namespace() -> Any:
    """The tracer namespace (what ``array_namespace(x)`` returns inside ``f``)."""
    return NS


# --- the propagation layout -------------------------------------------------------------------------------------


class Layout(SparseOps):
    """Two leading axes: the batch (N or 1) and the directions (R or 1); arrays may be tracers (nesting)."""

    xp = np  # NumPy's functions dispatch to the tracer namespace on tracers (__array_ufunc__/__array_function__)

    def __init__(self, N: int, R: int):
        self.N, self.R = N, R

    def lift(self, value, var: Var):
        if is_tracer(value):  # a value of an enclosing capture
            return value.reshape((1, 1) + var.shape)
        return np.asarray(value, dtype=var.dtype).reshape((1, 1) + var.shape)

    def align(self, c, nd_from: int, nd_to: int):
        return c.reshape(tuple(c.shape[:2]) + (1,) * (nd_to - nd_from) + tuple(c.shape[2:]))

    def zeros(self, var: Var):
        return np.zeros((1, 1) + var.shape, var.dtype)

    def eye(self, var: Var):
        return np.eye(var.shape[0], dtype=var.dtype)[None]

    def unit_rows(self, var: Var, seed):
        return (np.asarray(seed.rows)[:, None] == np.arange(var.shape[0])).astype(var.dtype)[None]

    def take(self, c, seed):
        return c[:, np.asarray(seed.rows)]

    def fit(self, c, var: Var, per_direction: bool):
        if not hasattr(c, "shape"):
            c = np.asarray(c)
        if c.dtype != var.dtype:
            c = c.astype(var.dtype)
        if c.ndim - 2 < len(var.shape):
            c = self.align(c, c.ndim - 2, len(var.shape))
        shape = tuple(c.shape[:2]) + var.shape
        return c if tuple(c.shape) == shape else xp_of(c).broadcast_to(c, shape)

    def canonical(self, c, var: Var, per_direction: bool):
        shape = (self.N, self.R if per_direction else 1) + var.shape
        if c is None:
            return np.zeros(shape, var.dtype)
        return xp_of(c).broadcast_to(self.fit(c, var, per_direction), shape)


def _wsum(w: np.ndarray, ones: bool) -> Callable:
    """``a ↦ Σ_r w_r a[:, r]`` keeping a size-1 direction axis."""
    total = float(w.sum())

    def wsum(a):
        if a.shape[1] == 1:  # the same for every direction
            return a * total
        if not is_tracer(a):
            return np.expand_dims(np.tensordot(a, w, axes=([1], [0])), 1)
        if ones:
            return NS.sum(a, axis=1, keepdims=True)
        return NS.sum(a * w.reshape((1, -1) + (1,) * (a.ndim - 2)), axis=1, keepdims=True)

    return wsum


# --- run ------------------------------------------------------------------------------------------------------------


def _evaluate(program, plan: Plan, method: str, return_grad: bool, x0, dtype, N: int, dchunk: int | None = None,
              sparsity: bool | int | None = None):  # fmt: skip
    """The engine over the plan's groups; ``(value, result, gradient)`` in the layout. ``dchunk`` directions
    per pass (blocks one after the other; unit directions seeded as rows of the identity, never D×D);
    ``sparsity`` as in :func:`multijet.engine.group_specs`."""
    specs = engine.group_specs(plan, method, return_grad, dchunk, sparsity)

    def inputs(i, spec, b=0):
        blk = engine.block_inputs(plan, i, spec, b)
        V = None
        if blk.rows is not None:  # unit directions: rows of the identity, by index
            V = engine.Identity(blk.R, blk.rows)
        elif blk.directions is not None:
            V = blk.directions.astype(dtype)[None]
        w = blk.weights.astype(dtype)
        ctx = engine.Context(spec.order, spec.collapsed, blk.R, Layout(N, blk.R), _wsum(w, spec.ones), backend=NAME,
                             weights=None if spec.ones else w)  # fmt: skip
        return ctx, x0, V

    return engine.evaluate(program, specs, return_grad, inputs, engine.python_loop(_join))


def _join(blocks: list):
    """Gradient blocks joined along the direction axis."""
    return np.concatenate(blocks, axis=1)


def _read(program, res, N: int, D: int, return_grad: bool):
    """Value ``(N, 1, *s)``, result ``(N, 1, *s)`` and gradient ``(N, D, *s)`` (zeros where structurally
    zero), leading axes broadcast to full size."""
    (out,) = program.outvars
    shape, dtype = out.shape, out.dtype
    value, total, grad = res

    def full(a, lead):
        if a is None:
            return np.zeros(lead + shape, dtype)
        return a if tuple(a.shape) == lead + shape else xp_of(a).broadcast_to(a, lead + shape)

    if isinstance(total, list):  # the parts of return_std along the direction axis: (N, P, *s)
        parts = [full(t, (N, 1)) for t in total]
        total = xp_of(*parts).concat(parts, axis=1) if any(is_tracer(a) for a in parts) else np.concatenate(parts, 1)
    else:
        total = full(total, (N, 1))
    return full(value, (N, 1)), total, full(grad, (N, D)) if return_grad else None


def _run_batch(plan: Plan, f: Callable, X: np.ndarray, method: str, return_grad: bool, dchunk=None, sparsity=None):
    N, D = X.shape
    x0 = X[:, None, :]
    program = capture(f, x0, X.dtype)
    res = _evaluate(program, plan, method, return_grad, x0, X.dtype, N, dchunk, sparsity)
    value, total, grad = _read(program, res, N, D, return_grad)
    total = total[:, 0] if total.shape[1] == 1 and not isinstance(res[1], list) else total
    return np.array(value[:, 0]), np.array(total), None if grad is None else np.moveaxis(grad, 1, -1).copy()


def _run_traced(plan: Plan, f: Callable, x: Tracer, method: str, return_grad: bool, dchunk=None):
    """``x`` is a tracer of an enclosing capture: capture ``f`` at its primal values, then propagate on
    tracers (the propagation is recorded into the enclosing capture)."""
    if x.ndim != 1:
        raise unsupported("an operator applied to a traced batch (N, D) inside a captured function")
    (D,) = x.shape
    program = capture(f, x._x0, x.dtype)
    res = _evaluate(program, plan, method, return_grad, NS.reshape(x, (1, 1, D)), x.dtype, 1, dchunk, sparsity=False)
    value, total, grad = _read(program, res, 1, D, return_grad)
    shape = program.outvars[0].shape
    value = xp_of(value).reshape(value, shape)
    total = xp_of(total).reshape(total, ((len(res[1]),) if isinstance(res[1], list) else ()) + shape)
    if grad is not None:
        grad = xp_of(grad).moveaxis(xp_of(grad).reshape(grad, (D,) + shape), 0, -1)
    return value, total, grad


def run(
    plan: Plan,
    f: Callable,
    x,
    *,
    method: str = "collapsed",
    return_grad: bool = False,
    chunk_size: int | None = None,
    direction_chunk_size: int | None = None,
    sparsity: bool | int | None = None,
):
    """Evaluate ``Σ_groups Σ_r w_r f_K(v_r)`` at ``x`` of shape (D,) or (N, D). Returns ``(value, result, grad)``.

    ``chunk_size`` points and ``direction_chunk_size`` directions per pass (None: all at once); ``sparsity``:
    direction sparsity where the cost model finds it pays (None) or never (False)."""
    if method == "nested":
        raise ValueError(
            "method='nested' needs a framework's automatic differentiation; the NumPy backend has none. "
            "Use method='collapsed' or 'standard', or backend='torch' / 'jax'."
        )
    if is_tracer(x):
        return _run_traced(plan, f, x, method, return_grad, direction_chunk_size)
    X = np.asarray(x)
    batched = X.ndim == 2
    if not batched:
        X = X[None]
    fn = partial(_run_points, plan, f, method=method, return_grad=return_grad, dchunk=direction_chunk_size,
                 sparsity=sparsity)  # fmt: skip
    value, total, grad = by_points(fn, X, chunk_size, np.concatenate)
    if not batched:
        value, total = value[0], total[0]
        grad = grad[0] if grad is not None else None
    return value, total, grad


def _run_points(plan: Plan, f: Callable, X: np.ndarray, *, method: str, return_grad: bool, dchunk, sparsity=None):
    """One chunk of points: as a batch, or point by point where ``f`` branches on values."""
    try:
        return _run_batch(plan, f, X, method, return_grad, dchunk, sparsity)
    except PerPoint:
        return by_points(lambda Xi: _run_batch(plan, f, Xi, method, return_grad, dchunk, sparsity), X, 1,
                         np.concatenate)  # fmt: skip
