"""Composition routes ``P(Q f)`` on every backend: the outer plan run on the inner plan's jet program.

``mj.apply(mj.Laplacian() @ mj.Laplacian(), f, X)`` and ``mj.bilaplacian(f, X, route="composition")`` must equal
the direction route to round-off for every backend and method, also with return_grad, compiled, under torch
training and under jax.jit / jax.grad; a randomised composition is unbiased; bad input is refused clearly.
Each program is written once against the array API and runs on NumPy, torch and JAX.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from array_api_compat import array_namespace

import multijet as mj

pytestmark = pytest.mark.filterwarnings("ignore::multijet.engine.GenericRuleWarning")

D = 4
_rng = np.random.default_rng(2024)
W1, B1 = _rng.normal(size=(6, D)) / 2, _rng.normal(size=6) / 5
W2, B2 = _rng.normal(size=(5, 6)) / np.sqrt(6), _rng.normal(size=5) / 5
W3 = _rng.normal(size=5) / np.sqrt(5)
C = (lambda a: a @ a.T / D + 0.5 * np.eye(D))(_rng.normal(size=(D, D)))  # symmetric positive definite
POINTS = _rng.normal(size=(3, D)) * 0.7
TOL = dict(rtol=1e-10, atol=1e-10)


def _c(x, a):
    return array_namespace(x).asarray(a, dtype=x.dtype)


def mlp_wx(x):
    """An MLP written ``W @ x``."""
    xp = array_namespace(x)
    h = xp.tanh(_c(x, W1) @ x + _c(x, B1))
    h = xp.sin(_c(x, W2) @ h + _c(x, B2))
    return xp.sum(_c(x, W3) * h)


def mlp_xwt(x):
    """The same MLP written ``x @ W.T`` (a linear layer's form)."""
    xp = array_namespace(x)
    h = xp.tanh(x @ _c(x, W1).T + _c(x, B1))
    h = xp.sin(h @ _c(x, W2).T + _c(x, B2))
    return xp.sum(h * _c(x, W3))


def products(x):
    """Not an MLP: products, a quotient, exp/log, a reduction."""
    xp = array_namespace(x)
    return x[0] * xp.exp(x[1]) / (1.0 + x[2] ** 2) + xp.log(1.0 + xp.sum(x * x)) * xp.sum(xp.sin(x)) * x[3]


PROGRAMS = {"mlp_Wx": mlp_wx, "mlp_xWT": mlp_xwt, "products": products}
BILAP = mj.Laplacian() @ mj.Laplacian()

BACKEND_METHODS = [
    pytest.param("numpy", "collapsed", marks=pytest.mark.numpy),
    pytest.param("numpy", "standard", marks=pytest.mark.numpy),
    pytest.param("torch", "collapsed", marks=pytest.mark.torch),
    pytest.param("torch", "standard", marks=pytest.mark.torch),
    pytest.param("torch", "nested", marks=pytest.mark.torch),
    pytest.param("jax", "collapsed", marks=pytest.mark.jax),
    pytest.param("jax", "standard", marks=pytest.mark.jax),
    pytest.param("jax", "nested", marks=pytest.mark.jax),
]
BACKENDS = [
    pytest.param("numpy", marks=pytest.mark.numpy),
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("jax", marks=pytest.mark.jax),
]


def _framework(backend):
    """(NumPy → backend array, backend array → NumPy)."""
    if backend == "torch":
        torch = pytest.importorskip("torch")
        return lambda a: torch.asarray(np.asarray(a), dtype=torch.float64), lambda t: t.detach().cpu().numpy()
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        return lambda a: jax.numpy.asarray(np.asarray(a, dtype=np.float64)), np.asarray
    return lambda a: np.asarray(a, dtype=np.float64), np.asarray


DEADLINE = 300.0  # seconds per call: a hang of a compiled composition fails the test instead of blocking


def _within(fn, *args, **kwargs):
    box: dict = {}

    def run():
        try:
            box["out"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["err"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        pytest.fail(f"call did not finish within {DEADLINE:.0f}s")
    if "err" in box:
        raise box["err"]
    return box["out"]


def test_the_composition_route_is_chosen_at_this_dimension():
    assert mj.plan(BILAP, D).route == "composition"
    assert mj.plan(mj.Bilaplacian(), D).route == "composition"


# --- every backend × method × program ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize(("backend", "method"), BACKEND_METHODS)
def test_composition_equals_direction_route(backend, method, name):
    f = PROGRAMS[name]
    to, back = _framework(backend)
    X = to(POINTS)
    kw = dict(backend=backend, method=method)
    want = back(mj.bilaplacian(f, X, route="directions", **kw))
    reference = mj.bilaplacian(f, POINTS, backend="numpy", route="directions")
    np.testing.assert_allclose(want, reference, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(back(mj.apply(BILAP, f, X, **kw)), want, **TOL)
    np.testing.assert_allclose(back(mj.apply(BILAP, f, X, route="composition", **kw)), want, **TOL)
    np.testing.assert_allclose(back(mj.bilaplacian(f, X, route="composition", **kw)), want, **TOL)
    one = back(mj.bilaplacian(f, X[0], route="composition", **kw))  # a single point (D,)
    assert one.shape == ()
    np.testing.assert_allclose(one, want[0], **TOL)


@pytest.mark.parametrize(("backend", "method"), BACKEND_METHODS)
def test_weighted_laplacian_of_laplacian(backend, method):
    to, back = _framework(backend)
    X = to(POINTS)
    for op in (mj.WeightedLaplacian(C) @ mj.Laplacian(), mj.Laplacian() @ mj.WeightedLaplacian(C)):
        want = back(mj.apply(op, mlp_xwt, X, backend=backend, method=method, route="directions"))
        got = back(mj.apply(op, mlp_xwt, X, backend=backend, method=method, route="composition"))
        np.testing.assert_allclose(got, want, **TOL)
    # the operators commute: Δ(tr(C ∇²f)) = tr(C ∇²(Δf))
    np.testing.assert_allclose(
        back(mj.apply(mj.WeightedLaplacian(C) @ mj.Laplacian(), mlp_xwt, X, backend=backend, method=method,
                      route="composition")),
        back(mj.apply(mj.Laplacian() @ mj.WeightedLaplacian(C), mlp_xwt, X, backend=backend, method=method,
                      route="composition")),
        **TOL,
    )  # fmt: skip


@pytest.mark.parametrize(("backend", "method"), BACKEND_METHODS)
def test_return_grad(backend, method):
    to, back = _framework(backend)
    X = to(POINTS)
    value, grad, result = (
        back(a) for a in mj.bilaplacian(products, X, backend=backend, method=method, route="composition",
                                        return_grad=True)
    )  # fmt: skip
    v0, g0, r0 = (
        back(a) for a in mj.bilaplacian(products, X, backend=backend, method=method, route="directions",
                                        return_grad=True)
    )  # fmt: skip
    assert value.shape == (3,) and grad.shape == (3, D) and result.shape == (3,)
    np.testing.assert_allclose(value, [products(p) for p in POINTS], **TOL)
    np.testing.assert_allclose(value, v0, **TOL)
    np.testing.assert_allclose(grad, g0, **TOL)
    np.testing.assert_allclose(result, r0, **TOL)


@pytest.mark.parametrize(("backend", "method"), BACKEND_METHODS)
def test_compiled_composition_equals_eager(backend, method):
    to, back = _framework(backend)
    X = to(POINTS)
    compiled = _within(mj.compile, BILAP, mlp_wx, X, backend=backend, method=method, route="composition")
    assert compiled.plan.route == "composition"
    want = back(mj.bilaplacian(mlp_wx, X, backend=backend, method=method, route="directions"))
    for scale in (1.0, 0.5, -1.3):
        Xs = to(POINTS * scale)
        eager = back(mj.apply(BILAP, mlp_wx, Xs, backend=backend, method=method, route="composition"))
        np.testing.assert_allclose(back(_within(compiled, Xs)), eager, **TOL)
    np.testing.assert_allclose(back(_within(compiled, X)), want, **TOL)
    with_grad = _within(
        mj.compile, mj.Bilaplacian(), mlp_wx, X, backend=backend, method=method, route="composition",
        return_grad=True,
    )  # fmt: skip
    value, grad, result = (back(a) for a in _within(with_grad, X))
    np.testing.assert_allclose(result, want, **TOL)
    np.testing.assert_allclose(value, [mlp_wx(p) for p in POINTS], **TOL)
    np.testing.assert_allclose(
        grad, back(mj.laplacian(mlp_wx, X, backend=backend, method=method, return_grad=True)[1]), **TOL
    )


# --- torch: training through the composed operator -----------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("method", ["collapsed", "standard", "nested"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_torch_parameter_gradients_through_the_composition(method, compiled):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6), torch.nn.Sigmoid(), torch.nn.Linear(6, 1)
    ).double()
    X = torch.asarray(POINTS, dtype=torch.float64)

    def grads(route):
        net.zero_grad()
        if compiled:
            op = mj.compile(BILAP, net, X, method=method, route=route)
            out = _within(op, X)
        else:
            out = mj.apply(BILAP, net, X, method=method, route=route)
        assert out.requires_grad
        loss = ((out - 1.0) ** 2).mean()
        loss.backward()
        assert net[0].weight.grad is not None and net[0].weight.grad.abs().sum() > 0
        # the last bias does not reach Δ²f: no gradient
        return out.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]

    out_c, g_c = grads("composition")
    out_d, g_d = grads("directions")
    torch.testing.assert_close(out_c, out_d, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_c, g_d, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.torch
def test_torch_composition_under_no_grad_keeps_no_graph():
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    X = torch.asarray(POINTS, dtype=torch.float64)
    with torch.no_grad():
        out = mj.apply(BILAP, net, X, route="composition")
    assert not out.requires_grad
    torch.testing.assert_close(out, mj.bilaplacian(net, X, route="directions").detach(), rtol=1e-10, atol=1e-10)


# --- torch: nested AD under composition, torch.func transforms of an operator -----------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_torch_nested_of_nested_is_exact(name):
    """``method="nested"`` inside ``method="nested"``: torch.func of torch.func (the inner capture steps out of the
    outer transforms; the outer differentiates the function directly)."""
    torch = pytest.importorskip("torch")
    f = PROGRAMS[name]
    X = torch.asarray(POINTS, dtype=torch.float64)
    want = mj.bilaplacian(f, X, method="nested", route="directions")
    got = mj.laplacian(lambda x: mj.laplacian(f, x, method="nested"), X, method="nested")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, mj.bilaplacian(f, X, route="directions"), rtol=1e-10, atol=1e-10)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["module", "mlp_Wx"])
def test_torch_nested_inside_a_captured_operator_is_exact_or_refused(name):
    """A collapsed/standard outer call captures its function, an inner nested call's torch.func transforms with
    it: exact where torch can trace them, else a clear error (never a wrong number)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    f = net if name == "module" else mlp_wx
    X = torch.asarray(POINTS, dtype=torch.float64)
    want = mj.bilaplacian(f, X, route="directions")
    for method in ("collapsed", "standard"):
        try:
            got = mj.laplacian(lambda x: mj.laplacian(f, x, method="nested"), X, method=method)
        except mj.BackendError as e:
            assert "method='nested'" in str(e) and "enclosing" in str(e), str(e)
            continue
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.torch
def test_torch_func_transforms_of_an_operator():
    """jacrev / vmap of ``mj.laplacian`` see its dependence on x (the capture steps out of the transforms)."""
    torch = pytest.importorskip("torch")
    from torch.func import jacrev, vmap

    X = torch.asarray(POINTS, dtype=torch.float64)
    for method in ("collapsed", "standard", "nested"):

        def lap(x, method=method):
            return mj.laplacian(mlp_wx, x, method=method)

        want = torch.stack([_autograd_grad(lap, x) for x in X])
        torch.testing.assert_close(torch.stack([jacrev(lap)(x) for x in X]), want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(vmap(lap)(X), mj.laplacian(mlp_wx, X, method=method), rtol=1e-10, atol=1e-10)


def _autograd_grad(fn, x):
    import torch

    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(fn(x), x)[0]


@pytest.mark.torch
def test_torch_batched_linalg_rules_in_strict_mode():
    """The jet program of a linear-algebra program holds batched solves and triangles, which the composition
    captures again: those (and user-level batched solves) have exact rules, no generic fallback."""
    torch = pytest.importorskip("torch")
    DT = torch.float64
    P = torch.asarray(_rng.normal(size=(8, D)) / 2, dtype=DT)
    Q = torch.asarray(_rng.normal(size=(12, D)) / 2, dtype=DT)

    def mats(x):
        a = (P @ x).reshape(2, 2, 2)
        return 3.0 * torch.eye(2, dtype=DT) + 0.5 * torch.tanh(a) + 0.2 * a * a

    programs = {
        "solve_vector": lambda x: torch.linalg.solve(mats(x)[0], torch.sin(x[:2])).pow(2).sum(),
        "batched_vector": lambda x: torch.linalg.solve(mats(x), torch.sin(Q[:4] @ x).reshape(2, 2)).pow(2).sum(),
        "batched_1d_rhs": lambda x: torch.linalg.solve(mats(x), torch.sin(x[:2])).pow(3).sum(),
        "broadcast_matrix": lambda x: torch.tanh(torch.linalg.solve(mats(x)[:1], (Q @ x).reshape(3, 2, 2))).sum(),
        "right": lambda x: torch.tanh(torch.linalg.solve(mats(x), (Q[:8] @ x).reshape(2, 2, 2), left=False)).sum(),
        "cholesky": lambda x: torch.sin(torch.linalg.cholesky(mats(x) @ mats(x).mT + torch.eye(2, dtype=DT))).sum(),
        "sort": lambda x: (torch.sort(torch.sin(x)).values * torch.arange(D, dtype=DT)).pow(2).sum(),
    }
    X = torch.asarray(POINTS[:2], dtype=DT)
    mj.set_strict(True)
    try:
        for name, f in programs.items():
            ref = torch.stack([_rev_lap(_rev_lap(f))(x) for x in X])
            for method in ("collapsed", "standard"):
                for route in ("composition", "directions"):
                    got = mj.bilaplacian(f, X, method=method, route=route)
                    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9, msg=f"{name} {method} {route}")
    finally:
        mj.set_strict(False)


def _rev_lap(f):
    """Δf by reverse mode only (torch's forward-mode formulas of solve are wrong beyond first order)."""
    import torch

    def lap(x):
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(x), x, create_graph=True)
        return sum(torch.autograd.grad(g[i], x, create_graph=True)[0][i] for i in range(x.shape[0]))

    return lap


# --- JAX: jit and grad -------------------------------------------------------------------------------------------


@pytest.mark.jax
@pytest.mark.parametrize("method", ["collapsed", "standard", "nested"])
def test_jax_composition_under_jit_and_grad(method):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    X = jnp.asarray(POINTS)
    params = (jnp.asarray(W1), jnp.asarray(B1), jnp.asarray(W2[0]))

    def net(p, x):
        w, b, v = p
        return jnp.sum(v * jnp.tanh(x @ w.T + b))

    want = mj.bilaplacian(lambda x: net(params, x), X, method=method, route="directions")
    jitted = jax.jit(lambda X: mj.apply(BILAP, lambda x: net(params, x), X, method=method, route="composition"))
    np.testing.assert_allclose(_within(jitted, X), want, **TOL)
    np.testing.assert_allclose(_within(jitted, X), want, **TOL)

    def loss(p, route):
        out = mj.bilaplacian(lambda x: net(p, x), X, method=method, route=route)
        return jnp.mean((out - 1.0) ** 2)

    g_comp = _within(jax.jit(jax.grad(lambda p: loss(p, "composition"))), params)
    g_dir = jax.jit(jax.grad(lambda p: loss(p, "directions")))(params)
    for a, b in zip(jax.tree.leaves(g_comp), jax.tree.leaves(g_dir), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


# --- randomised composition ----------------------------------------------------------------------------------------


@pytest.mark.numpy
def test_randomised_composition_is_unbiased():
    """Independent Rademacher directions per level: the mean over seeds is the exact Δ²f (4 standard errors)."""
    w, b, v = W1[:3, :3], B1[:3], W3[:3]

    def tiny(x):
        xp = array_namespace(x)
        return xp.sum(_c(x, v) * xp.tanh(_c(x, w) @ x + _c(x, b)))

    x = POINTS[0, :3]
    exact = float(mj.bilaplacian(tiny, x, backend="numpy", route="directions"))
    kw = dict(backend="numpy", samples=2, distribution="rademacher", route="composition")
    vals = np.array([float(mj.bilaplacian(tiny, x, seed=s, **kw)) for s in range(300)])
    se = vals.std(ddof=1) / np.sqrt(vals.size)
    assert vals.std() > 0  # really random
    assert abs(vals.mean() - exact) < 4 * se, (vals.mean(), exact, se)
    np.testing.assert_allclose(mj.bilaplacian(tiny, x, seed=7, **kw), vals[7], rtol=1e-12)  # reproducible


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend):
    to, _ = _framework(backend)
    X = to(POINTS)
    with pytest.raises(TypeError, match="@"):
        mj.Laplacian() @ (lambda x: x)
    with pytest.raises(TypeError, match="@"):
        (lambda x: x) @ mj.Laplacian()
    with pytest.raises(ValueError, match="route"):
        mj.bilaplacian(mlp_wx, X, backend=backend, route="nonsense")
    with pytest.raises(mj.PlanError, match="does not exist"):
        mj.apply(mj.Laplacian(), mlp_wx, X, backend=backend, route="composition")
    with pytest.raises(mj.PlanError, match="does not exist"):
        mj.compile(mj.Laplacian(), mlp_wx, X, backend=backend, route="composition")
