"""A toy fourth backend, written as docs/ARCHITECTURE.md's recipe says: capture → Program, a primitive table,
a Layout, and the shared engine's ``evaluate``. Its arrays are NumPy's; its "framework" is a tiny tracer
that knows ``+``, ``-``, ``*``, ``@`` (vector by matrix), ``sin``, ``tanh`` and ``sum`` — enough for MLPs.

Layout: one leading (direction) axis, one point at a time (like the JAX backend without ``vmap``).
"""

from __future__ import annotations

import numpy as np

from multijet import engine
from multijet.engine import kinds
from multijet.engine.program import Equation, Program, Var

NAME = "toy"


# --- capture: a recording tracer ---------------------------------------------------------------------------


class Tracer:
    def __init__(self, rec, var, value):
        self.rec, self.var, self.value = rec, var, value

    shape = property(lambda self: self.var.shape)

    def __add__(self, o):
        return self.rec.emit("add", [self, o], kinds.Sum((1.0, 1.0), _lift(np.add)))

    __radd__ = __add__

    def __sub__(self, o):
        return self.rec.emit("sub", [self, o], kinds.Sum((1.0, -1.0), _lift(np.subtract)))

    def __mul__(self, o):
        return self.rec.emit("mul", [self, o], kinds.Bilinear(_lift(np.multiply), broadcasting=True))

    __rmul__ = __mul__

    def __matmul__(self, o):
        return self.rec.emit("vecmat", [self, o], kinds.Bilinear(_lift(_vecmat)))


def _vecmat(p, q):
    return np.einsum("...d,...dh->...h", p, q)


def _lift(fn):
    """Lifted: leading axes broadcast by NumPy itself."""
    return lambda *args: [fn(*args)]


def _sum(c):
    return c.reshape(c.shape[:1] + (-1,)).sum(axis=1)


def sin(x):
    return x.rec.emit("sin", [x], kinds.Elementwise(_lift(np.sin), "sin"))


def tanh(x):
    return x.rec.emit("tanh", [x], kinds.Elementwise(_lift(np.tanh), "tanh"))


def sum(x):  # noqa: A001 - the toy namespace's sum
    return x.rec.emit("sum", [x], kinds.Linear(_lift(_sum)))


class Recorder:
    def __init__(self):
        self.eqns, self.consts = [], {}

    def var_of(self, a):
        if isinstance(a, Tracer):
            return a.var, a.value
        arr = np.asarray(a, dtype=np.float64)
        v = Var(arr.shape, arr.dtype, True)
        self.consts[v] = arr
        return v, arr[None]

    def emit(self, prim, args, impl):
        ins, vals = zip(*(self.var_of(a) for a in args), strict=True)
        out = impl.fn(*vals)[0]  # the primal, computed by the very callable the propagation uses
        var = Var(out.shape[1:], out.dtype, True)
        self.eqns.append(Equation(prim, list(ins), [var], impl))
        return Tracer(self, var, out)


def capture(f, x0: np.ndarray) -> Program:
    rec = Recorder()
    xv = Var(x0.shape, x0.dtype, True)
    out = f(Tracer(rec, xv, x0[None]))
    out_var, _ = rec.var_of(out)
    return Program([xv], [out_var], rec.eqns, rec.consts)


# --- layout and run -------------------------------------------------------------------------------------------


class Layout:
    xp = np

    def __init__(self, R):
        self.R = R

    def lift(self, value, var):
        return np.asarray(value)[None]

    def align(self, c, nd_from, nd_to):
        return c.reshape(c.shape[:1] + (1,) * (nd_to - nd_from) + c.shape[1:])

    def zeros(self, var):
        return np.zeros((1,) + var.shape, var.dtype)

    def eye(self, var):
        return np.eye(var.shape[0], dtype=var.dtype)

    def fit(self, c, var, per_direction):
        return np.broadcast_to(c, c.shape[:1] + var.shape).astype(var.dtype, copy=False)

    def canonical(self, c, var, per_direction):
        shape = ((self.R,) if per_direction else (1,)) + var.shape
        return np.zeros(shape, var.dtype) if c is None else np.broadcast_to(c, shape)


def run(plan, f, x, *, method="collapsed", return_grad=False):
    if method == "nested":
        raise ValueError("the toy backend has no AD of its own: use method='collapsed' or 'standard'")
    X = np.atleast_2d(np.asarray(x, dtype=np.float64))
    specs = engine.group_specs(plan, method, return_grad)
    results = []
    for x0 in X:
        program = capture(f, x0)

        def inputs(i, spec, x0=x0):
            g = plan.groups[i] if i < len(plan.groups) else None
            w = engine.group_weights(plan, i, spec)  # served: the read-off a; identity seeds: zero-filled
            ctx = engine.Context(spec.order, spec.collapsed, spec.R, Layout(spec.R),
                                 lambda a, w=w: np.tensordot(w, a, axes=1)[None], backend=NAME)  # fmt: skip
            return ctx, x0[None], None if g is None or spec.identity or spec.served else g.directions

        value, total, grad = engine.evaluate(program, specs, return_grad, inputs)
        shape = program.outvars[0].shape
        total = np.zeros(shape) if total is None else np.broadcast_to(total[0], shape)
        value = np.broadcast_to(value[0], shape)
        grad = np.zeros((x0.size,) + shape) if grad is None else np.broadcast_to(grad, (x0.size,) + shape)
        results.append((value, total, np.moveaxis(grad, 0, -1)))
    value, total, grad = (np.stack(r) for r in zip(*results, strict=True))
    if np.ndim(x) == 1:
        value, total, grad = value[0], total[0], grad[0]
    return value, total, grad if return_grad else None
