"""The torch capture: ``make_fx`` of ``f`` at one point, then the fx graph → :class:`~multijet.engine.Program`.

``make_fx`` records functionalised ATen ops (a few composite ops decomposed, :func:`.torch_table.decompositions`),
so ``nn.Module``s, ``torch.nn.functional`` and array-API programs all arrive as the same ops. Parameters stay
*live*: the captured graph reads the module's own ``Parameter`` objects, and so does the emitted one.

Nodes that do not depend on ``x`` (parameters, buffers, constant subgraphs such as ``Wᵀ``) are copied into the
emitted graph once, in point layout, and become the program's constants (:class:`~.torch_emit.Cst`); every
other node becomes one equation (or, for a composite op, several) whose kind record comes from the table.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import threading
import traceback
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .. import engine
from ..engine.outputs import stack_outputs
from ..engine.program import Equation, Program, Var
from ..engine.source import user_line_from_stack
from ..errors import BackendError, MultijetError, UnsupportedPrimitiveError
from .torch_emit import Cst, Emitter
from .torch_generic import make_generic
from .torch_node import COMPOSED, In, NodeInfo
from .torch_table import decompositions, key_of, lookup, node_name
from .torch_table_linear import vecmat_rule

__all__ = [
    "capture", "capturing", "enclosed", "outside_trace", "to_program", "one_output", "raise_if_data_dependent",
    "check_param_dtypes", "NAME",
]  # fmt: skip

NAME = "torch"
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_SKIP = (_TORCH_DIR,)
_DECOMP = None
_RANDOM_OPS = {"rand_like", "randn_like", "bernoulli", "dropout", "native_dropout", "randint_like", "multinomial",
               "normal", "rand", "randn", "randint", "randperm", "uniform", "exponential"}  # fmt: skip


def _user_line(node: fx.Node) -> str | None:
    return user_line_from_stack(node.meta.get("stack_trace"), _SKIP + _array_api_dirs())


def _array_api_dirs() -> tuple:
    mod = __import__("sys").modules.get("array_api_compat")
    return (os.path.dirname(os.path.abspath(mod.__file__)),) if mod is not None else ()


class _user_frames_recorded:
    """Keep every frame of the user's code in fx stack traces (torch keeps only frames named ``forward``)."""

    def __enter__(self):
        from torch.fx.experimental import proxy_tensor

        self._cls = getattr(proxy_tensor, "PythonKeyTracer", None)
        self._orig = getattr(self._cls, "_filter_traceback_frames", None) if self._cls else None
        if self._orig is not None:
            pkg = engine.source.PACKAGE_DIR

            def keep_user(tracer, summary):
                return traceback.StackSummary.from_list(
                    [fr for fr in summary if not os.path.abspath(fr.filename).startswith((_TORCH_DIR, pkg))
                     and "array_api_compat" not in fr.filename and "contextlib" not in fr.filename]
                )  # fmt: skip

            self._cls._filter_traceback_frames = keep_user
        self._log = logging.getLogger("torch._subclasses.fake_tensor")  # a failing op is reported once, by us
        self._level = self._log.level
        self._log.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        if self._orig is not None:
            self._cls._filter_traceback_frames = self._orig
        self._log.setLevel(self._level)
        return False


def one_output(f: Callable) -> Callable:
    """``f`` returning one tensor: a tuple/list of equally shaped outputs is stacked (as on every backend)."""

    def point_fn(x):
        try:
            out = stack_outputs(f, lambda o: torch.as_tensor(o, dtype=x.dtype, device=x.device), torch.stack)(x)
        except TypeError as e:
            if "multijet stacks" in str(e) or "dict" in str(e):
                raise BackendError(str(e)) from None
            raise
        return out if isinstance(out, torch.Tensor) else torch.as_tensor(out, dtype=x.dtype, device=x.device)

    return point_fn


def raise_if_data_dependent(e: Exception) -> None:
    name = type(e).__name__
    if "DataDependent" in name or "data-dependent" in str(e):
        raise BackendError(
            "the torch backend captures f once for all points, but f depends on the value of x through Python "
            f"control flow or a value-dependent shape such as x[x > 0] ({name}: {str(e).splitlines()[0][:200]}). "
            "Use torch.where / masks instead, or use backend='numpy' for per-point evaluation."
        ) from e


def check_param_dtypes(f: Callable, dtype: torch.dtype) -> None:
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


_STATE = threading.local()  # .stack: the purposes of multijet's make_fx captures tracing right now, innermost last


def _stack() -> list:
    if not hasattr(_STATE, "stack"):
        _STATE.stack = []
    return _STATE.stack


def capturing() -> str | None:
    """The purpose of the innermost of multijet's captures tracing the code running now (it records its ops):
    ``"jet"`` (a program for the engine) or ``"nested"`` (a program for ``method="nested"``); None outside."""
    stack = _stack()
    return stack[-1] if stack else None


def enclosed(x: torch.Tensor) -> bool:
    """Whether ``x`` is traced or transformed by something enclosing this call: a ``make_fx`` capture (fake,
    functional or proxy tensors) or a ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``, ``jvp``…)."""
    from torch._subclasses.fake_tensor import is_fake
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    fn = torch._C._functorch
    try:
        wrapped = fn.is_functorch_wrapped_tensor(x) or fn.is_functionaltensor(x) or torch._is_functional_tensor(x)
        transforms = fn.peek_interpreter_stack() is not None
    except Exception:  # pragma: no cover - depends on torch internals
        wrapped = transforms = False
    return wrapped or transforms or is_fake(x) or get_proxy_mode() is not None


@contextlib.contextmanager
def outside_trace():
    """Leave every enclosing trace and transform (functorch interpreters, proxy and fake modes) for a while."""
    from torch._functorch.pyfunctorch import temporarily_clear_interpreter_stack
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    saved, _STATE.stack = _stack(), []
    try:
        with temporarily_clear_interpreter_stack(), disable_proxy_modes_tracing(), unset_fake_temporarily():
            yield
    finally:
        _STATE.stack = saved


def capture(f: Callable, x_point: torch.Tensor, purpose: str = "jet") -> fx.GraphModule:
    """``make_fx`` of ``f`` at one point: functionalised ATen ops with source lines recorded.

    ``purpose`` (``"jet"`` or ``"nested"``: who will run the graph) is what :func:`capturing` says meanwhile.

    Only the point's shape, dtype and device matter. Inside an enclosing trace or ``torch.func`` transform
    the capture steps outside it and traces at a real point (``make_fx`` under a transform would record
    the transformed input as a constant, so the graph would not depend on its input); the graph is then
    *called* on the transformed input, and the enclosing transform sees its ops.
    """
    global _DECOMP
    from torch.fx.experimental.proxy_tensor import make_fx

    if enclosed(x_point):
        with outside_trace():
            point = torch.zeros(tuple(x_point.shape), dtype=x_point.dtype, device=x_point.device)
            return capture(f, point, purpose)
    if _DECOMP is None:
        _DECOMP = decompositions()
    check_param_dtypes(f, x_point.dtype)
    _stack().append(purpose)
    try:
        with _user_frames_recorded():
            gm = make_fx(
                torch.func.functionalize(one_output(f), remove="mutations"),
                decomposition_table=_DECOMP,
                tracing_mode="fake",
                _allow_non_fake_inputs=True,
                record_stack_traces=True,
            )(x_point)
    except Exception as e:  # data-dependent Python control flow cannot be captured once for all points
        raise_if_data_dependent(e)
        if isinstance(e, MultijetError | NotImplementedError):
            raise
        raise BackendError(
            f"calling f on one point of shape {tuple(x_point.shape)} and dtype {x_point.dtype} failed while "
            f"capturing it ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}). Check that f takes one "
            "point of shape (D,) (it is vmapped over the batch) and returns a tensor."
        ) from e
    finally:
        _stack().pop()
    gm.graph.eliminate_dead_code()
    return gm


def is_random_op(target) -> bool:
    """Whether ``target`` draws random numbers (dropout, ``randn_like``, …): no Taylor expansion exists."""
    return getattr(target, "__name__", str(target)).split(".")[0] in _RANDOM_OPS


def _refuse_random(target, where) -> None:
    if is_random_op(target):
        raise UnsupportedPrimitiveError(
            node_name(target),
            NAME,
            where,
            hint="random operations have no Taylor expansion (and would draw one sample for the whole batch); "
            "remove them, e.g. call net.eval() to turn dropout off.",
        )


_CHECK = torch.ops.aten._linalg_check_errors.default


def _meta(node):
    return node.meta.get("val")


def _is_tensor(m) -> bool:
    return isinstance(m, torch.Tensor)


def _vecmat(u: fx.Node):
    """``squeeze(mm(unsqueeze(x, 0), B), 0)`` (how ATen records ``x @ B`` for a vector): the mm and squeeze."""
    if u.target is not torch.ops.aten.unsqueeze.default or u.args[1] != 0 or len(u.users) != 1:
        return None
    (m,) = u.users
    if m.target is not torch.ops.aten.mm.default or m.args[0] is not u or len(m.users) != 1:
        return None
    (s,) = m.users
    squeezes = (torch.ops.aten.squeeze_.dim, torch.ops.aten.squeeze.dim, torch.ops.aten.squeeze.dims)
    if s.target not in squeezes or s.args[1] not in (0, [0], (0,)) or _meta(u.args[0]).dim() != 1:
        return None
    return m, s


class _Capture:
    """fx graph → Program; constants emitted into ``E``'s graph as they are met."""

    def __init__(self, gm: fx.GraphModule, E: Emitter, root: torch.nn.Module):
        self.gm, self.E, self.root = gm, E, root
        self.consts: dict[Var, Cst] = {}
        self.eqns: list[Equation] = []
        self._cvars: dict[int, Var] = {}
        self._where = None
        self._used: set[Var] = set()

    # --- the composite builders' interface --------------------------------------------------------------
    def var(self, shape, dtype) -> Var:
        return Var(tuple(shape), dtype, _inexact(dtype))

    def scalar(self, value, dtype) -> Var:
        node = self.E.call(torch.scalar_tensor, value, dtype=dtype, device=self.E.device)
        return self.const_var(Cst(node, (), dtype))

    def eqn(self, prim, impl, ins, outs) -> None:
        self.eqns.append(Equation(prim, list(ins), list(outs), impl, self._where))

    def used(self, var) -> bool:
        return var in self._used

    def const_var(self, cst: Cst) -> Var:
        v = self._cvars.get(id(cst))
        if v is None:
            v = Var(tuple(cst.shape), cst.dtype, _inexact(cst.dtype), name=f"c{len(self._cvars)}")
            self._cvars[id(cst)] = v
            self.consts[v] = cst
        return v

    # --- the walk ----------------------------------------------------------------------------------------
    def program(self) -> Program:
        env: dict = {}
        dep: set = set()
        fused: dict = {}
        invars, out = [], None
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                m = _meta(node)
                v = Var(tuple(m.shape), m.dtype, True, name="x")
                invars.append(v)
                env[node] = v
                dep.add(node)
            elif node.op == "get_attr":
                env[node] = self._attr(node)
            elif node.op == "call_function":
                if node in fused and fused[node] is None:
                    dep.add(node)
                    continue
                if any(a in dep for a in node.all_input_nodes) or node in fused:
                    dep.add(node)
                    vm = _vecmat(node)
                    if vm is not None:  # the unsqueeze, mm and squeeze become one equation x @ B (at the squeeze)
                        fused[vm[0]], fused[vm[1]] = None, node
                        continue
                    self._where = _user_line(node)
                    env[node] = self._equation(node, env, fused)
                else:
                    env[node] = self._const_node(node, env)
            elif node.op == "output":
                out = node.args[0]
                if isinstance(out, tuple | list):
                    if len(out) != 1:
                        raise BackendError(f"f must return one tensor, got a {type(out).__name__} of {len(out)} values")
                    out = out[0]
            else:
                raise UnsupportedPrimitiveError(str(node.target), NAME, _user_line(node))
        res = env[out]
        outvar = res if isinstance(res, Var) else self.const_var(res)
        return Program(invars, [outvar], self.eqns, self.consts)

    def _attr(self, node) -> Cst:
        obj = getattr(self.gm, node.target)
        name = node.target
        if not hasattr(self.root, name):
            if isinstance(obj, torch.nn.Parameter):
                self.root.register_parameter(name, obj)
            elif isinstance(obj, torch.Tensor):
                self.root.register_buffer(name, obj)
            else:
                setattr(self.root, name, obj)
        m = _meta(node)
        return Cst(self.E.graph.get_attr(name), tuple(getattr(m, "shape", ())), getattr(m, "dtype", None))

    def _const_node(self, node, env):
        """A node that does not depend on ``x``: copied into the emitted graph (point layout)."""
        _refuse_random(node.target, _user_line(node))
        if node.target is operator.getitem and isinstance(env[node.args[0]], list):
            return env[node.args[0]][node.args[1]]
        unwrap = lambda a: a.node if isinstance(a, Cst) else a  # noqa: E731
        args = pytree.tree_map(
            unwrap, fx.node.map_arg(node.args, lambda n: env[n]), is_leaf=lambda a: isinstance(a, Cst)
        )
        kwargs = pytree.tree_map(
            unwrap, fx.node.map_arg(node.kwargs, lambda n: env[n]), is_leaf=lambda a: isinstance(a, Cst)
        )
        new = self.E.graph.call_function(node.target, tuple(args), dict(kwargs))
        m = _meta(node)
        if isinstance(m, tuple | list):
            return [Cst(self.E.graph.call_function(operator.getitem, (new, i)), tuple(getattr(o, "shape", ())),
                        getattr(o, "dtype", None)) for i, o in enumerate(m)]  # fmt: skip
        return Cst(new, tuple(m.shape) if _is_tensor(m) else (), getattr(m, "dtype", None))

    def _equation(self, node, env, fused):
        target = node.target
        if target is operator.getitem:
            return env[node.args[0]][node.args[1]]
        if target is _CHECK:
            return None
        _refuse_random(target, self._where)
        if node in fused:  # the squeeze of a fused x @ B
            mm = node.args[0]
            x, B = env[mm.args[0].args[0]], env[mm.args[1]]
            ins = [x, B if isinstance(B, Var) else self.const_var(B)]
            m = _meta(node)
            outs = [Var(tuple(m.shape), m.dtype, _inexact(m.dtype))]
            self.eqn("mm", vecmat_rule(outs[0].shape), ins, outs)
            return outs[0]
        ins: list[Var] = []

        def leaf(a):
            if isinstance(a, fx.Node):
                v = env[a]
                cst = v if isinstance(v, Cst) else None
                if cst is not None:
                    v = self.const_var(cst)
                ins.append(v)
                return In(len(ins) - 1, v, cst)
            return a

        args = pytree.tree_map(leaf, node.args)
        kwargs = pytree.tree_map(leaf, dict(node.kwargs))
        m = _meta(node)
        multi = isinstance(m, tuple | list)
        metas = list(m) if multi else [m]
        if any(_is_tensor(o) and not all(isinstance(s, int) for s in o.shape) for o in metas):
            raise BackendError(
                "the torch backend captures f once for all points, but f has a value-dependent shape such as "
                f"x[x > 0] ({node_name(target)} at {self._where}). Use torch.where / masks instead, or use "
                "backend='numpy' for per-point evaluation."
            )
        outs_all = [Var(tuple(o.shape), o.dtype, _inexact(o.dtype)) if _is_tensor(o) else None for o in metas]
        outs = [v for v in outs_all if v is not None]
        for u in node.users:
            if u.target is operator.getitem and any(w.target is not _CHECK for w in u.users):
                self._used.add(outs_all[u.args[1]])
        name = node_name(target)
        info = NodeInfo(target, key_of(target), args, kwargs, ins, outs, self._where, self)
        builder = lookup(target)
        impl = None
        if builder is not None:
            try:
                impl = builder(info)
            except UnsupportedPrimitiveError:
                raise
            except Exception as e:
                raise UnsupportedPrimitiveError(
                    node_name(target), NAME, self._where,
                    hint=f"its Taylor rule failed while building ({type(e).__name__}: {e}); please report this.",
                ) from e  # fmt: skip
        if impl is not COMPOSED:
            if impl is None:
                impl = self._generic(info, name)
            self.eqn(name, impl, ins, outs)
        return outs_all if multi else outs_all[0]

    def _generic(self, info, name):
        if info.name.startswith("prims."):  # prims ops carry no derivative formula: jvp would give zeros silently
            raise UnsupportedPrimitiveError(
                info.name,
                NAME,
                self._where,
                hint="torch's prims operations have no derivative formula, so no generic rule can differentiate "
                "them; use the corresponding torch.* / aten operation, or register a rule with "
                f"multijet.backends.torch.register_rule(torch.ops.{info.name}, builder).",
            )
        if any(v.inexact for v in info.outs):
            hint = f"register a rule with multijet.backends.torch.register_rule(torch.ops.{name}, builder)"
            engine.config.generic_fallback(name, NAME, self._where, hint)
        return make_generic(info, name)


def _inexact(dtype) -> bool:
    return dtype is not None and (dtype.is_floating_point or dtype.is_complex)


def to_program(gm: fx.GraphModule, E: Emitter, root: torch.nn.Module) -> Program:
    """The captured graph as an engine program; its constants are emitted into ``E``'s graph."""
    return _Capture(gm, E, root).program()
