"""The PyTorch executor: capture ``f`` with ``make_fx``, emit an fx ``GraphModule`` that computes the jets.

1. **Capture**: ``make_fx`` of ``f`` at one point (functionalised ATen ops, a few composite ops
   decomposed), so ``nn.Module``s, ``torch.nn.functional`` and array-API programs all arrive as the same
   ops. Parameters stay *live*: the captured graph reads the module's own ``Parameter`` objects.
2. **Emit**: one walk over the captured nodes builds a *new* graph. Nodes that do not depend on ``x`` are
   copied; every other node is handed to its rule (:mod:`multijet.backends.torch_rules`), which runs the
   shared Taylor arithmetic on coefficient handles that emit nodes — structural zeros are decided here,
   in Python, so the emitted graph holds only the needed ops. Layout of a coefficient:
   ``(N | 1, R | 1, *point_shape)``.
3. **Run**: the emitted module maps a batch ``X`` (N, D) to ``(value, Σ_groups Σ_r w_r f_K(v_r), grad)``.
   It is an ordinary differentiable torch program (parameter gradients for PINN training; under
   ``torch.no_grad()`` it keeps no activations), readable with ``.code``.

``method="nested"`` is the baseline and oracle: ``torch.func`` nested first-order AD (Hessian trace or
forward-over-reverse over the plan's directions; nested jvps for higher orders).
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .. import taylor
from ..errors import BackendError, MultijetError, UnsupportedPrimitiveError
from ..plan import JetGroup, Plan
from . import torch_rules as tr
from .torch_rules import Co, Cst, Emitter, Jet, register_rule

__all__ = ["NAME", "run", "compile", "seed_from", "register_rule", "build", "capture", "JetProgram"]

NAME = "torch"
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DECOMP = None


def seed_from(generator) -> int:
    """An integer seed for the planner drawn from a ``torch.Generator``."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"seed must be an int, a numpy or torch Generator, or None; got {type(generator).__name__}")
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


# --- capture ------------------------------------------------------------------------------------------------


def _user_line(node: fx.Node) -> str | None:
    """``file:line`` of the innermost frame of the user's code in a captured node's stack trace."""
    st = node.meta.get("stack_trace") or ""
    best = None
    lines = st.splitlines()
    for i, line in enumerate(lines):
        line = line.strip()
        if not line.startswith('File "'):
            continue
        path = line[6 : line.index('"', 6)]
        ap = os.path.abspath(path)
        if ap.startswith(_TORCH_DIR) or ap.startswith(_PKG_DIR) or "array_api_compat" in ap:
            continue
        lineno = line.split(", line ")[1].split(",")[0] if ", line " in line else "?"
        code = lines[i + 1].strip() if i + 1 < len(lines) else ""
        best = f"{path}:{lineno}" + (f" ({code})" if code else "")
    return best


class _user_frames_recorded:
    """Keep every frame of the user's code in fx stack traces (torch keeps only frames named ``forward``)."""

    def __enter__(self):
        from torch.fx.experimental import proxy_tensor

        self._cls = getattr(proxy_tensor, "PythonKeyTracer", None)
        self._orig = getattr(self._cls, "_filter_traceback_frames", None) if self._cls else None
        if self._orig is None:
            return self

        def keep_user(tracer, summary):
            import traceback

            return traceback.StackSummary.from_list(
                [
                    fr
                    for fr in summary
                    if not os.path.abspath(fr.filename).startswith((_TORCH_DIR, _PKG_DIR))
                    and "array_api_compat" not in fr.filename
                    and "contextlib" not in fr.filename
                ]
            )

        self._cls._filter_traceback_frames = keep_user
        return self

    def __exit__(self, *exc):
        if self._orig is not None:
            self._cls._filter_traceback_frames = self._orig
        return False


class _quiet_fake_tensor_log:
    """Silence torch's fake-tensor logger while capturing: a failing user op is reported once, by multijet."""

    def __enter__(self):
        import logging

        self._log = logging.getLogger("torch._subclasses.fake_tensor")
        self._level = self._log.level
        self._log.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        self._log.setLevel(self._level)
        return False


def one_output(f: Callable) -> Callable:
    """``f`` returning one tensor: a tuple/list of equally shaped outputs is stacked (as on every backend)."""

    def point_fn(x):
        out = f(x)
        if isinstance(out, dict):
            raise BackendError("f returned a dict; return one tensor (or a tuple/list of equally shaped tensors)")
        if isinstance(out, tuple | list):
            parts = [torch.as_tensor(o, dtype=x.dtype, device=x.device) for o in out]
            if len({tuple(p.shape) for p in parts}) > 1:
                raise BackendError(
                    "f returned a tuple/list of tensors of shapes "
                    f"{[tuple(p.shape) for p in parts]}; multijet stacks such outputs, so they must share a shape"
                )
            out = torch.stack(parts)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out, dtype=x.dtype, device=x.device)
        return out

    return point_fn


def _raise_if_data_dependent(e: Exception) -> None:
    name = type(e).__name__
    if "DataDependent" in name or "data-dependent" in str(e):
        raise BackendError(
            "the torch backend captures f once for all points, but f depends on the value of x through Python "
            f"control flow or a value-dependent shape such as x[x > 0] ({name}: {str(e).splitlines()[0][:200]}). "
            "Use torch.where / masks instead, or use backend='numpy' for per-point evaluation."
        ) from e


def _check_param_dtypes(f: Callable, dtype: torch.dtype) -> None:
    """An ``nn.Module`` whose floating parameters have another dtype than ``x``: say so before torch fails."""
    params = getattr(f, "parameters", None)
    if not callable(params):
        return
    others = sorted({str(p.dtype) for p in params() if p.is_floating_point() and p.dtype != dtype})
    if others:
        raise BackendError(
            f"x is {dtype} but the module's parameters are {', '.join(others)}; convert one to the other "
            f"(e.g. net.to({dtype}) or x.to({others[0]}))"
        )


def capture(f: Callable, x_point: torch.Tensor) -> fx.GraphModule:
    """``make_fx`` of ``f`` at one point: functionalised ATen ops with source lines recorded."""
    global _DECOMP
    from torch.fx.experimental.proxy_tensor import make_fx

    if _DECOMP is None:
        _DECOMP = tr.decompositions()

    _check_param_dtypes(f, x_point.dtype)
    point_fn = one_output(f)
    try:
        with _user_frames_recorded(), _quiet_fake_tensor_log():
            gm = make_fx(
                torch.func.functionalize(point_fn, remove="mutations"),
                decomposition_table=_DECOMP,
                tracing_mode="fake",
                _allow_non_fake_inputs=True,
                record_stack_traces=True,
            )(x_point)
    except Exception as e:  # data-dependent Python control flow cannot be captured once for all points
        _raise_if_data_dependent(e)
        if isinstance(e, MultijetError | NotImplementedError):
            raise
        raise BackendError(
            f"calling f on one point of shape {tuple(x_point.shape)} and dtype {x_point.dtype} failed while "
            f"capturing it ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}). Check that f takes one "
            "point of shape (D,) (it is vmapped over the batch) and returns a tensor."
        ) from e
    gm.graph.eliminate_dead_code()
    return gm


# --- emit ---------------------------------------------------------------------------------------------------


def _is_float_dtype(dt) -> bool:
    return dt is not None and getattr(dt, "is_floating_point", False)


def _meta(node: fx.Node):
    return node.meta.get("val")


#: Largest per-pass coefficient array in bytes: bigger batches are split into chunks of points. (CPU
#: allocations above glibc's mmap threshold, 32 MiB at most, are returned to the OS and page-faulted anew on
#: every call; keeping arrays below it makes a batch of 256 cost 4× a batch of 64, not 14×.)
CHUNK_BYTES = 16 * 2**20


class JetProgram:
    """The emitted program: ``X (N, D) -> (value, result, grad)``; ``.code`` shows the generated Python.

    ``chunk`` points go through the graph per pass (per-point semantics make chunks independent).
    """

    def __init__(self, gm: fx.GraphModule, captured: fx.GraphModule, build_seconds: float, chunk: int):
        self.graph_module = gm
        self.captured = captured
        self.build_seconds = build_seconds
        self.chunk = max(1, int(chunk))

    @property
    def code(self) -> str:
        return self.graph_module.code

    def __call__(self, X):
        n = X.shape[0]
        if n <= self.chunk:
            return self.graph_module(X)
        parts = [self.graph_module(X[i : i + self.chunk]) for i in range(0, n, self.chunk)]
        return tuple(None if p[0] is None else torch.cat(p) for p in zip(*parts, strict=True))


def build(plan: Plan, f: Callable, x_example: torch.Tensor, *, method: str, return_grad: bool) -> JetProgram:
    """Capture ``f`` at one point of ``x_example``'s dtype/device and emit the jet program for ``plan``."""
    import time

    t0 = time.perf_counter()
    xp = (x_example[0] if x_example.dim() == 2 else x_example).detach()
    gm = capture(f, xp)
    D = plan.dim
    dtype, device = xp.dtype, xp.device
    graph = fx.Graph()
    root = torch.nn.Module()
    X = graph.placeholder("x")
    N = graph.call_method("size", (X, 0))
    dev = graph.call_function(getattr, (X, "device"))
    x0 = graph.call_method("unsqueeze", (X, 1))
    const_env: dict[fx.Node, Any] = {}
    groups = list(plan.groups)
    grad_from = None
    if return_grad:
        grad_from = next(
            (
                i
                for i, g in enumerate(groups)
                if g.unit_axes == tuple(range(D))
                and np.array_equal(g.directions, np.eye(D))
                and (g.order >= 2 or (g.order == 1 and method == "standard"))
            ),
            None,
        )
        if grad_from is None:
            groups.append(JetGroup(1, np.eye(D), np.ones(D), "gradient", tuple(range(D))))
            grad_from = len(groups) - 1
    value = total = grad = None
    max_elems = 1
    for gi, group in enumerate(groups):
        is_grad_only = return_grad and gi == len(plan.groups) and gi == grad_from
        collapsed = method == "collapsed" and not is_grad_only
        try:
            out_jet, E = _emit_group(gm, graph, root, group, gi, collapsed, X, N, dev, x0, dtype, device, const_env)
        except Exception as e:
            _raise_if_data_dependent(e)
            raise
        max_elems = max(max_elems, E.max_point_elems)
        if value is None:
            value = _value(E, out_jet)
        if not is_grad_only:
            t = _total(E, out_jet, group)
            total = t if total is None else graph.call_function(operator.add, (total, t))
        if return_grad and gi == grad_from:
            grad = _grad(E, out_jet, D)
    graph.output((value, total, grad))
    graph.eliminate_dead_code()
    new = fx.GraphModule(root, graph, class_name="JetProgram")
    if any(n.target is tr.generic_call for n in graph.nodes):
        with torch.no_grad():  # the generic rule fails at run time: probe once so errors surface while building
            new(x_example[:1] if x_example.dim() == 2 else x_example[None])
    chunk = CHUNK_BYTES // (max_elems * xp.element_size())
    return JetProgram(new, gm, time.perf_counter() - t0, chunk)


def _emit_group(gm, graph, root, group: JetGroup, gi, collapsed, X, N, dev, x0node, dtype, device, const_env):
    K, R = group.order, group.size
    w = torch.as_tensor(group.weights, dtype=dtype, device=device)
    V = torch.as_tensor(group.directions, dtype=dtype, device=device)[None]
    root.register_buffer(f"w{gi}", w)
    root.register_buffer(f"V{gi}", V)
    wnode = graph.get_attr(f"w{gi}")
    unit = bool(np.all(group.weights == 1.0))
    equal = float(group.weights[0]) if np.all(group.weights == group.weights[0]) and group.weights[0] > 0 else None
    E = Emitter(graph, None, R, N, dev, wnode, unit, float(np.sum(group.weights)), equal)
    ctx = taylor.JetContext(K, collapsed, E.wsum)
    E.ctx = ctx
    env: dict[fx.Node, Any] = {}
    out = None
    D = group.directions.shape[1]
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            c0 = Co(E, x0node, True, 1, (D,))
            vnode = graph.get_attr(f"V{gi}")
            v = Co(E, vnode, False, R, (D,))
            if K == 1 and collapsed:
                jet = taylor.seed(c0, v, ctx)
            else:
                jet = [c0] + [None] * K
                if K >= 1:
                    jet[1] = v
            env[node] = Jet(jet, (D,), dtype)
        elif node.op == "get_attr":
            if node not in const_env:
                obj = getattr(gm, node.target)
                name = node.target
                if not hasattr(root, name):
                    if isinstance(obj, torch.nn.Parameter):
                        root.register_parameter(name, obj)
                    elif isinstance(obj, torch.Tensor):
                        root.register_buffer(name, obj)
                    else:
                        setattr(root, name, obj)
                m = _meta(node)
                const_env[node] = Cst(graph.get_attr(name), tuple(getattr(m, "shape", ())), getattr(m, "dtype", None))
            env[node] = const_env[node]
        elif node.op == "call_function":
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            leaves = pytree.tree_leaves((args, kwargs), is_leaf=lambda a: isinstance(a, Jet | Cst))
            if node.target is operator.getitem and isinstance(args[0], tuple | list):
                env[node] = args[0][args[1]]
                continue
            if not any(isinstance(a, Jet) for a in leaves):
                tr.refuse_random_op(node.target, _user_line(node))
                if node in const_env:
                    env[node] = const_env[node]
                    continue
                cargs = pytree.tree_map(
                    lambda a: a.node if isinstance(a, Cst) else a, args, is_leaf=lambda a: isinstance(a, Cst)
                )
                ckw = pytree.tree_map(
                    lambda a: a.node if isinstance(a, Cst) else a, kwargs, is_leaf=lambda a: isinstance(a, Cst)
                )
                new = graph.call_function(node.target, tuple(cargs), dict(ckw))
                m = _meta(node)
                const_env[node] = Cst(
                    new, tuple(m.shape) if isinstance(m, torch.Tensor) else None, getattr(m, "dtype", None)
                )
                env[node] = const_env[node]
                continue
            env[node] = _apply_rule(E, node, args, kwargs)
        elif node.op == "output":
            out = fx.node.map_arg(node.args[0], lambda n: env[n])
        else:
            raise UnsupportedPrimitiveError(str(node.target), NAME, _user_line(node))
    if isinstance(out, tuple | list):
        if len(out) != 1:
            raise BackendError(f"f must return one tensor, got a {type(out).__name__} of {len(out)} values")
        out = out[0]
    return out, E


def _apply_rule(E: Emitter, node: fx.Node, args, kwargs):
    where = _user_line(node)
    E.where = where
    rule = tr.lookup(node.target)
    if rule is not None:
        try:
            return _fix_dtypes(rule(E, *args, **kwargs), node)
        except tr._GenericNeeded:
            pass
        except UnsupportedPrimitiveError:
            raise
        except Exception as e:
            raise UnsupportedPrimitiveError(
                tr._op_name(node.target),
                NAME,
                where,
                hint=f"its Taylor rule failed while building ({type(e).__name__}: {e}); please report this.",
            ) from e
    return tr.generic_rule(E, node.target, args, kwargs, _meta(node), where)


def _fix_dtypes(res, node):
    m = _meta(node)
    if isinstance(res, Jet) and isinstance(m, torch.Tensor):
        res.dtype = m.dtype
    return res


def _full(E: Emitter, c: Co, shape, r_target: int | None = None):
    """Expand a coefficient to ``(N, r, *shape)``."""
    r = c.r if r_target is None else r_target
    return E.graph.call_method("expand", (c.node, [E.N, r, *shape]))


def _value(E: Emitter, out) -> fx.Node:
    g = E.graph
    if isinstance(out, Cst):
        return g.call_method("expand", (out.node, [E.N, *out.shape]))
    c0 = E.fit(out.c[0], out.shape)
    return g.call_function(torch.select, (_full(E, c0, out.shape), 1, 0))


def _total(E: Emitter, out, group: JetGroup) -> fx.Node:
    g = E.graph
    if isinstance(out, Cst):
        return g.call_function(torch.zeros, ([E.N, *out.shape],), {"dtype": out.dtype, "device": E.device})
    if group.order == 0:
        c = out.c[0] * float(np.sum(group.weights))
    else:
        c = taylor.top_sum(out.c, E.ctx)
    if c is None:
        return g.call_function(torch.zeros, ([E.N, *out.shape],), {"dtype": out.dtype, "device": E.device})
    c = E.fit(c, out.shape)
    return g.call_function(torch.select, (_full(E, c, out.shape), 1, 0))


def _grad(E: Emitter, out, D: int) -> fx.Node:
    g = E.graph
    if isinstance(out, Cst) or out.c[1] is None:
        shape = out.shape
        return g.call_function(torch.zeros, ([E.N, *shape, D],), {"dtype": out.dtype, "device": E.device})
    c1 = E.fit(out.c[1], out.shape)
    full = _full(E, c1, out.shape, D)
    return g.call_function(torch.movedim, (full, 1, -1))


# --- nested first-order AD (the baseline and oracle) -------------------------------------------------------


def _nested_total(f, X: torch.Tensor, group: JetGroup, value: torch.Tensor) -> torch.Tensor:
    from torch.func import hessian, jacrev, jvp, vmap

    K = group.order
    V = torch.as_tensor(group.directions, dtype=X.dtype, device=X.device)
    w = torch.as_tensor(group.weights, dtype=X.dtype, device=X.device)
    R, D = V.shape
    if K == 0:
        return value * w.sum()
    if K == 1:
        b = w @ V
        return vmap(lambda x: jvp(f, (x,), (b,))[1])(X)
    if K == 2:
        if R >= D:  # the Hessian itself (forward-over-reverse over e_1..e_D), contracted with Vᵀ diag(w) V
            C = (V.T * w) @ V
            Hs = vmap(hessian(f))(X)  # (N, *out, D, D)
            return (Hs * C).sum((-1, -2))

        def one(x):
            def hvp(v):
                return jvp(jacrev(f), (x,), (v,))[1] @ v  # (*out)

            return torch.einsum("r,r...->...", w, vmap(hvp)(V))

        return vmap(one)(X)

    def kth(x, v):
        def g(t):
            return f(x + t * v)

        fns = [g]
        for _ in range(K):
            prev = fns[-1]
            fns.append(lambda t, prev=prev: jvp(prev, (t,), (torch.ones_like(t),))[1])
        return fns[K](torch.zeros((), dtype=x.dtype, device=x.device))

    def one(x):
        return torch.einsum("r,r...->...", w, vmap(lambda v: kth(x, v))(V))

    return vmap(one)(X)


#: Ops whose forward-mode AD torch gets wrong when the primal is batched by ``vmap`` (seen with torch 2.13:
#: ``vmap(hessian(det))`` differs from the per-point Hessian for every point but the first).
_VMAP_UNSAFE = ("linalg", "_linalg", "det", "logdet", "slogdet", "inverse", "cholesky", "lu", "triangular_solve")


def _nested_program(f, x_point: torch.Tensor) -> tuple[Callable, bool]:
    """The function nested AD differentiates, and whether it may be vmapped over points.

    That is the captured ATen program (composite ops such as ``layer_norm`` decomposed, since torch's
    higher-order forward AD of some fused kernels is wrong), or ``f`` itself if it cannot be captured once
    (Python control flow on values).
    """
    _check_param_dtypes(f, x_point.dtype)
    try:
        gm = capture(f, x_point.detach())
    except BackendError:
        return one_output(f), True
    names = [getattr(n.target, "__name__", "") for n in gm.graph.nodes if n.op == "call_function"]
    return gm, not any(name.startswith(_VMAP_UNSAFE) for name in names)


def _run_nested(plan: Plan, f, X: torch.Tensor, return_grad: bool, program=None):
    """Nested ``torch.func`` AD of the captured program (or of ``f`` where an op of it lacks forward AD)."""
    g, batchable = program if program is not None else _nested_program(f, X[0])
    try:
        return _nested_batch(plan, g, X, return_grad, batchable)
    except NotImplementedError:  # e.g. aten.copy from an in-place assignment has no forward-AD formula
        if not isinstance(g, fx.GraphModule):
            raise
        return _nested_batch(plan, one_output(f), X, return_grad, batchable)


def _nested_batch(plan: Plan, g, X: torch.Tensor, return_grad: bool, batchable: bool):
    from torch.func import jacrev, vmap

    if not batchable:  # point by point: a batch of one is exact where vmap over points is not
        parts = [_nested_batch(plan, g, X[i : i + 1], return_grad, True) for i in range(X.shape[0])]
        return tuple(None if p[0] is None else torch.cat(p) for p in zip(*parts, strict=True))
    value = vmap(g)(X)
    total = None
    for group in plan.groups:
        t = _nested_total(g, X, group, value)
        total = t if total is None else total + t
    grad = vmap(jacrev(g))(X) if return_grad else None
    return value, total, grad


# --- public executor interface -----------------------------------------------------------------------------


def _as_batch(x) -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor):
        raise BackendError(f"the torch backend needs x as a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 1:
        return x[None], False
    return x, True


def _unbatch(res, batched):
    if batched:
        return res
    value, total, grad = res
    return value[0], total[0], None if grad is None else grad[0]


def _check(method: str):
    if method not in ("collapsed", "standard", "nested"):
        raise ValueError(f"unknown method {method!r}; expected 'collapsed', 'standard' or 'nested'")


def run(plan: Plan, f: Callable, x, *, method: str = "collapsed", return_grad: bool = False):
    """Evaluate ``Σ_groups Σ_r w_r f_K(v_r)`` at ``x`` (D,) or (N, D): ``(value, result, grad)``."""
    _check(method)
    X, batched = _as_batch(x)
    if method == "nested":
        return _unbatch(_run_nested(plan, f, X, return_grad), batched)
    prog = build(plan, f, X, method=method, return_grad=return_grad)
    return _unbatch(prog(X), batched)


class CompiledTorch:
    """``compile``'s callable: builds the jet program once per dtype/device and reuses it."""

    def __init__(self, plan: Plan, f: Callable, x_example, method: str, return_grad: bool):
        _check(method)
        self.plan, self.f, self.method, self.return_grad = plan, f, method, return_grad
        self._programs: dict[Any, JetProgram] = {}
        self._nested: dict[Any, tuple[Callable, bool]] = {}
        X, _ = _as_batch(x_example)
        if method == "nested":
            self.nested_program(X)
        else:
            self.program(X)

    def nested_program(self, X: torch.Tensor) -> tuple[Callable, bool]:
        key = (X.dtype, X.device)
        if key not in self._nested:
            self._nested[key] = _nested_program(self.f, X[0])
        return self._nested[key]

    def program(self, X: torch.Tensor) -> JetProgram:
        key = (X.dtype, X.device)
        prog = self._programs.get(key)
        if prog is None:
            prog = build(self.plan, self.f, X, method=self.method, return_grad=self.return_grad)
            self._programs[key] = prog
        return prog

    @property
    def code(self) -> str:
        if self.method == "nested":
            return "# method='nested' runs torch.func transforms of f directly; there is no emitted program."
        return next(iter(self._programs.values())).code

    @property
    def graph_module(self) -> fx.GraphModule | None:
        return next(iter(self._programs.values())).graph_module if self._programs else None

    def __call__(self, x):
        X, batched = _as_batch(x)
        if self.method == "nested":
            return _unbatch(_run_nested(self.plan, self.f, X, self.return_grad, self.nested_program(X)), batched)
        return _unbatch(self.program(X)(X), batched)


def compile(plan: Plan, f: Callable, x_example, *, method: str = "collapsed", return_grad: bool = False):
    """Capture, plan and emit once; the callable reads parameters live (training loops do not rebuild)."""
    return CompiledTorch(plan, f, x_example, method, return_grad)
