"""The captured fx graph → :class:`~multijet.engine.Program`: one equation per ATen node that depends on ``x``.

Nodes that do not depend on ``x`` (parameters, buffers, constant subgraphs such as ``Wᵀ``) are copied into the
emitted graph once, in point layout, and become the program's constants (:class:`~.torch_emit.Cst`); every
other node becomes one equation (or, for a composite op, several) whose kind record comes from the table.
``x @ B`` for a vector ``x`` (recorded as unsqueeze, mm, squeeze) becomes one equation.
"""

from __future__ import annotations

import operator
import os

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from .. import engine
from ..engine.program import Equation, Program, Var
from ..engine.source import user_line_from_stack
from ..errors import BackendError, UnsupportedPrimitiveError
from .torch_emit import Cst, Emitter
from .torch_generic import make_generic
from .torch_node import COMPOSED, In, NodeInfo
from .torch_table import key_of, lookup, node_name
from .torch_table_linear import vecmat_rule

__all__ = ["to_program", "is_random_op", "user_line", "TORCH_DIR", "NAME"]

NAME = "torch"
TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_RANDOM_OPS = {"rand_like", "randn_like", "bernoulli", "dropout", "native_dropout", "randint_like", "multinomial",
               "normal", "rand", "randn", "randint", "randperm", "uniform", "exponential"}  # fmt: skip


def user_line(node: fx.Node) -> str | None:
    """The user's source line that recorded ``node`` (frames of torch and array_api_compat skipped)."""
    return user_line_from_stack(node.meta.get("stack_trace"), (TORCH_DIR,) + _array_api_dirs())


def _array_api_dirs() -> tuple:
    mod = __import__("sys").modules.get("array_api_compat")
    return (os.path.dirname(os.path.abspath(mod.__file__)),) if mod is not None else ()


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
                    self._where = user_line(node)
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
                raise UnsupportedPrimitiveError(str(node.target), NAME, user_line(node))
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
        # an integer tensor the trace made a constant (indices written in f, not a module's buffer) is kept for
        # direction sparsity, which follows gathers by known indices
        literal = name.startswith("_tensor_constant") and isinstance(obj, torch.Tensor) and not obj.is_floating_point()
        return Cst(self.E.graph.get_attr(name), tuple(getattr(m, "shape", ())), getattr(m, "dtype", None),
                   obj.detach().clone() if literal and not obj.is_complex() else None)  # fmt: skip

    def _const_node(self, node, env):
        """A node that does not depend on ``x``: copied into the emitted graph (point layout)."""
        _refuse_random(node.target, user_line(node))
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
        if _is_tensor(m) and not m.is_floating_point() and not m.is_complex():
            return Cst(new, tuple(m.shape), m.dtype, _known_value(node, env))
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


def _known_value(node, env):
    """An integer constant computed from integer constants written in ``f`` (``lift_fresh_copy`` of indices):
    evaluated now for direction sparsity, or None when an input is not known."""
    known = True

    def value(a):
        nonlocal known
        if isinstance(a, Cst):
            if a.value is None:
                known = False
            return a.value
        return a

    def values(tree):
        return pytree.tree_map(value, fx.node.map_arg(tree, lambda n: env[n]), is_leaf=lambda a: isinstance(a, Cst))

    args, kwargs = values(node.args), values(node.kwargs)
    if not known:
        return None
    try:
        with torch.no_grad():
            out = node.target(*args, **kwargs)
    except Exception:  # noqa: BLE001 - an unknown value only keeps the pattern dense
        return None
    return out.detach().clone() if isinstance(out, torch.Tensor) else None
