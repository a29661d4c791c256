"""The JAX executor: capture (jaxpr → Program), the primitive table (:mod:`.jax_table`), and the shared
engine run inside ``jax.jit``, one point at a time under ``jax.vmap``.

Everything that does not depend on the point (e.g. ``V Wᵀ`` of the first layer, or ``Wᵀ`` itself when the
directions are the unit vectors) stays unbatched under ``vmap``.
"""

from __future__ import annotations

import collections
import logging
import weakref
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.extend import source_info_util

from .. import engine
from ..engine import kinds
from ..engine.outputs import stack_outputs
from ..engine.program import Equation, Program, Var
from ..plan import Plan
from .jax_linalg import LINALG_CALLS  # noqa: F401  (registers the linear-algebra rules)
from .jax_nested import nested_point, unit_rows
from .jax_options import compiler_options
from .jax_sharding import from_type, resolve
from .jax_simplify import distribute_contractions
from .jax_sparse import SparseOps
from .jax_sums import lead_dot, lead_sum
from .jax_table import KINDS, RULES, bind_fn, map_lead, register_rule, vary_like

__all__ = ["NAME", "run", "compile", "seed_from", "register_rule", "RULES", "KINDS", "set_strict", "capture"]

NAME = "jax"
#: the jet program can be captured again (nesting), so composition routes run here
NESTS = True
_log = logging.getLogger(__name__)
set_strict = engine.set_strict


# --- capture: jaxpr → Program --------------------------------------------------------------------------------


def _where(eqn) -> str | None:
    try:
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - depends on JAX internals
        return None


def _inexact(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.inexact)


def _is_complex(aval) -> bool:
    return jnp.issubdtype(getattr(aval, "dtype", jnp.float32), jnp.complexfloating)


def _generic(eqn) -> kinds.Generic:
    hint = f"register a rule with multijet.backends.jax.register_rule({eqn.primitive.name!r}, builder, kind)"
    return kinds.Generic(point_fn=bind_fn(eqn), jvp=jax.jvp, map_lead=map_lead, hint=hint)


class _Capture:
    """Converts a (closed) jaxpr and the jaxprs nested in it to :class:`Program`."""

    def __init__(self):
        self._const_values: dict = {}  # jaxpr constvar → its concrete value (for builders that need one)

    def const(self, eqn, i: int):
        v = eqn.invars[i]
        if isinstance(v, jcore.Literal):
            return v.val
        return self._const_values.get(v)

    def sub(self, inner) -> Program:
        if isinstance(inner, jcore.ClosedJaxpr):
            return self.program(inner.jaxpr, inner.consts)
        return self.program(inner, [])

    def program(self, jaxpr, consts) -> Program:
        env: dict = {}
        program_consts: dict = {}
        saved = self._const_values
        self._const_values = dict(saved)

        def var(v) -> Var:
            if isinstance(v, jcore.Literal):
                ev = Var(tuple(v.aval.shape), v.aval.dtype, _inexact(v.aval), name="lit")
                program_consts[ev] = np.asarray(v.val, dtype=v.aval.dtype)  # concrete even inside a trace
                return ev
            if v not in env:
                env[v] = Var(tuple(v.aval.shape), v.aval.dtype, _inexact(v.aval))
            return env[v]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            program_consts[var(v)] = c
            self._const_values[v] = c
        invars = [var(v) for v in jaxpr.invars]
        eqns = []
        for eqn in jaxpr.eqns:
            ins = [var(v) for v in eqn.invars]
            outs = [
                var(v) if not isinstance(v, jcore.DropVar) else Var(tuple(v.aval.shape), v.aval.dtype, _inexact(v.aval))
                for v in eqn.outvars
            ]
            eqns.append(Equation(eqn.primitive.name, ins, outs, self._impl(eqn), _where(eqn)))
        outvars = [var(v) for v in jaxpr.outvars]
        self._const_values = saved
        return Program(invars, outvars, eqns, program_consts)

    def _impl(self, eqn):
        name = eqn.primitive.name
        builder = RULES.get(name)
        if builder is not None and KINDS.get(name) == "elementwise" and any(_is_complex(v.aval) for v in eqn.invars):
            builder = None  # the derivative tables are real (|z| is not holomorphic): nested jvp is exact for z
        impl = builder(eqn, self) if builder is not None else None
        if impl is not None:
            return impl
        if builder is None and any(_inexact(v.aval) for v in eqn.outvars):
            hint = f"register a rule with multijet.backends.jax.register_rule({name!r}, builder, kind)"
            engine.config.generic_fallback(name, NAME, _where(eqn), hint)
        return _generic(eqn)


def capture(f: Callable, x) -> tuple[jcore.ClosedJaxpr, Callable]:
    """``jax.make_jaxpr`` of ``f`` (outputs stacked) at one point of ``x``'s dimension and dtype, contractions
    distributed over concatenations and broadcasts (:mod:`.jax_simplify`)."""
    closed = jax.make_jaxpr(stack_outputs(f, jnp.asarray, jnp.stack))(jax.ShapeDtypeStruct((x.shape[-1],), x.dtype))
    if len(closed.jaxpr.outvars) != 1:
        raise TypeError(
            f"f must return one array, got {len(closed.jaxpr.outvars)} outputs; apply the operator to each output "
            "separately or stack them into one array"
        )
    return distribute_contractions(closed)


# --- layout ------------------------------------------------------------------------------------------------------


class Layout(SparseOps):
    """Per-direction coefficients ``(R, *shape)``; the primal and the collapsed top plain ``shape``."""

    xp = jnp

    def __init__(self, R: int):
        self.R = R

    def lift(self, value, var: Var):
        return jnp.asarray(value, dtype=var.dtype)

    def align(self, c, nd_from: int, nd_to: int):
        lead = c.shape[: c.ndim - nd_from]
        return jnp.reshape(c, lead + (1,) * (nd_to - nd_from) + c.shape[c.ndim - nd_from :])

    def zeros(self, var: Var):
        return jnp.zeros(var.shape, var.dtype)

    def eye(self, var: Var):
        return jnp.eye(var.shape[0], dtype=var.dtype)

    def unit_rows(self, var: Var, seed):
        return unit_rows(seed.rows, var.shape[0], var.dtype)

    def take(self, c, seed):
        return jnp.take(c, seed.rows, axis=0, mode="fill", fill_value=0)  # rows ≥ D: a padded block

    def fit(self, c, var: Var, per_direction: bool):
        c = jnp.asarray(c)
        if c.dtype != var.dtype:
            c = c.astype(var.dtype)
        shape = c.shape[: c.ndim - var.ndim] + var.shape if c.ndim >= var.ndim else var.shape
        return c if c.shape == shape else jnp.broadcast_to(c, shape)

    def canonical(self, c, var: Var, per_direction: bool):
        shape = ((self.R,) if per_direction else ()) + var.shape
        if c is None:
            return jnp.zeros(shape, var.dtype)
        return jnp.broadcast_to(jnp.asarray(c, dtype=var.dtype), shape)


def _context(spec: engine.GroupSpec, w) -> engine.Context:
    if spec.ones:
        wsum, wdot = lead_sum, lead_dot
    else:

        def wsum(a):
            return lead_sum(a, w)

        def wdot(a, b):
            return lead_dot(a, b, w)

    w0 = w[0] if spec.order == 0 else None
    weights = None if spec.ones else w
    return engine.Context(
        spec.order, spec.collapsed, spec.R, Layout(spec.R), wsum, wdot, backend=NAME, weight0=w0, weights=weights
    )


# --- groups, points, batches ---------------------------------------------------------------------------------------


def _block_loop(block, spec: engine.GroupSpec):
    """The direction blocks under ``lax.scan`` (one block live at a time): the value (the same for every
    block, carried, not stacked), the total summed as the blocks run, the gradient's blocks joined (the
    padding past ``spec.size`` dropped)."""
    v0, t0, _ = jax.eval_shape(block, jnp.int32(0))
    zeros = partial(jax.tree_util.tree_map, lambda a: vary_like(jnp.zeros(a.shape, a.dtype), a))  # (shard_map)

    def step(carry, b):
        v, t, g = block(b)
        return (v, None if t is None else carry[1] + t), g

    (value, total), gs = lax.scan(step, (zeros(v0), zeros(t0)), jnp.arange(spec.blocks))
    grad = None if gs is None else jnp.reshape(gs, (-1,) + gs.shape[2:])[: spec.size]
    return value, total, grad


def _jet_point(source, specs, return_grad, static, consts, x, arrays):
    """One point's jet; ``source`` is the captured :class:`Program` (``compile``: built once, its schedules
    are the ones ``.schedule`` prints) or the jaxpr, converted here with the traced ``consts`` (eager runs)."""
    if not isinstance(source, Program):
        consts = [static.get(i, c) for i, c in enumerate(consts)]  # integer constants (indices) stay concrete
    program = source if isinstance(source, Program) else _Capture().program(source, consts)
    (out_var,) = program.outvars

    def inputs(i, spec, b=None):
        rows, V, w = arrays[i] if b is None else (None if a is None else a[b] for a in arrays[i])
        if rows is not None:  # unit directions (a block of the identity, or some axes): by index, never R×D
            V = engine.Identity(spec.R, rows)
        return _context(spec, w), x, V

    value, total, grad = engine.evaluate(program, specs, return_grad, inputs, _block_loop)
    shape, dtype = out_var.shape, out_var.dtype

    def full(t):
        return jnp.zeros(shape, dtype) if t is None else jnp.broadcast_to(t, shape)

    total = jnp.stack([full(t) for t in total]) if isinstance(total, list) else full(total)  # parts: (P, *shape)
    if not return_grad:  # the value is not part of the result: let XLA drop the primal output
        return None, total, None
    value = jnp.broadcast_to(value, shape)
    grad = jnp.zeros((x.shape[0],) + shape, dtype) if grad is None else jnp.broadcast_to(grad, (x.shape[0],) + shape)
    return value, total, jnp.moveaxis(grad, 0, -1)


def _point(jaxpr, specs, method: str, return_grad: bool, program: Program | None = None, static=None) -> Callable:
    """``(consts, x, arrays) -> (value, result, grad)`` at one point: nested AD, or the engine's jet."""
    if method == "nested":
        return partial(nested_point, jaxpr, specs, return_grad)
    return partial(_jet_point, jaxpr if program is None else program, specs, return_grad, dict(static or ()))


def _evaluate(point, chunk, shard, consts, X, arrays):
    """``point`` per point under ``vmap``; ``chunk`` points per pass under ``lax.map`` (the last chunk padded
    with copies of the last point, dropped afterwards). A batch sharded over devices (``shard``, or the sharding
    ``X``'s type carries) runs as each device's program on its own rows (``shard_map`` over the batch axes), so
    it stays sharded, result included (:mod:`.jax_sharding`)."""
    if X.ndim == 1:
        return point(consts, X, arrays)
    shard = shard or from_type(X)
    if shard is None:
        return _chunked(point, chunk, consts, X, arrays)
    return shard.per_device(partial(_chunked, point, chunk), consts, X, arrays)


def _chunked(point, chunk, consts, X, arrays):
    batch = jax.vmap(point, in_axes=(None, 0, None))
    N = X.shape[0]
    if chunk is None or N <= chunk:
        return batch(consts, X, arrays)
    n = -(-N // chunk)
    Xp = jnp.concatenate([X, jnp.broadcast_to(X[-1:], (n * chunk - N, X.shape[1]))]) if n * chunk > N else X
    out = lax.map(lambda xc: batch(consts, xc, arrays), jnp.reshape(Xp, (n, chunk, X.shape[1])))
    return jax.tree_util.tree_map(lambda a: jnp.reshape(a, (n * chunk,) + a.shape[2:])[:N], out)


_RUNNERS: collections.OrderedDict = collections.OrderedDict()
_MAX_RUNNERS = 64


def _static_consts(consts: list) -> tuple:
    """The concrete integer and boolean constants (indices, masks) as ``(position, array)``: compiled in, so
    that direction sparsity can follow gathers by them; floating constants (parameters) stay arguments."""
    out = []
    for i, c in enumerate(consts):
        if isinstance(c, jax.core.Tracer) or jnp.issubdtype(jnp.result_type(c), jnp.inexact) or np.size(c) > 1 << 16:
            continue
        out.append((i, np.asarray(c)))
    return tuple(out)


def _runner(jaxpr, specs, method, return_grad, chunk=None, static: tuple = (), shard=None, top=False) -> Callable:
    """A jitted ``(consts, X, arrays) -> (value, result, grad)``, cached on the program's text, its integer
    constants and the plan's static structure (so repeated eager calls, with new parameters or new random
    directions, reuse it)."""
    static_key = tuple((i, a.dtype.str, a.shape, a.tobytes()) for i, a in static)
    key = (str(jaxpr), specs, method, return_grad, chunk, engine.is_strict(), frozenset(RULES.items()), static_key,
           shard)  # fmt: skip
    fns = _RUNNERS.get(key)
    if fns is None:
        fns = _RUNNERS[key] = _jits(partial(_evaluate, _point(jaxpr, specs, method, return_grad, static=static),
                                            chunk, shard), shard)  # fmt: skip
        if len(_RUNNERS) > _MAX_RUNNERS:
            _RUNNERS.popitem(last=False)
    else:
        _RUNNERS.move_to_end(key)
    return fns[1] if top else fns[0]


def _jits(fn: Callable, shard) -> tuple[Callable, Callable]:
    """``(plain, top)``: ``fn`` jitted, for calls inside a user's trace (JAX takes compiler options only at the top
    level), and jitted with multijet's compiler options (:mod:`.jax_options`) for top-level calls; one function
    under both, so they share its traces. A sharded program keeps XLA's options (under them its meshes clashed)."""
    plain = jax.jit(fn)
    options = compiler_options() if shard is None else None
    return plain, (plain if options is None else jax.jit(fn, compiler_options=options))


#: per plan (weakly: a plan is frozen, its directions fixed): ``(method, return_grad, dtype, dchunk) ->``
#: :func:`_build_specs_arrays`'s result, so repeated eager calls on one plan do not rebuild and re-upload them
_SPECS_ARRAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _specs_arrays(plan: Plan, method: str, return_grad: bool, dtype, dchunk: int | None = None, sparsity=None):
    key = (method, bool(return_grad), np.dtype(dtype), dchunk, jax.config.jax_enable_x64, sparsity)
    per_plan = _SPECS_ARRAYS.setdefault(plan, {})
    if key not in per_plan:
        with jax.ensure_compile_time_eval():  # concrete arrays even inside an enclosing jit (never a cached tracer)
            per_plan[key] = _build_specs_arrays(plan, method, return_grad, dtype, dchunk, sparsity)
    return per_plan[key]


def _build_specs_arrays(plan: Plan, method: str, return_grad: bool, dtype, dchunk: int | None = None, sparsity=None):
    """The static group specs and each group's ``(rows, V, w)`` (:func:`multijet.engine.block_inputs`): unit
    directions by their axes ``rows``, dense directions ``V``, weights ``w`` (a served group's read-off ``a``);
    blocked ``(blocks, R, …)`` with padding (weight zero) when ``dchunk`` splits the group."""
    specs = engine.group_specs(plan, method, return_grad, dchunk, sparsity)
    arrays = []
    for i, spec in enumerate(specs):
        blocks = [engine.block_inputs(plan, i, spec, b, pad=True) for b in range(spec.blocks)]

        def stack(field, dt, blocks=blocks, spec=spec):
            parts = [getattr(blk, field) for blk in blocks]
            if parts[0] is None:
                return None
            return jnp.asarray(parts[0] if spec.blocks == 1 else np.stack(parts), dt)

        arrays.append((stack("rows", np.int32), stack("directions", dtype), stack("weights", dtype)))
    return specs, tuple(arrays)


def _as_array(x):
    return x if isinstance(x, jax.Array) else jnp.asarray(x)


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
    mesh=None,
    batch_axis: str | tuple[str, ...] | None = None,
):
    """Evaluate the plan on ``f`` at ``x`` (D,) or (N, D); returns ``(value, result, grad)``. ``chunk_size``
    points and ``direction_chunk_size`` directions per pass, each under ``lax.map``; ``sparsity``: direction
    sparsity where the cost model finds it pays (None) or never (False). A batch sharded over ``batch_axis`` of
    ``mesh`` (default: as ``x`` is placed) stays sharded (:mod:`.jax_sharding`)."""
    x = _as_array(x)
    shard = resolve(x, mesh, batch_axis)
    closed = capture(f, x)
    specs, arrays = _specs_arrays(plan, method, return_grad, x.dtype, direction_chunk_size, sparsity)
    consts = list(closed.consts)
    top = not any(isinstance(a, jax.core.Tracer) for a in [x, *consts])  # compiler options only at the top level
    fn = _runner(closed.jaxpr, specs, method, return_grad, chunk_size, _static_consts(consts), shard, top)
    return fn(consts, x if shard is None else shard.place(x), arrays)


def compile(
    plan: Plan,
    f: Callable,
    x_example,
    *,
    method: str = "collapsed",
    return_grad: bool = False,
    chunk_size: int | None = None,
    direction_chunk_size: int | None = None,
    sparsity: bool | int | None = None,
    mesh=None,
    batch_axis: str | tuple[str, ...] | None = None,
):
    """Trace ``f`` once at ``x_example`` and return the jitted ``x -> (value, result, grad)``.

    The arrays ``f`` closes over (e.g. network parameters) and the plan's directions are captured now and
    compiled in as constants (XLA can then pre-pack the weights). To differentiate with respect to changing
    parameters, call ``mj.laplacian`` inside your own ``jax.jit``/``jax.grad`` instead.
    """
    x_example = _as_array(x_example)
    named = None
    if mesh is not None or batch_axis is not None:  # the example's row count is not checked: each call's is
        named = resolve(x_example, mesh, batch_axis, check=False)
    specs, arrays = _specs_arrays(plan, method, return_grad, x_example.dtype, direction_chunk_size, sparsity)
    closed = capture(f, x_example)  # once: every sharding's program reads the same parameters
    jaxpr, consts = closed.jaxpr, list(closed.consts)
    program = None if method == "nested" else _Capture().program(jaxpr, consts)  # the one the jit trace runs
    point = _point(jaxpr, specs, method, return_grad, program)

    def build(shard):
        """The jitted program for a batch sharded as ``shard``."""
        plain, top = _jits(lambda x: _evaluate(point, chunk_size, shard, consts, x, arrays), shard)
        return top, plain, program

    return CompiledJax(build, x_example, specs, named)


class CompiledJax:
    """``compile``'s callable: the jitted jet program; ``.code`` prints its jaxpr, ``.lower`` lowers it.

    One jitted program per batch sharding it meets (usually one), all from the one capture: a sharded batch
    runs as each device's program on its own rows (:mod:`.jax_sharding`)."""

    def __init__(self, build: Callable, x_example, specs: tuple = (), named=None):
        self._build, self._x_example, self._named = build, x_example, named
        self._fns: dict = {}
        self.specs = specs
        self._fn, self._traced, self.program = self._for(self._sharding(x_example))

    def _sharding(self, x):
        """The batch sharding named at compile time, else the one ``x`` is placed with (or its type carries)."""
        return self._named if self._named is not None else from_type(x)

    def _for(self, shard):
        if shard not in self._fns:
            self._fns[shard] = self._build(shard)
        return self._fns[shard]

    def __call__(self, x):
        x = _as_array(x)
        if x.dtype != self._x_example.dtype:
            raise TypeError(f"compiled for dtype {self._x_example.dtype}, got x of dtype {x.dtype}")
        shard = self._sharding(x)
        top, traced, _ = self._for(shard)
        if isinstance(x, jax.core.Tracer):
            return traced(x if shard is None else shard.place(x))
        return top(x if shard is None else shard.place(x))

    def lower(self, x):
        return self._for(self._sharding(x))[0].lower(x)

    @property
    def code(self) -> str:
        """The jaxpr of the jet program at ``x_example``'s shape (what XLA compiles)."""
        return str(jax.make_jaxpr(self._traced)(self._x_example))

    @property
    def schedule(self) -> str:
        """The engine's schedule of each propagated jet group (structural zeros, directions, where Σ_r w_r
        forms), of the program and specs the jitted run uses."""
        if self.program is None:
            return "# method='nested' runs JAX's own nested AD of f; there is no jet program."
        return engine.schedule_text(self.program, self.specs)


def seed_from(key) -> int:
    """An integer seed for the planner from a ``jax.random`` key (typed or raw ``uint32[2]``)."""
    try:
        bits = jax.random.bits(key, (2,), dtype=jnp.uint32)
        hi, lo = (int(b) for b in np.asarray(bits))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as e:
        raise TypeError(
            "a traced jax.random key cannot choose the directions (the plan is built in Python); "
            "pass a concrete key or an int seed, or use mj.compile once outside jit"
        ) from e
    except Exception as e:
        raise TypeError(f"seed must be an int, a numpy Generator or a jax.random key, got {type(key).__name__}") from e
    return (hi << 32) | lo
