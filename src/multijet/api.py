"""The public functions: validate the call, plan the operator, hand the plan to an executor."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .backends import available_backends, get_backend, infer_backend
from .backends.interop import interop
from .chunking import check_chunks
from .errorbars import batch_means, group_plans, join_plans
from .errors import BackendError, MultijetError
from .plan import DISTRIBUTIONS, METHODS, Plan, make_plan
from .routes import compile_plan, run_plan
from .spec import Bilaplacian, Laplacian, Operator, WeightedLaplacian

__all__ = [
    "laplacian",
    "weighted_laplacian",
    "bilaplacian",
    "apply",
    "compile",
    "plan",
    "available_backends",
    "Compiled",
    "register_auto_backend",
]

#: ``backend="auto"`` resolution, ``(op, f, x, *, method, samples, distribution) -> backend name``. This module
#: sits below :mod:`multijet.autotune` (which uses ``plan`` and ``compile``) and never imports it: the package
#: registers a resolver that loads autotune on first use (see ``multijet/__init__.py``).
_auto_backend: Callable[..., str] | None = None


def register_auto_backend(resolver: Callable[..., str] | None) -> Callable[..., str] | None:
    """Install the function that ``backend="auto"`` calls to choose a backend; returns the previous one.

    ``resolver(op, f, x, *, method, samples, distribution)`` returns a backend name. ``import multijet``
    installs one that runs :func:`multijet.autotune.auto_backend`; None uninstalls it.
    """
    global _auto_backend
    previous, _auto_backend = _auto_backend, resolver
    return previous


def laplacian(f: Callable, x, **kwargs):
    """``Δf(x) = Σ_i ∂_i² f(x)`` at ``x`` of shape (D,) or (N, D). See :func:`apply` for the keywords."""
    return apply(Laplacian(), f, x, **kwargs)


def weighted_laplacian(f: Callable, x, coefficients=None, *, factor=None, **kwargs):
    """``tr(C ∇²f)`` for symmetric ``C`` (``coefficients``), or ``C = σσᵀ`` given ``factor=σ``."""
    return apply(WeightedLaplacian(coefficients, factor=factor), f, x, **kwargs)


def bilaplacian(f: Callable, x, **kwargs):
    """``Δ²f = Σ_{i,j} ∂_i²∂_j² f``. Randomised estimates use Gaussian directions (weight 1/(3S))."""
    return apply(Bilaplacian(), f, x, **kwargs)


def plan(
    op: Operator,
    dim: int,
    *,
    samples: int | None = None,
    distribution: str | None = None,
    seed: int | None = None,
    route: str | None = None,
) -> Plan:
    """The printable plan (route, jet groups, directions, weights, cost of each route) for ``op`` at dimension
    ``dim``."""
    return make_plan(op, dim, samples=samples, distribution=_distribution(distribution), seed=seed, route=route)


def _eager_under_torch_compile(fn: Callable) -> Callable:
    """``fn`` run eagerly when ``torch.compile`` traces the caller (a graph break): planning and capturing need
    real tensors. A ``mj.compile``d operator is the part to compile: ``torch.compile`` of a step calling it
    traces the emitted program (no break)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        torch = sys.modules.get("torch")
        compiler = getattr(torch, "compiler", None)
        if compiler is not None and compiler.is_compiling():
            return compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


@_eager_under_torch_compile
def apply(
    op: Operator,
    f: Callable,
    x,
    *,
    backend: str | None = None,
    method: str = "collapsed",
    samples: int | None = None,
    distribution: str | None = None,
    seed=None,
    return_grad: bool = False,
    route: str | None = None,
    chunk_size: int | None = None,
    direction_chunk_size: int | None = None,
    sparsity: bool | int | None = None,
    mesh=None,
    batch_axis: str | tuple[str, ...] | None = None,
    return_std: bool = False,
):
    """Evaluate the operator ``op`` on ``f`` at ``x``.

    ``f`` maps one point of shape (D,) to an array; ``x`` is (D,) or a batch (N, D) with per-point
    semantics, and the result has f's output shape (``N`` in front for a batch). ``method`` is
    ``"collapsed"`` (default), ``"standard"`` or ``"nested"`` (the framework's own AD). ``samples=S`` gives
    the randomised estimate over S ``distribution`` directions ("rademacher" or "gaussian", Gaussian by
    default above order 2), reproducible from ``seed``. ``return_grad=True`` returns ``(value, gradient,
    result)``. ``route`` forces ``"directions"`` or ``"composition"`` (``P(Q f)``, where the operator is a
    composition such as ``Laplacian() @ Laplacian()`` or the bi-Laplacian); None takes the cheaper.
    ``chunk_size`` bounds the points and ``direction_chunk_size`` the directions propagated at once (peak
    memory follows the chunk; the result is the same, the collapsed sum being additive over directions).
    ``sparsity=False`` turns off direction sparsity, which by default carries only the directions each value
    can depend on (per particle: unit directions grouped in blocks) wherever the cost model finds it pays;
    ``sparsity=k`` (an int) also lets one element depend on at most ``k`` particles before it counts as dense.
    JAX: a batch sharded over devices (placed with a ``NamedSharding``, or named by ``batch_axis`` of ``mesh``)
    stays sharded, result included; on torch, wrap the module in ``DistributedDataParallel``.
    ``return_std=True`` also returns the estimate's standard error (batch means over ``G`` groups of samples,
    :mod:`multijet.errorbars`): ``(result, std)``, or ``(value, gradient, result, std)`` with ``return_grad``;
    an exact result's is zero.
    """
    chunks = check_chunks(chunk_size, direction_chunk_size, sparsity)
    name, module = _backend(backend, x, op, f, method, samples, distribution)
    chunks |= _sharding(name, mesh, batch_axis)
    _check_method(method)
    X = _check_x(x)
    plans = _plans(op, X.shape[-1], samples, distribution, _seed(module, seed), _route(route, module, method),
                   return_std)  # fmt: skip
    xin, back = _to_backend(x, name)
    runs = _runs(plans, method)
    with one_point_reading(X.shape):
        outs = [run_plan(module, p, f, xin, method=method, return_grad=return_grad and i == 0, **chunks)
                for i, p in enumerate(runs)]  # fmt: skip
    return _finish(outs, plans, back, return_grad, return_std, X.ndim == 2)


def _runs(plans: list[Plan], method: str) -> list[Plan]:
    """The plans to run: the sample groups of ``return_std`` joined into one pass where they can be."""
    if len(plans) > 1 and method != "nested":
        joined = join_plans(plans)
        if joined is not None:
            return [joined]
    return plans


def _plans(op, dim, samples, distribution, seed, route, return_std) -> list[Plan]:
    """One plan; or, for ``return_std`` of a randomised estimate, the G plans of its sample groups."""
    distribution = _distribution(distribution)
    if return_std and samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, int | np.integer):
            raise TypeError(f"samples must be a positive integer or None, got {samples!r}")
        return group_plans(op, dim, int(samples), distribution, seed, route)
    return [make_plan(op, dim, samples=samples, distribution=distribution, seed=seed, route=route)]


def _finish(outs: list, plans: list[Plan], back, return_grad: bool, return_std: bool, batched: bool):
    """``(value, result, grad)`` of each run plan → the public return: the groups' mean and standard error (a
    joined run's result holds the groups on the axis after the batch's)."""
    value, result, grad = outs[0]
    std = None
    if return_std:
        if len(plans) == 1:  # exact: no sampling error
            std = result * 0
        else:
            parts = [o[1] for o in outs]
            if len(outs) == 1:
                parts = [result[:, g] if batched else result[g] for g in range(len(plans))]
            result, std = batch_means(parts, [p.samples for p in plans])
    if back is not None:
        value, result, grad, std = (None if a is None else back(a) for a in (value, result, grad, std))
    out = (value, grad, result) if return_grad else (result,)
    out = out + (std,) if return_std else out
    return out if len(out) > 1 else out[0]


class Compiled:
    """``mj.compile``'s result: the plan and backend chosen once; call it on points like ``x_example``."""

    def __init__(
        self, op: Operator, f: Callable, backend: str, module, method: str, p: Plan | list[Plan], return_grad: bool,
        x_example, chunks: dict | None = None, return_std: bool = False,
    ):  # fmt: skip
        plans = list(p) if isinstance(p, list | tuple) else [p]
        self.op, self.f, self.backend, self.method, self.return_grad = op, f, backend, method, return_grad
        self.plan, self.plans, self.return_std = plans[0], plans, return_std
        self._module = module
        self._convert = infer_backend(x_example) != backend
        if self._convert:
            x_example = _to_backend(x_example, backend)[0]
        self.chunks = dict(chunks or {})
        runs = _runs(plans, method)
        if len(runs) == 1:  # exact, or the sample groups joined: the plan that runs (it prints every group)
            self.plan = runs[0]
        with one_point_reading(getattr(x_example, "shape", ())):
            self._fns = [compile_plan(module, q, f, x_example, method=method, return_grad=return_grad and i == 0,
                                      **self.chunks) for i, q in enumerate(runs)]  # fmt: skip
        self._fn = self._fns[0]

    def __call__(self, x):
        X = _check_x(x)
        if X.shape[-1] != self.plan.dim:
            raise ValueError(f"compiled for D={self.plan.dim}, got x of shape {tuple(X.shape)}")
        back = None
        if self._convert:
            x, back = _to_backend(x, self.backend)
        return _finish([fn(x) for fn in self._fns], self.plans, back, self.return_grad, self.return_std, X.ndim == 2)

    @property
    def code(self) -> str:
        """The generated program: the emitted fx module's Python (torch), the jaxpr (JAX)."""
        code = getattr(self._fn, "code", None)
        if code is None:
            raise AttributeError(
                f"the {self.backend!r} backend evaluates the plan eagerly and generates no code to show; "
                "print(compiled.plan) shows what it computes"
            )
        return code

    @property
    def schedule(self) -> str:
        """The engine's schedule per jet group: structural zeros, direction dependence, where Σ_r w_r forms."""
        text = getattr(self._fn, "schedule", None)
        if text is None:
            raise AttributeError(f"the {self.backend!r} backend keeps no schedule for method={self.method!r}")
        return text

    @property
    def graph_module(self):
        """The emitted ``torch.fx.GraphModule`` (torch backend; None elsewhere)."""
        return getattr(self._fn, "graph_module", None)

    def __repr__(self) -> str:
        return f"multijet.Compiled(backend={self.backend!r}, method={self.method!r})\n{self.plan}"


def compile(
    op: Operator,
    f: Callable,
    x_example,
    *,
    backend: str | None = None,
    method: str = "collapsed",
    samples: int | None = None,
    distribution: str | None = None,
    seed=None,
    return_grad: bool = False,
    route: str | None = None,
    chunk_size: int | None = None,
    direction_chunk_size: int | None = None,
    sparsity: bool | int | None = None,
    mesh=None,
    batch_axis: str | tuple[str, ...] | None = None,
    return_std: bool = False,
) -> Compiled:
    """Plan (and, where the backend can, trace) once; returns a callable ``x -> P f(x)`` for training loops.

    A randomised compiled operator keeps its directions fixed (drawn once from ``seed``). ``chunk_size`` and
    ``direction_chunk_size``, ``sparsity``, ``mesh``, ``batch_axis`` and ``return_std`` as in :func:`apply`.
    """
    chunks = check_chunks(chunk_size, direction_chunk_size, sparsity)
    name, module = _backend(backend, x_example, op, f, method, samples, distribution)
    chunks |= _sharding(name, mesh, batch_axis)
    _check_method(method)
    X = _check_x(x_example)
    plans = _plans(op, X.shape[-1], samples, distribution, _seed(module, seed), _route(route, module, method),
                   return_std)  # fmt: skip
    return Compiled(op, f, name, module, method, plans, return_grad, x_example, chunks, return_std)


def _to_backend(x, name: str):
    """Convert NumPy input for another backend (array-API programs run anywhere); results come back as NumPy.

    Returns ``(x for the backend, converter of results or None)``.
    """
    source = infer_backend(x)
    if source == name:
        return x, None
    if source != "numpy":
        raise BackendError(
            f"x is a {source} array but backend={name!r} was asked for; pass a NumPy array to move between "
            f"frameworks, or use backend={source!r}"
        )
    return interop(name).from_numpy(np.asarray(x))


# --- validation -----------------------------------------------------------------------------------------------


def _backend(
    backend: str | None, x, op, f=None, method: str = "collapsed", samples=None, distribution=None
) -> tuple[str, Any]:
    if not isinstance(op, Operator):
        raise TypeError(f"expected an operator spec such as mj.Laplacian(), got {type(op).__name__}")
    if backend is None:
        backend = infer_backend(x)
    elif backend == "auto":  # tuned for the method and estimator asked for, so the choice can run them
        if _auto_backend is None:
            raise BackendError(
                "backend='auto' needs a resolver and none is registered (multijet.api.register_auto_backend); "
                f"pass a backend name instead; installed: {available_backends()}"
            )
        _check_method(method)
        backend = _auto_backend(
            op, f, x, method=method, samples=samples, distribution=_distribution(distribution)
        )
    if not isinstance(backend, str):
        raise BackendError(f"backend must be a string, got {type(backend).__name__}; installed: {available_backends()}")
    return backend, get_backend(backend)


def _route(route: str | None, module, method: str) -> str | None:
    """The route the planner may choose from: composition needs a backend whose jet programs nest
    (``module.NESTS``); nested AD, the baseline, takes the direction set unless a route is forced."""
    if route is None and (method == "nested" or not getattr(module, "NESTS", False)):
        return "directions"
    if route == "composition" and not getattr(module, "NESTS", False):
        raise BackendError(
            f"route='composition' needs a backend whose jet programs can be captured again; "
            f"{getattr(module, 'NAME', module.__name__)!r} declares no NESTS = True"
        )
    return route


def _sharding(backend: str, mesh, batch_axis) -> dict:
    """``mesh``/``batch_axis`` for the JAX executor; a clear error elsewhere."""
    if mesh is None and batch_axis is None:
        return {}
    if backend != "jax":
        raise ValueError(
            f"mesh= and batch_axis= shard a JAX batch over devices; the {backend} backend does not take them "
            "(torch: wrap the module in torch.nn.parallel.DistributedDataParallel, see "
            "examples/poisson_pinn_ddp_torch.py)"
        )
    return {"mesh": mesh, "batch_axis": batch_axis}


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


_REWORDABLE = (TypeError, ValueError, RuntimeError, IndexError, NotImplementedError)


@contextlib.contextmanager
def one_point_reading(shape):
    """An error while evaluating ``f`` at an ``x`` of shape ``(D,)`` says how that shape was read: one point of
    dimension D (the contract), not D points in one dimension, a common slip."""
    try:
        yield
    except Exception as e:
        if len(shape) != 1 or shape[0] < 2:
            raise
        D = shape[0]
        hint = (f"note: x of shape ({D},) is read as one point of dimension D={D}; for {D} points in one "
                f"dimension pass shape ({D}, 1)")
        if type(e) in _REWORDABLE or isinstance(e, MultijetError):
            try:
                again = type(e)(f"{e}\n{hint}")
            except TypeError:  # a constructor of several arguments (UnsupportedPrimitiveError): keep it, add a note
                again = None
            if again is not None:
                raise again from e
        e.add_note(hint)
        raise


def _check_x(x):
    shape = getattr(x, "shape", None)
    if shape is None:
        x = np.asarray(x)
        shape = x.shape
    if len(shape) not in (1, 2) or shape[-1] < 1:
        raise ValueError(f"x must have shape (D,) or (N, D) with D >= 1, got shape {tuple(shape)}")
    if len(shape) == 2 and shape[0] == 0:
        raise ValueError(f"x is an empty batch of shape {tuple(shape)}; pass at least one point")
    dtype = str(getattr(x, "dtype", ""))
    if "float" not in dtype:
        raise TypeError(
            f"x must be a floating-point array (float64, or float32), got dtype {dtype or type(x).__name__}"
        )
    return x


def _distribution(distribution: str | None) -> str | None:
    """None lets the planner choose per level: Rademacher up to order 2, Gaussian above."""
    if distribution is None:
        return None
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; expected one of {DISTRIBUTIONS}")
    return distribution


def _seed(module, seed):
    if seed is None or isinstance(seed, int | np.integer):
        return None if seed is None else int(seed)
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**62))
    convert = getattr(module, "seed_from", None)
    if convert is not None:
        return convert(seed)
    raise TypeError(f"seed must be an int, a numpy Generator or None, got {type(seed).__name__}")
