"""Fixes from the executor review: NumPy 1.26 compatibility, registrations made before a backend loads, the
shared per-block inputs and point chunking, JAX schedules and the eager cache."""

from __future__ import annotations

import numpy as np
import pytest

import multijet as mj
from multijet.backends.numpy_namespace import NS


@pytest.mark.numpy
@pytest.mark.parametrize("upper", [False, True])
def test_numpy_cholesky_upper_without_numpy2(monkeypatch, upper):
    """``xp.linalg.cholesky(a, upper=True)`` on concrete arrays works where ``np.linalg.cholesky`` has no
    ``upper=`` (NumPy 1.26): the conjugate transpose of the lower factor."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(2, 3, 3))
    a = m @ np.swapaxes(m, -1, -2) + 3 * np.eye(3)
    lower = np.linalg.cholesky(a)
    real = np.linalg.cholesky
    monkeypatch.setattr(np.linalg, "cholesky", lambda x: real(x))  # NumPy 1.26's signature: no ``upper``
    got = NS.linalg.cholesky(a, upper=upper)
    np.testing.assert_array_equal(got, np.swapaxes(lower, -1, -2) if upper else lower)


_LATE_TORCH = """
import sys, warnings
import numpy as np
import multijet as mj
from multijet import derivatives, extend
assert "torch" not in sys.modules
def table(xp, x0, y0, K):
    return [None if d is None else -d for d in derivatives.TABLE["erf"](xp, x0, y0, K)]
extend.register_elementwise("bad_erfc", table, numpy=np.vectorize(__import__("math").erfc), torch="no_such_aten_op")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    import multijet.backends.torch  # the bad torch= part fails here: warned, not raised
msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert any("'bad_erfc'" in m and "torch" in m and "no_such_aten_op" in m for m in msgs), msgs
assert extend.registered()["bad_erfc"] == ("numpy",), extend.registered()
x = torch.tensor([0.3, -0.2], dtype=torch.float64)
lap = mj.laplacian(lambda x: torch.sin(x).sum(), x, backend="torch")
assert torch.allclose(lap, -torch.sin(x).sum()), lap
print("ok")
"""


@pytest.mark.torch
def test_bad_torch_registration_before_import_warns():
    """A ``torch=`` registration that cannot work, made before torch loads, warns naming the primitive when
    the torch backend loads, and the backend still loads and runs."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _LATE_TORCH], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_by_points_joins_chunks():
    from multijet.chunking import by_points

    X = np.arange(14.0).reshape(7, 2)
    calls = []

    def fn(Xc):
        calls.append(len(Xc))
        return Xc * 2, None, Xc.sum(1)

    value, none, total = by_points(fn, X, 3, np.concatenate)
    assert calls == [3, 3, 1] and none is None
    np.testing.assert_array_equal(value, X * 2)
    np.testing.assert_array_equal(total, X.sum(1))
    calls.clear()
    assert by_points(fn, X, None, np.concatenate)[0] is not None and calls == [7]


def test_block_inputs_padding():
    from multijet import engine

    D = 5
    plan = mj.plan(mj.Laplacian(), D)
    specs = engine.group_specs(plan, "collapsed", False, 2)
    (spec,) = specs
    assert spec.identity and spec.blocks == 3
    last = engine.block_inputs(plan, 0, spec, 2)
    np.testing.assert_array_equal(last.rows, [4])
    padded = engine.block_inputs(plan, 0, spec, 2, pad=True)
    np.testing.assert_array_equal(padded.rows, [4, D])  # a = D: a zero row
    np.testing.assert_array_equal(padded.weights, [1.0, 0.0])
    assert engine.block_inputs(plan, 0, engine.group_specs(plan, "collapsed", False)[0]).rows is None  # Identity(D)


def _shared_op(D):
    """Δ + Σ_i (1 + i) ∂_i: the first-order group is served by the Laplacian's."""
    return mj.Laplacian() + mj.LinearOperator({tuple(int(i == j) for j in range(D)): 1.0 + i for i in range(D)})


@pytest.mark.jax
def test_jax_schedule_is_the_runs_own():
    """``compile(...).schedule`` prints the program the jitted run propagates (no second capture) and only
    the propagated groups (a served group is read off its host)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from multijet import engine
    from multijet.backends import jax as jb

    D = 4
    W = jnp.asarray(np.random.default_rng(0).normal(size=(3, D)))
    f = lambda x: jnp.sum(jnp.tanh(W @ x)) + x[0] * x[1]  # noqa: E731
    X = jnp.asarray(np.random.default_rng(1).normal(size=(2, D)))
    plan = mj.plan(_shared_op(D), D, route="directions")
    comp = jb.compile(plan, f, X, direction_chunk_size=3)
    assert any(s.served for s in comp.specs)
    comp(X)  # traces: the schedules land on the compiled program itself
    assert comp.program.__dict__.get("_schedules")
    own = [str(engine.schedule_for(comp.program, s)) for s in comp.specs if not s.served]
    assert comp.schedule == "\n".join(own) and len(own) < len(comp.specs)


@pytest.mark.torch
def test_torch_schedule_uses_built_specs():
    import torch

    D = 4
    f = lambda x: torch.tanh(x).sum() + x[0] * x[1]  # noqa: E731
    X = torch.randn(2, D, dtype=torch.float64)
    from multijet.backends import torch as tb

    comp = tb.compile(mj.plan(mj.Laplacian(), D), f, X, direction_chunk_size=3)
    (prog,) = comp._programs.values()
    assert prog.specs and all(s.blocks == 2 for s in prog.specs if s.order == 2)
    assert comp.schedule


@pytest.mark.jax
def test_jax_eager_cache_and_retracing(monkeypatch):
    """Repeated eager calls build the plan's arrays once (concrete even when first built under an enclosing
    jit), and still follow changed parameters and a changed program."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from multijet.backends import jax as jb

    D = 3
    builds = []
    real = jb._build_specs_arrays
    monkeypatch.setattr(jb, "_build_specs_arrays", lambda *a: builds.append(1) or real(*a))
    X = jnp.asarray(np.random.default_rng(2).normal(size=(4, D)))
    plan = mj.plan(mj.Laplacian(), D, samples=2, seed=0)
    params = {"w": jnp.ones(D)}

    def f(x):
        return jnp.sum(jnp.sin(params["w"] * x))

    inside = jax.jit(lambda X: jb.run(plan, f, X)[1])(X)  # first built under a trace
    first = jb.run(plan, f, X)[1]  # a leaked tracer would raise here
    np.testing.assert_allclose(inside, first)
    params["w"] = 2 * jnp.ones(D)  # new parameter values: picked up
    second = jb.run(plan, f, X)[1]
    assert not np.allclose(first, second)
    params["w"] = jnp.ones((2, D))[0]
    f_new = lambda x: jnp.sum(jnp.cos(x))  # noqa: E731  a different program on the same plan
    np.testing.assert_allclose(jb.run(plan, f_new, X)[1], mj.apply(mj.Laplacian(), f_new, X, backend="jax",
                                                                    samples=2, seed=0))
    assert len(builds) == 1
