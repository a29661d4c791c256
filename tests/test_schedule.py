"""The schedule's annotations checked against a dense evaluation of every intermediate value.

For a captured JAX program, every value's Taylor coefficients along ``x_0 + t v`` are computed densely by
nested ``jax.jvp`` of the primal program (all intermediates at once). Where the schedule marks a coefficient
structurally zero it must be zero for every direction; a value marked direction-independent has no
non-zero coefficient of order ≥ 1.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.extend import core as jcore  # noqa: E402

import multijet as mj  # noqa: E402
from multijet.backends import jax as mjax  # noqa: E402
from multijet.backends.jax_table import bind_fn  # noqa: E402
from multijet.engine import make_schedule  # noqa: E402

pytestmark = pytest.mark.jax

R = np.random.default_rng(7)
W1 = jnp.asarray(R.normal(size=(3, 5)))
W2 = jnp.asarray(R.normal(size=(5,)))

PROGRAMS = {
    "mlp": lambda x: jnp.dot(jnp.tanh(x @ W1), W2),
    "square-of-linear": lambda x: jnp.sum((x @ W1) ** 2) + jnp.sum(x) * 3.0,
    "cubic": lambda x: jnp.sum((x @ W1) ** 3) - x[0] * x[1],
    "products": lambda x: jnp.sum(x * jnp.sin(x)) * jnp.exp(x[2]) / (2.0 + x[0] ** 2),
    "selection": lambda x: jnp.max(jnp.maximum(x @ W1, 0.2) ** 2) + jnp.sum(jnp.sort(x)),
    "constant-branch": lambda x: jnp.sum(x @ W1) + jnp.sum(jnp.tanh(W1)),
}


def _dense(closed, x0, v, K):
    """``{jaxpr var: [c_0, …, c_K]}`` of every top-level value along ``x0 + t v``."""
    jaxpr = closed.jaxpr
    eqn_outs = [o for e in jaxpr.eqns for o in e.outvars if not isinstance(o, jcore.DropVar)]

    def values(t):
        env = dict(zip(jaxpr.constvars, closed.consts, strict=True))
        env[jaxpr.invars[0]] = x0 + t * v

        def read(a):
            return a.val if isinstance(a, jcore.Literal) else env[a]

        for e in jaxpr.eqns:
            for o, val in zip(e.outvars, bind_fn(e)(*[read(a) for a in e.invars]), strict=True):
                env[o] = val
        return [jnp.asarray(env[o], jnp.float64) if jnp.issubdtype(o.aval.dtype, jnp.inexact) else
                jnp.zeros(o.aval.shape) for o in eqn_outs]  # fmt: skip

    levels = [values]
    for _ in range(K):
        lower = levels[-1]
        levels.append(lambda t, lower=lower: jax.jvp(lower, (t,), (jnp.ones_like(t),))[1])
    t0 = jnp.zeros(())
    per_level = [fn(t0) for fn in levels]
    return {o: [per_level[k][i] for k in range(K + 1)] for i, o in enumerate(eqn_outs)}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("order,collapsed", [(2, True), (2, False), (4, True), (3, False)])
def test_marked_zeros_are_zero(name, order, collapsed):
    f = PROGRAMS[name]
    x0 = jnp.asarray([0.3, -0.7, 0.5])
    closed = mjax.capture(f, x0)
    cap = mjax._Capture()
    program = cap.program(closed.jaxpr, closed.consts)
    sched = make_schedule(program, order, collapsed)
    engine_outs = [v for e in program.eqns for v in e.outs]
    marked_zero = 0
    for trial in range(3):
        v = jnp.asarray(R.normal(size=3))
        dense = _dense(closed, x0, v, order)
        assert len(dense) == len(engine_outs)
        for (_jv, coeffs), ev in zip(dense.items(), engine_outs, strict=True):
            info = sched.info(ev)
            for k in range(1, order + 1):
                if info.zero(k):
                    marked_zero += trial == 0
                    np.testing.assert_allclose(coeffs[k], 0.0, atol=1e-9, err_msg=f"{name}: {ev!r} k={k}")
            if info.directions.empty:
                for k in range(1, order + 1):
                    np.testing.assert_allclose(coeffs[k], 0.0, atol=1e-9, err_msg=f"{name}: {ev!r} independent")
            else:
                assert any(info.present[1:]), f"{ev!r} depends on directions but has no coefficient"
    assert marked_zero > 0  # every program here has structural zeros (the first layer's x_k, k ≥ 2)


def test_schedule_knows_polynomial_degree_and_collapse_points():
    """(Wx)² has no coefficient above 2; tanh forms the weighted sum, the linear layer does not."""
    x0 = jnp.asarray([0.3, -0.7, 0.5])
    closed = mjax.capture(PROGRAMS["square-of-linear"], x0)
    program = mjax._Capture().program(closed.jaxpr, closed.consts)
    sched = make_schedule(program, 4, True)
    square = next(e for e in program.eqns if e.prim == "integer_pow")
    assert sched.info(square.outs[0]).present == (True, True, True, False, False)
    idx = program.eqns.index(square)
    assert not sched.collapses[idx]  # at K = 4 the square has no top coefficient at all
    assert make_schedule(program, 2, True).collapses[idx]  # at K = 2: S_2 = 2 Σ_r w_r (x_1^{(r)})² forms here
    dot = next(i for i, e in enumerate(program.eqns) if e.prim == "dot_general")
    assert not sched.collapses[dot]
    assert sched.info(program.eqns[dot].outs[0]).present == (True, True, False, False, False)
    text = str(make_schedule(program, 2, True))
    assert "integer_pow[elementwise]" in text and "Σ_r w_r forms here" in text and "dirs all" in text


def test_compiled_schedule_prints():
    x0 = jnp.asarray([[0.3, -0.7, 0.5]])
    c = mj.compile(mj.Laplacian(), PROGRAMS["mlp"], x0)
    text = c.schedule
    assert "order K=2, collapsed" in text and "tanh[elementwise]" in text and "Σ_r w_r forms here" in text
