"""The planner: operator spec + dimension (+ randomisation) → a route and its jet groups (docs/MATH.md §3–4).

Framework-free. An operator may have several routes: one *direction set* ``Σ_r w_r f_K(v_r)`` per order, or
*composition* ``P(Q f)`` (the engine applied to its own output). The planner estimates each route's cost
(coefficient arrays per program node, collapsed), takes the cheapest unless ``route=`` forces one, and
prints the alternatives. Every exact plan is verified before it is returned (the coefficients themselves
when few, else the polynomial identity ``Σ_r w_r (y·v_r)^K = Σ_α c_α y^α`` at random points ``y``).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from . import plan_sets
from .errors import PlanError
from .plan_group import JetGroup, multi_indices
from .plan_sets import bilaplacian_directions, interpolation_directions
from .spec import Alpha, Operator

__all__ = [
    "JetGroup",
    "Plan",
    "Composition",
    "make_plan",
    "DISTRIBUTIONS",
    "METHODS",
    "ROUTES",
    "bilaplacian_directions",
    "interpolation_directions",
]

DISTRIBUTIONS = ("rademacher", "gaussian")
METHODS = ("collapsed", "standard", "nested")
ROUTES = ("directions", "composition")


@dataclass(frozen=True, eq=False)
class Composition:
    """``coefficient · outer(inner f)``: the inner plan's program is itself propagated by the outer plan."""

    coefficient: float
    outer: Plan
    inner: Plan

    def arrays(self, method: str) -> int:
        return self.outer.arrays(method) * self.inner.arrays(method)


@dataclass(frozen=True, eq=False)
class Plan:
    """A frozen, printable plan: jet groups (and compositions) whose weighted results sum to ``P f``."""

    operator: Operator
    dim: int
    groups: tuple[JetGroup, ...]
    samples: int | None = None
    distribution: str | None = None
    seed: int | None = None
    notes: tuple[str, ...] = field(default=())
    route: str = "directions"
    compositions: tuple[Composition, ...] = ()
    alternatives: tuple[tuple[str, int | None, str], ...] = ()  # (route, cost or None, why not)
    parts: tuple[int, ...] = ()  # per group, the sample group it belongs to (return_std); () : one part

    @property
    def randomized(self) -> bool:
        return self.samples is not None

    @property
    def order(self) -> int:
        orders = [g.order for g in self.groups] + [c.outer.order + c.inner.order for c in self.compositions]
        return max(orders)

    def arrays(self, method: str) -> int:
        """Coefficient arrays carried per program node (a composition: outer × inner)."""
        shared = method != "nested"
        total = sum(g.arrays(method) for g in self.groups if not (shared and g.served_by is not None))
        return total + sum(c.arrays(method) for c in self.compositions)

    def symbol(self, y: np.ndarray) -> np.ndarray:
        """What the plan computes on ``e^{y·x}`` at ``x = 0``: ``Σ_groups Σ_r w_r (y·v_r)^K`` (+ compositions)."""
        y = np.atleast_2d(np.asarray(y, dtype=np.float64))
        out = np.zeros(y.shape[0])
        for g in self.groups:
            out += (g.project(y) ** g.order) @ g.weights
        for c in self.compositions:
            out += c.coefficient * c.outer.symbol(y) * c.inner.symbol(y)
        return out

    def coefficients(self) -> dict[Alpha, float]:
        """The operator this plan computes, ``{α: Σ_r w_r K!/α! v_r^α}`` (for checks and tests; small D)."""
        out: dict[Alpha, float] = defaultdict(float)
        for g in self.groups:
            if g.unit_axes is not None:  # v_r = e_i: only α = K e_i, with K!/α! v^α = 1
                for i, w in zip(g.unit_axes, g.weights, strict=True):
                    out[tuple(g.order * (k == i) for k in range(self.dim))] += float(w)
                continue
            if math.comb(self.dim + g.order - 1, g.order) * g.size > 50_000_000:
                raise PlanError(
                    f"Plan.coefficients enumerates all {math.comb(self.dim + g.order - 1, g.order)} multi-indices "
                    f"of order {g.order} in D={self.dim}; it is meant for checks at small D"
                )
            V = g.directions
            for alpha in multi_indices(self.dim, g.order):
                out[alpha] += float(np.dot(g.weights, _moment(V, alpha)))
        for c in self.compositions:
            inner = c.inner.coefficients()
            for a, ca in c.outer.coefficients().items():
                for b, cb in inner.items():
                    out[tuple(i + j for i, j in zip(a, b, strict=True))] += c.coefficient * ca * cb
        return dict(out)

    def __str__(self) -> str:
        return "\n".join(self._lines())

    __repr__ = __str__

    def _lines(self, indent: str = "") -> list[str]:
        seed = "a seed per sample group" if self.parts and self.seed is None else f"seed={self.seed}"
        kind = f"randomised, {self.samples} {self.distribution} samples, {seed}" if self.randomized else "exact"
        lines = [f"{indent}Plan for {self.operator!r} at D={self.dim} ({kind}); route: {self.route}"]
        if self.parts:
            lines.append(f"{indent}  {max(self.parts) + 1} sample groups in one pass, each collapsed into its own "
                         "top sum (return_std: batch means)")  # fmt: skip
        for i, g in enumerate(self.groups, 1):
            lines.extend(indent + line for line in g.describe(i, self.dim))
        for c in self.compositions:
            lines.append(f"{indent}  composition {c.coefficient:g} · outer(inner f), arrays outer × inner:")
            lines.extend(c.outer._lines(indent + "    outer: "))
            lines.extend(c.inner._lines(indent + "    inner: "))
        c, s = self.arrays("collapsed"), self.arrays("standard")
        ratio = f"estimated cost ratio collapsed/standard {c / s:.2f}"
        lines.append(f"{indent}  arrays per node: collapsed {c}, standard {s}; {ratio}")
        for route, cost, why in self.alternatives:
            mark = "chosen" if route == self.route else "not chosen"
            if cost is None:
                text = f"unavailable: {why}"
            else:
                note = f" ({why})" if why else ""
                text = f"{'estimated ' if why else ''}cost {cost} arrays per node (collapsed){note}"
            lines.append(f"{indent}  route {route}: {text}; {mark}")
        lines.extend(f"{indent}  note: {n}" for n in self.notes)
        return lines


def make_plan(
    op: Operator,
    dim: int,
    *,
    samples: int | None = None,
    distribution: str | None = None,
    seed: int | None = None,
    route: str | None = None,
) -> Plan:
    """Plan ``op`` for functions of ``dim`` variables; exact when ``samples`` is None.

    ``distribution`` None means Rademacher where it is unbiased (order ≤ 2) and Gaussian above.
    ``route`` forces ``"directions"`` or ``"composition"``; None takes the cheaper. Plans with a fixed seed
    (and exact plans) are cached.
    """
    if not isinstance(op, Operator):
        raise TypeError(f"expected an operator spec (e.g. mj.Laplacian()), got {type(op).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"the input dimension D must be a positive integer, got {dim!r}")
    if distribution is not None and distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; expected one of {DISTRIBUTIONS}")
    if route is not None and route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; expected one of {ROUTES} or None (the cheaper)")
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
            raise ValueError(f"samples must be a positive integer or None (exact), got {samples!r}")
        samples = int(samples)
    op.check_dim(int(dim))
    if samples is None:
        distribution = seed = None
    if samples is not None and seed is None:
        return _plan(op, int(dim), samples, distribution, None, route)
    return _cached_plan(op, int(dim), samples, distribution, seed, route)


@functools.lru_cache(maxsize=256)
def _cached_plan(op, dim, samples, distribution, seed, route) -> Plan:
    return _plan(op, dim, samples, distribution, seed, route)


def _plan(op: Operator, dim: int, samples, distribution, seed, route) -> Plan:
    parts = [(c, a) for c, a in op.parts() if c != 0.0]
    composable = [(c, a) for c, a in parts if a.factors() is not None]
    # route -> (plan or None, collapsed cost or None, why unavailable); a route is built only when needed
    options: dict[str, list] = {"directions": [None, *plan_sets.directions_cost(parts, dim, samples, distribution)]}
    if not composable:
        options["composition"] = [None, None, f"{op!r} is not written as a composition (no factors)"]
    elif route == "directions":
        options["composition"] = [None, None, "not evaluated (route='directions' forced)"]
    else:
        try:
            built = _composition_route(op, parts, composable, dim, samples, distribution, seed)
            options["composition"] = [built, built.arrays("collapsed"), ""]
        except PlanError as err:
            if route == "composition":
                raise
            options["composition"] = [None, None, str(err)]
    if route is None:
        avail = {r: o[1] for r, o in options.items() if o[1] is not None}
        if not avail:
            raise PlanError(options["directions"][2])
        route = min(avail, key=lambda r: (avail[r], r != "directions"))
    elif options[route][1] is None:
        others = [r for r, o in options.items() if o[1] is not None]
        raise PlanError(f"route={route!r} does not exist for {op!r} here: {options[route][2]}; available: {others}")
    if route == "directions":
        groups, notes = plan_sets.direction_groups(parts, dim, samples, distribution, _rng(seed, samples))
        groups = plan_sets.share_lower_orders(groups, dim)
        built = Plan(op, dim, groups, samples, _dist_name(distribution, groups, samples), seed, notes)
        options["directions"][:2] = [built, built.arrays("collapsed")]  # the built cost, sharing included
    plan = options[route][0]
    for o in options.values():
        if o[0] is None and o[1] is not None:
            o[2] = "not built"
    alternatives = tuple((r, options[r][1], options[r][2]) for r in ROUTES) if composable else ()
    plan = _replace(plan, route=route, alternatives=alternatives)
    if samples is None:
        _verify(plan, op)
    return plan


def _composition_route(op, parts, composable, dim, samples, distribution, seed) -> Plan:
    """Each composable part ``c · outer(inner f)`` as a :class:`Composition` (independent samples per level);
    the other parts as direction groups."""
    comps = []
    for n, (c, atom) in enumerate(composable):
        outer_op, inner_op = atom.factors()
        s_out, s_in = _spawn(seed, 2 * n), _spawn(seed, 2 * n + 1)
        try:
            outer = make_plan(outer_op, dim, samples=samples, distribution=distribution, seed=s_out)
            inner = make_plan(inner_op, dim, samples=samples, distribution=distribution, seed=s_in)
        except PlanError as err:
            raise PlanError(f"composition {atom!r}: a level cannot be planned: {err}") from err
        comps.append(Composition(c, outer, inner))
    rest = [(c, a) for c, a in parts if a.factors() is None]
    groups, notes = ((), ())
    if rest:
        groups, notes = plan_sets.direction_groups(rest, dim, samples, distribution, _rng(seed, samples))
        groups = plan_sets.share_lower_orders(groups, dim)
    if samples is not None:
        notes = notes + (
            "randomised composition: independent samples per level, so E[P̂(Q̂f)] = P(Qf); "
            "Var = E[Var(P̂ | Q̂)] + Var(P Q̂ f) (docs/MATH.md §4)",
        )
    dist = distribution if distribution is not None else ("default per level" if samples else None)
    return Plan(op, dim, tuple(groups), samples, dist, seed, tuple(notes), "composition", tuple(comps))


def _spawn(seed, k: int):
    """An independent seed for level ``k`` of a composition (None stays None: fresh randomness)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), k]).generate_state(1, np.uint64)[0] >> np.uint64(2))


def _rng(seed, samples):
    return np.random.default_rng(seed) if samples is not None else None


def _dist_name(distribution, groups, samples):
    if samples is None:
        return None
    if distribution is not None:
        return distribution
    return "gaussian" if any(g.order >= 3 for g in groups) else "rademacher"


def _replace(plan: Plan, **changes) -> Plan:
    fields = {k: getattr(plan, k) for k in plan.__dataclass_fields__}
    fields.update(changes)
    return Plan(**fields)


def _fact_ratio(order: int, alpha) -> float:
    return math.factorial(order) / math.prod(math.factorial(k) for k in alpha)


def _moment(directions: np.ndarray, alpha: Alpha) -> np.ndarray:
    """``K!/α! · v_r^α`` for every row ``v_r``."""
    K = sum(alpha)
    return _fact_ratio(K, alpha) * np.prod(directions ** np.array(alpha), axis=1)


def _verify(plan: Plan, op: Operator) -> None:
    """Check the plan against the operator: every ``c_α`` when few, else the polynomial identity at random
    ``y`` (implied by the α-wise identity, and implying it for generic ``y``), relative to the terms' size."""
    n_alpha = sum(math.comb(plan.dim + g.order - 1, g.order) * g.size for g in plan.groups)
    if not plan.compositions and n_alpha <= 200_000:
        want = op.coefficients(plan.dim)
        scale = max([abs(v) for v in want.values()], default=0.0) or 1.0
        got = plan.coefficients()
        err = max((abs(want.get(a, 0.0) - got.get(a, 0.0)) for a in set(want) | set(got)), default=0.0)
        if err > 1e-9 * scale:
            raise PlanError(f"internal error: the plan for {op!r} reproduces its coefficients only to {err:.3g}")
        return
    y = np.random.default_rng(0).uniform(-1.0, 1.0, (4, plan.dim))
    lhs, rhs = plan.symbol(y), op.symbol(y)
    size = np.abs(rhs) + sum((np.abs(g.project(y)) ** g.order) @ np.abs(g.weights) for g in plan.groups)
    for c in plan.compositions:
        size = size + abs(c.coefficient) * np.abs(c.outer.symbol(y) * c.inner.symbol(y))
    if np.any(np.abs(lhs - rhs) > 1e-9 * (size + 1e-300)):
        err = float(np.max(np.abs(lhs - rhs)))
        raise PlanError(f"internal error: the plan for {op!r} misses its polynomial identity by {err:.3g}")
