"""The torch capture: ``make_fx`` of ``f`` at one point, and where it stands relative to enclosing traces.

``make_fx`` records functionalised ATen ops (a few composite ops decomposed, :func:`.torch_table.decompositions`),
so ``nn.Module``s, ``torch.nn.functional`` and array-API programs all arrive as the same ops. Parameters stay
*live*: the captured graph reads the module's own ``Parameter`` objects, and so does the emitted one.
The graph becomes an engine program in :mod:`.torch_program` (:func:`to_program`, re-exported here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import traceback
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode

from .. import engine
from ..engine.outputs import stack_outputs
from ..errors import BackendError, MultijetError
from .torch_program import NAME, TORCH_DIR, to_program
from .torch_table import decompositions

__all__ = [
    "capture", "capturing", "enclosed", "outside_trace", "to_program", "one_output", "raise_if_data_dependent",
    "check_param_dtypes", "NAME",
]  # fmt: skip

_DECOMP = None


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
                    [fr for fr in summary if not os.path.abspath(fr.filename).startswith((TORCH_DIR, pkg))
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
    stand_ins = _StandIns()
    try:
        with _user_frames_recorded(), stand_ins:
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
    return stand_ins.restore(gm)


class _StandIns(TorchFunctionMode):
    """While capturing (outside any enclosing ``torch.func`` transform): a tensor of such a transform which ``f``
    closes over (``functional_call(net, params, (x,))`` under ``torch.func.grad`` over ``params``) cannot be
    touched with the transform's interpreter stack cleared, so the capture sees a plain stand-in holding its
    value; :meth:`restore` puts the transform's tensor back into the graph, whose ops the transform then sees
    when the program runs inside it.
    """

    def __init__(self):
        super().__init__()
        self.originals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(stand-in) → (stand-in, original)
        self._of: dict[int, torch.Tensor] = {}  # id(original) → stand-in

    def __torch_function__(self, func, types, args=(), kwargs=None):
        args, kwargs = pytree.tree_map(self._stand_in, (args, kwargs or {}))
        return func(*args, **kwargs)

    def _stand_in(self, a):
        if not isinstance(a, torch.Tensor) or not _transform_wrapped(a):
            return a
        s = self._of.get(id(a))
        if s is None:
            leaf = a
            while _transform_wrapped(leaf):
                leaf = torch._C._functorch.get_unwrapped(leaf)
            if _fake(leaf) or torch._is_functional_tensor(leaf):  # a transform inside f, on traced values
                return a
            with outside_trace():
                same = tuple(leaf.shape) == tuple(a.shape)  # vmap over the tensor: its leaf has a batch axis
                s = leaf.detach() if same else torch.zeros(tuple(a.shape), dtype=a.dtype, device=a.device)
            self._of[id(a)] = s
            self.originals[id(s)] = (s, a)
        return s

    def restore(self, gm: fx.GraphModule) -> fx.GraphModule:
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                hit = self.originals.get(id(getattr(gm, node.target, None)))
                if hit is not None:
                    setattr(gm, node.target, hit[1])
        return gm


def _fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def _transform_wrapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is wrapped by a ``torch.func`` transform (``grad``, ``jvp``, ``vmap``…), not functionalisation."""
    fn = torch._C._functorch
    return fn.is_functorch_wrapped_tensor(t) and not fn.is_functionaltensor(t)
