"""The JAX backend against nested JAX AD (float64): every construct, every operator × method, composition with
jit/vmap/grad, randomised estimators, return_grad, errors, and agreement with the NumPy reference."""

from __future__ import annotations

import functools
from functools import partial

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import multijet as mj  # noqa: E402
from multijet.backends import jax as mjax  # noqa: E402
from multijet.backends import jax_table  # noqa: E402

D = 3
X0 = jnp.array([0.31, -0.57, 0.83])
XB = jnp.array([[0.31, -0.57, 0.83], [-0.42, 0.25, 0.61]])
_r = np.random.default_rng(0)
W = jnp.asarray(_r.normal(size=(D, 4)) / 2)
B = jnp.asarray(_r.normal(size=4) / 2)
M = jnp.asarray(_r.normal(size=(D, D)) / 3)


# --- oracles ---------------------------------------------------------------------------------------------


def hess(f, x):
    return jax.jacfwd(jax.jacfwd(f))(x)


def _lap(f, x):
    return jnp.trace(hess(f, x), axis1=-2, axis2=-1)


def _bilap(f, x):
    T = jax.jacfwd(jax.jacfwd(jax.jacfwd(jax.jacfwd(f))))(x)
    return jnp.einsum("...iijj->...", T)


@functools.cache
def _jitted(oracle, f, batched):
    g = partial(oracle, f)
    return jax.jit(jax.vmap(g) if batched else g)


def lap_oracle(f, x):
    """tr ∇²f by jacfwd(jacfwd(f)), jitted and cached per function."""
    return _jitted(_lap, f, False)(x)


def bilap_oracle(f, x):
    """Σ_ij ∂_i²∂_j² f by four nested jacfwd, jitted and cached per function."""
    return _jitted(_bilap, f, False)(x)


def close(a, b, rtol=1e-9, atol=1e-9):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def _cvjp_sin():
    @jax.custom_vjp
    def h(x):
        return jnp.sin(x)

    h.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (g * jnp.cos(x),))
    return h


_csin = _cvjp_sin()


# --- constructs: each a small scalar function of x ∈ R³ ----------------------------------------------------

CONSTRUCTS = {
    "dot_general": lambda x: jnp.sum(jnp.tanh(x @ W + B)),
    "add_sub_mul_div_neg": lambda x: x[0] * x[1] - x[2] / (1.5 + x[0] * x[0]) + (-x[1]) * x[2] + 2.0 / (3.0 + x[2]),
    "integer_pow": lambda x: jnp.sum(x**3) + x[0] ** 4 * x[1],
    "pow": lambda x: jnp.sum((x + 2.0) ** 1.7) + (x[0] + 2.0) ** x[1] + 2.0 ** x[2],
    "square_sqrt_rsqrt": lambda x: jnp.sum(jnp.square(x)) * jnp.sqrt(jnp.sum(x * x) + 1.0) + lax.rsqrt(x[0] + 2.0),
    "exp_log_log1p_expm1": lambda x: jnp.exp(x[0]) * jnp.log(x[1] + 2.0) + jnp.log1p(x[2] ** 2) + jnp.sum(jnp.expm1(x)),
    "tanh_logistic_sin_cos": lambda x: jnp.sum(jnp.tanh(x) * jax.nn.sigmoid(x)) + jnp.sin(x[0]) * jnp.cos(x[1]),
    "tan_asin_atan_erf": lambda x: (
        jnp.tan(x[0]) + jnp.arcsin(x[1] / 2) + jnp.arctan(x[2]) + jnp.sum(jax.scipy.special.erf(x))
    ),
    "max_min_abs": lambda x: jnp.sum(jnp.maximum(x, 0.1) ** 2) + jnp.min(x * x) + jnp.sum(jnp.abs(x) ** 3),
    "select_where": lambda x: jnp.sum(jnp.where(x > 0, jnp.sin(x), x**3)) + lax.select(x[0] > 0, x[1] ** 2, x[2]),
    "clamp": lambda x: jnp.sum(jnp.clip(x**2 * 3, 0.5, 1.2) ** 2) + jnp.sum(lax.clamp(-0.2, x, 0.5) ** 3),
    "comparisons": lambda x: jnp.sum((x > 0) * x**2 + (x <= 0.5) * jnp.exp(x) + (x == x) * x**3),
    "broadcast_reshape_transpose": lambda x: jnp.sum(
        jnp.tanh(jnp.reshape(jnp.outer(x, x), (D * D,)).reshape(D, D).T @ x)
    ),
    "squeeze_expand_dims": lambda x: jnp.sum(jnp.squeeze(jnp.expand_dims(jnp.sin(x), 0), 0) * x[None, :]),
    "concatenate_slice": lambda x: jnp.sum(jnp.concatenate([x[:2] ** 2, jnp.sin(x[1:]), x[::2] * x[0]]) ** 2),
    "dynamic_slice_gather": lambda x: jnp.sum(lax.dynamic_slice(x * x, (1,), (2,)) * x[jnp.array([2, 0])]),
    "pad_rev": lambda x: jnp.sum(jnp.pad(x**2, 2) * jnp.arange(7.0)) + jnp.sum(x[::-1] * jnp.sin(x)),
    "iota_convert": lambda x: (
        jnp.sum(lax.iota(jnp.float32, D).astype(x.dtype) * x**2) + jnp.sum(x.astype(jnp.float32).astype(x.dtype) ** 3)
    ),
    "reduce_sum_max_prod": lambda x: jnp.sum(x**2) * jnp.max(jnp.sin(x)) + jnp.prod(x + 2.0),
    "cumsum_argmax": lambda x: jnp.sum(jnp.cumsum(x) ** 3) + x[jnp.argmax(x)] ** 2,
    "sort": lambda x: jnp.sum(jnp.sort(x**3 - x) * jnp.array([1.0, 2.0, 3.0])),
    "nested_jit": lambda x: jax.jit(lambda z: jnp.sum(jax.jit(jnp.tanh)(z) ** 2))(x * 2.0),
    "custom_jvp_nn": lambda x: (
        jnp.sum(jax.nn.softplus(x) + jax.nn.silu(x) + jax.nn.gelu(x))
        + jax.nn.logsumexp(x * x)
        + jnp.sum(jax.nn.relu(x) ** 3)
        + jnp.sum(jax.nn.elu(x) ** 2)
    ),
    "custom_vjp": lambda x: jnp.sum(_csin(x) ** 2 * x),
    "checkpoint": lambda x: jnp.sum(jax.checkpoint(lambda z: jnp.sin(z) * jnp.exp(z))(x) ** 2),
    "cond": lambda x: (
        lax.cond(x[0] > 0, lambda z: jnp.sum(jnp.sin(z) ** 2), lambda z: jnp.sum(z**3), x)
        + lax.cond(x[1] > 0, lambda z: z[0] ** 2, lambda z: jnp.cos(z[2]), x)
    ),
    "scan": lambda x: (
        lax.scan(lambda c, xi: (c * jnp.sin(xi) + xi**2, c * xi), 1.0, x)[0]
        + jnp.sum(lax.scan(lambda c, xi: (c + xi, jnp.tanh(c * xi)), 0.0, x)[1])
    ),
    "fori_loop": lambda x: jnp.sum(lax.fori_loop(0, 3, lambda i, c: jnp.tanh(c * 1.3 + x), jnp.zeros(D))),
    "while_loop": lambda x: jnp.sum(
        lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, jnp.sin(c[1]) + x), (0, x))[1]
    ),
    "slogdet": lambda x: jnp.linalg.slogdet(jnp.eye(D) * 2.0 + jnp.outer(x, x) + M)[1],
    "solve": lambda x: jnp.sum(jnp.linalg.solve(jnp.eye(D) * 2.0 + jnp.outer(x, jnp.sin(x)), x)),
    "cholesky": lambda x: jnp.sum(jnp.linalg.cholesky(jnp.eye(D) * 2.0 + jnp.outer(x, x))),
    "norm": lambda x: jnp.linalg.norm(x) ** 3 + jnp.linalg.norm(jnp.outer(x, x) + 1.0),
    "einsum": lambda x: jnp.einsum("i,ij,j->", x, M, jnp.tanh(x)) + jnp.einsum("i,i->", x, x) ** 2,
    "vector_output": lambda x: jnp.tanh(x @ W) * x[0],
}


# jax.jacfwd cannot differentiate a custom_vjp function: its oracle is the same function without custom_vjp
ORACLE_FN = {"custom_vjp": lambda x: jnp.sum(jnp.sin(x) ** 2 * x)}


@pytest.mark.parametrize("method", ["collapsed", "standard"])
@pytest.mark.parametrize("name", sorted(CONSTRUCTS))
def test_construct_laplacian(name, method):
    f = CONSTRUCTS[name]
    got = mj.laplacian(f, X0, backend="jax", method=method)
    close(got, lap_oracle(ORACLE_FN.get(name, f), X0))


@pytest.mark.parametrize(
    "name",
    [
        "dot_general",
        "add_sub_mul_div_neg",
        "pow",
        "tan_asin_atan_erf",
        "custom_jvp_nn",
        "scan",
        "cond",
        "while_loop",
        "sort",
        "slogdet",
        "solve",
        "vector_output",
    ],  # fmt: skip
)
def test_construct_bilaplacian(name):
    f = CONSTRUCTS[name]
    close(mj.bilaplacian(f, X0, backend="jax"), bilap_oracle(f, X0), rtol=1e-8, atol=1e-8)


_ELEMENTWISE = {
    "tanh": jnp.tanh, "logistic": jax.nn.sigmoid, "sin": jnp.sin, "cos": jnp.cos, "tan": jnp.tan,
    "asin": jnp.arcsin, "acos": jnp.arccos, "atan": jnp.arctan, "asinh": jnp.arcsinh,
    "acosh": lambda z: jnp.arccosh(z + 1.5),
    "atanh": jnp.arctanh, "sinh": jnp.sinh, "cosh": jnp.cosh, "exp": jnp.exp, "expm1": jnp.expm1,
    "log": lambda z: jnp.log(z + 1.0), "log1p": jnp.log1p, "sqrt": lambda z: jnp.sqrt(z + 1.0),
    "rsqrt": lambda z: lax.rsqrt(z + 1.0), "square": jnp.square, "abs": lambda z: jnp.abs(z - 0.05) ** 1,
    "erf": jax.scipy.special.erf, "integer_pow": lambda z: z**5, "pow": lambda z: (z + 1.0) ** 2.5,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_ELEMENTWISE))
def test_elementwise_rule_order4(name):
    """Each elementwise rule at order 4 (bi-Laplacian in D=2, which exercises every lower coefficient too)."""
    g = _ELEMENTWISE[name]
    x = jnp.array([0.21, -0.34])
    f = ELEMENTWISE_FNS.setdefault(name, lambda z: jnp.sum(g(z * 0.9 + 0.1) * jnp.array([1.0, 0.7])))
    close(mj.bilaplacian(f, x, backend="jax"), bilap_oracle(f, x), rtol=1e-8, atol=1e-8)


ELEMENTWISE_FNS: dict = {}


def test_seed_from_traced_key_is_a_clear_error():
    with pytest.raises(TypeError, match="traced jax.random key"):
        jax.jit(lambda k: mj.laplacian(f_mlp, X0, samples=2, seed=k))(jax.random.key(0))


# --- the generic rule: exact at any order ----------------------------------------------------------------


@pytest.mark.parametrize("prim", ["tanh", "mul", "dot_general", "exp", "div", "integer_pow", "reduce_max"])
def test_generic_rule_matches_hand_rules(prim, monkeypatch):
    """With a hand-written rule removed, the nested-jvp generic rule gives the same order-2 and order-4 results."""
    f = (
        CONSTRUCTS["dot_general"]
        if prim in ("tanh", "dot_general")
        else (lambda x: jnp.max(jnp.exp(x) / (2.0 + x**2)) * x[0] * x[1] + jnp.sum(jnp.tanh(x @ W) ** 3))
    )
    monkeypatch.delitem(mjax.RULES, prim)
    for method in ("collapsed", "standard"):
        close(mj.laplacian(f, X0, backend="jax", method=method), lap_oracle(f, X0))
    close(mj.bilaplacian(f, X0, backend="jax"), bilap_oracle(f, X0), rtol=1e-8, atol=1e-8)


def test_generic_rule_is_used_for_unregistered_primitives():
    def f(x):
        return jnp.sum(jnp.cumprod(jnp.tanh(x)) ** 2)

    assert "cumprod" not in mjax.RULES and "lu" not in mjax.RULES
    mjax.set_strict(True)
    try:
        with pytest.raises(mj.UnsupportedPrimitiveError, match="cumprod"):
            mj.laplacian(f, X0, backend="jax")
    finally:
        mjax.set_strict(False)
    close(mj.laplacian(f, X0, backend="jax"), lap_oracle(f, X0))


def test_unsupported_primitive_names_primitive_and_line():
    from jax.extend.core import Primitive

    p = Primitive("mj_test_opaque")
    p.def_impl(lambda a: np.sin(a))
    p.def_abstract_eval(lambda a: a)

    def f(x):
        return jnp.sum(p.bind(x * 2.0))  # the line the error must name

    with pytest.raises(mj.UnsupportedPrimitiveError) as info:
        mj.laplacian(f, X0, backend="jax")
    msg = str(info.value)
    assert "mj_test_opaque" in msg and "'jax'" in msg and "test_jax_backend.py" in msg and "register_rule" in msg


# --- every operator × method -------------------------------------------------------------------------------


def mlp(params, x):
    (W1, b1), (W2, b2), (W3, b3) = params
    h = jnp.tanh(x @ W1 + b1)
    h = jax.nn.sigmoid(h @ W2 + b2)
    return jnp.sum(jnp.sin(h @ W3 + b3))


def make_params(seed=0, dims=(D, 6, 5, 1)):
    r = np.random.default_rng(seed)
    return [
        (jnp.asarray(r.normal(size=(a, b)) / np.sqrt(a)), jnp.asarray(r.normal(size=b) * 0.3))
        for a, b in zip(dims[:-1], dims[1:], strict=True)
    ]


PARAMS = make_params()


def f_mlp(x):
    return mlp(PARAMS, x)


def f_prog(x):  # not an MLP: products, quotients, exp/log, powers, axis sums, a residual connection
    h = x + jnp.tanh(x @ M)
    return (
        jnp.sum(h * h[::-1]) / (1.0 + jnp.sum(x**2))
        + jnp.log(2.0 + jnp.exp(x[0]) * x[1] ** 2)
        + jnp.prod(h + 2.0) ** 0.5
    )


C = np.array([[2.0, 0.3, -0.1], [0.3, 1.0, 0.2], [-0.1, 0.2, 0.5]])
SIGMA = np.array([[1.0, 0.2], [0.0, 0.7], [0.3, -0.4]])


@functools.cache
def _batched_oracle(op_name, f):
    return jax.jit(jax.vmap(partial(_oracle, op_name, f)))


def _oracle(op_name, f, x):
    if op_name == "laplacian":
        return _lap(f, x)
    H = hess(f, x)
    if op_name == "weighted":
        return jnp.einsum("ij,...ij->...", C, H)
    if op_name == "factor":
        return jnp.einsum("ij,...ij->...", SIGMA @ SIGMA.T, H)
    if op_name == "bilaplacian":
        return _bilap(f, x)
    if op_name == "mixed":  # Δf + ∂₀f − 2 ∂₀∂₁f + 0.5 f + ∂₀³f
        g = jax.jacfwd(f)(x)
        T3 = jax.jacfwd(jax.jacfwd(jax.jacfwd(f)))(x)
        return jnp.trace(H) + g[0] - 2 * H[0, 1] + 0.5 * f(x) + T3[0, 0, 0]
    raise AssertionError(op_name)


OPS = {
    "laplacian": lambda f, x, **k: mj.laplacian(f, x, **k),
    "weighted": lambda f, x, **k: mj.weighted_laplacian(f, x, C, **k),
    "factor": lambda f, x, **k: mj.weighted_laplacian(f, x, factor=SIGMA, **k),
    "bilaplacian": lambda f, x, **k: mj.bilaplacian(f, x, **k),
    "mixed": lambda f, x, **k: mj.apply(
        mj.Laplacian() + mj.LinearOperator({(1, 0, 0): 1.0, (1, 1, 0): -2.0, (0, 0, 0): 0.5, (3, 0, 0): 1.0}), f, x, **k
    ),
}


@pytest.mark.parametrize("method", ["collapsed", "standard", "nested"])
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("prog", ["mlp", "prog"])
def test_operator_method(op, method, prog):
    f = f_mlp if prog == "mlp" else f_prog
    got = OPS[op](f, XB, backend="jax", method=method)
    want = _batched_oracle(op, f)(XB)
    assert isinstance(got, jax.Array) and got.dtype == jnp.float64 and got.shape == (2,)
    close(got, want, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("form", ["x@W", "W@x", "jit(x@W)", "x@x-matrix", "einsum"])
def test_identity_seed_paths(form, monkeypatch):
    """The symbolic input seed I (a dot with a constant needs no matmul) against nested AD, and the seed is
    really used: the identity dot path runs for the first layer."""
    fs = {
        "x@W": lambda x: jnp.sum(jnp.tanh(x @ W) ** 2),
        "W@x": lambda x: jnp.sum(jnp.tanh(W.T @ x) ** 2),
        "jit(x@W)": jax.jit(lambda x: jnp.sum(jnp.sin(x @ W))),
        "x@x-matrix": lambda x: jnp.tanh(x @ (M + jnp.outer(x, x)) @ x),
        "einsum": lambda x: jnp.einsum("i,ij,j->", x, M, x) ** 2,
    }
    f = fs[form]
    calls = []
    orig = jax_table._dot_identity
    monkeypatch.setattr(jax_table, "_dot_identity", lambda *a: calls.append(1) or orig(*a))
    mjax._RUNNERS.clear()
    for method in ("collapsed", "standard"):
        close(mj.laplacian(f, XB, backend="jax", method=method), _jitted(_lap, f, True)(XB))
    close(mj.bilaplacian(f, XB, backend="jax"), _jitted(_bilap, f, True)(XB), rtol=1e-8, atol=1e-8)
    if form in ("x@W", "W@x", "jit(x@W)"):
        assert calls


def test_single_point_and_float32():
    got = mj.laplacian(f_mlp, X0)  # backend inferred from the JAX array
    assert got.shape == () and isinstance(got, jax.Array)
    close(got, lap_oracle(f_mlp, X0))
    x32 = XB.astype(jnp.float32)
    params32 = jax.tree.map(lambda a: a.astype(jnp.float32), PARAMS)
    got32 = mj.laplacian(lambda x: mlp(params32, x), x32)
    assert got32.dtype == jnp.float32
    close(got32, _jitted(_lap, f_mlp, True)(XB), rtol=2e-4, atol=2e-4)


# --- return_grad --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["collapsed", "standard", "nested"])
def test_return_grad(method):
    value, grad, lap = mj.laplacian(f_prog, XB, backend="jax", method=method, return_grad=True)
    close(value, jax.vmap(f_prog)(XB))
    close(grad, jax.vmap(jax.grad(f_prog))(XB))
    close(lap, _jitted(_lap, f_prog, True)(XB))
    # vector output: grad is (N, *out, D)
    f = CONSTRUCTS["vector_output"]
    value, grad, lap = mj.laplacian(f, XB, backend="jax", method=method, return_grad=True)
    assert grad.shape == (2, 4, D)
    close(grad, jax.vmap(jax.jacfwd(f))(XB))
    close(lap, _jitted(_lap, f, True)(XB))


def test_return_grad_with_non_identity_plan():
    value, grad, res = mj.weighted_laplacian(f_prog, XB, C, backend="jax", return_grad=True)
    close(grad, jax.vmap(jax.grad(f_prog))(XB))
    close(res, _batched_oracle("weighted", f_prog)(XB))


# --- composition: jit, vmap, grad, compile ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["collapsed", "standard", "nested"])
def test_jit_and_vmap(method):
    want = _jitted(_lap, f_prog, True)(XB)
    close(jax.jit(lambda X: mj.laplacian(f_prog, X, backend="jax", method=method))(XB), want)
    close(jax.vmap(lambda x: mj.laplacian(f_prog, x, backend="jax", method=method))(XB), want)
    close(
        jax.jit(jax.vmap(lambda x: mj.bilaplacian(f_prog, x, backend="jax", method=method)))(XB),
        _jitted(_bilap, f_prog, True)(XB),
        rtol=1e-8,
        atol=1e-8,
    )


@pytest.mark.parametrize("method", ["collapsed", "standard"])
def test_grad_wrt_closed_over_parameters(method):
    """PINN-style loss: the parameter gradient through multijet equals nested AD's."""

    def loss_mj(params):
        lap = mj.laplacian(lambda x: mlp(params, x), XB, backend="jax", method=method)
        return jnp.sum((lap - 1.0) ** 2)

    def loss_ref(params):
        lap = jax.vmap(lambda x: jnp.trace(jax.hessian(lambda z: mlp(params, z))(x)))(XB)
        return jnp.sum((lap - 1.0) ** 2)

    g_mj = jax.jit(jax.grad(loss_mj))(PARAMS)
    g_ref = jax.jit(jax.grad(loss_ref))(PARAMS)
    for a, b in zip(jax.tree.leaves(g_mj), jax.tree.leaves(g_ref), strict=True):
        close(a, b, rtol=1e-8, atol=1e-10)


def test_grad_vmc_kinetic_energy():
    """VMC: value, gradient and Laplacian from one pass, differentiated w.r.t. the parameters."""

    def e_kin(params, fn):
        def logpsi(x):
            return mlp(params, x)

        v, g, lap = fn(logpsi)
        return jnp.mean(-0.5 * (lap + jnp.sum(g**2, axis=-1)))

    def via_mj(logpsi):
        return mj.laplacian(logpsi, XB, backend="jax", return_grad=True)

    def via_ad(logpsi):
        return (
            jax.vmap(logpsi)(XB),
            jax.vmap(jax.grad(logpsi))(XB),
            jax.vmap(lambda x: jnp.trace(jax.hessian(logpsi)(x)))(XB),
        )

    g1 = jax.jit(jax.grad(lambda p: e_kin(p, via_mj)))(PARAMS)
    g2 = jax.jit(jax.grad(lambda p: e_kin(p, via_ad)))(PARAMS)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        close(a, b, rtol=1e-8, atol=1e-10)


def test_compile():
    comp = mj.compile(mj.Laplacian(), f_mlp, XB, backend="jax")
    close(comp(XB), _jitted(_lap, f_mlp, True)(XB))
    close(comp(X0), lap_oracle(f_mlp, X0))
    comp2 = mj.compile(mj.Bilaplacian(), f_prog, XB, backend="jax", return_grad=True)
    v, g, r = comp2(XB)
    close(r, _jitted(_bilap, f_prog, True)(XB), rtol=1e-8, atol=1e-8)
    close(g, jax.vmap(jax.grad(f_prog))(XB))
    with pytest.raises(ValueError, match="D=3"):
        comp(jnp.ones((2, 4)))


# --- randomised estimators ------------------------------------------------------------------------------------


def test_randomised_reproducible_from_seed_and_key():
    a = mj.laplacian(f_prog, XB, backend="jax", samples=4, seed=3)
    b = mj.laplacian(f_prog, XB, backend="jax", samples=4, seed=3)
    c = mj.laplacian(f_prog, XB, backend="jax", samples=4, seed=4)
    close(a, b, rtol=0, atol=0)
    assert not np.allclose(a, c)
    k1 = mj.laplacian(f_prog, XB, backend="jax", samples=4, seed=jax.random.key(7))
    k2 = mj.laplacian(f_prog, XB, backend="jax", samples=4, seed=jax.random.key(7))
    k3 = mj.laplacian(f_prog, XB, backend="jax", samples=4, seed=jax.random.PRNGKey(8))
    close(k1, k2, rtol=0, atol=0)
    assert not np.allclose(k1, k3)
    # the estimate equals the weighted sum of per-direction second derivatives along the planned directions
    p = mj.plan(mj.Laplacian(), D, samples=4, seed=3)
    V, w = p.groups[0].directions, p.groups[0].weights
    H = jax.vmap(lambda x: hess(f_prog, x))(XB)
    close(a, jnp.einsum("r,ri,nij,rj->n", w, V, H, V))


@pytest.mark.parametrize(
    "op,dist,samples,n_seeds",
    [("laplacian", "rademacher", 2, 300), ("laplacian", "gaussian", 2, 300), ("bilaplacian", "gaussian", 4, 200)],
)
def test_randomised_unbiased(op, dist, samples, n_seeds):
    f = f_prog
    exact = _batched_oracle(op, f)(X0[None])[0]
    fn = mj.laplacian if op == "laplacian" else mj.bilaplacian
    ests = np.array(
        [float(fn(f, X0, backend="jax", samples=samples, distribution=dist, seed=s)) for s in range(n_seeds)]
    )
    se = ests.std(ddof=1) / np.sqrt(n_seeds)
    assert se > 0
    assert abs(ests.mean() - float(exact)) < 4 * se, (ests.mean(), float(exact), se)


@pytest.mark.parametrize("method", ["collapsed", "standard", "nested"])
def test_randomised_methods_agree(method):
    want = mj.laplacian(f_mlp, XB, backend="jax", samples=5, seed=11, method="nested")
    close(mj.laplacian(f_mlp, XB, backend="jax", samples=5, seed=11, method=method), want)
    want4 = mj.bilaplacian(f_mlp, XB, backend="jax", samples=3, seed=2, method="nested")
    close(mj.bilaplacian(f_mlp, XB, backend="jax", samples=3, seed=2, method=method), want4, rtol=1e-8, atol=1e-8)


# --- agreement with the NumPy reference on array-API programs ---------------------------------------------------


def _array_api_program(x):
    from array_api_compat import array_namespace

    xp = array_namespace(x)
    Wc = xp.asarray(np.asarray(W), dtype=x.dtype)
    h = xp.tanh(x @ Wc + 0.1)
    r2 = xp.sum(x * x)
    return xp.sum(xp.sin(h) * h) + xp.exp(-r2 / 2) + xp.log1p(x[0] ** 2) * x[1] + (r2 + 1.0) ** 1.5


@pytest.mark.parametrize("op", ["laplacian", "weighted", "bilaplacian", "mixed"])
def test_agrees_with_numpy_backend(op):
    Xn = np.asarray(XB)
    got_np = OPS[op](_array_api_program, Xn, backend="numpy")
    got_jax = OPS[op](_array_api_program, XB, backend="jax")
    assert isinstance(got_np, np.ndarray) and isinstance(got_jax, jax.Array)
    close(got_jax, got_np, rtol=1e-10, atol=1e-10)


def test_agrees_with_numpy_on_shared_programs():
    programs = pytest.importorskip("programs")
    names = [
        n
        for n in dir(programs)
        if not n.startswith("_")
        and callable(getattr(programs, n))
        and getattr(getattr(programs, n), "__module__", "") == programs.__name__
        and n != "array_namespace"
    ]
    checked = 0
    for n in names:
        fn = getattr(programs, n)
        x = np.asarray(XB[:, : getattr(programs, "D", D)])
        try:
            want = mj.laplacian(fn, x, backend="numpy")
        except Exception:
            continue  # not a program of one point (a helper), or not one the NumPy tracer supports
        close(mj.laplacian(fn, jnp.asarray(x), backend="jax"), want, rtol=1e-9, atol=1e-9)
        checked += 1
    assert checked >= 3


# --- errors and plumbing ---------------------------------------------------------------------------------


def test_errors():
    pair = mj.laplacian(lambda x: (x[0] ** 3, x[1] * x[2] ** 2), X0, backend="jax")  # stacked, as on every backend
    np.testing.assert_allclose(pair, [6 * X0[0], 2 * X0[1]], rtol=1e-12)
    with pytest.raises(TypeError, match="dict"):
        mj.laplacian(lambda x: {"a": x[0], "b": x[1]}, X0, backend="jax")
    with pytest.raises(ValueError, match="nested"):
        mj.laplacian(f_mlp, X0, backend="jax", method="bogus")


def test_constant_and_linear_functions():
    close(mj.laplacian(lambda x: jnp.sum(x) * 2.0, XB, backend="jax"), jnp.zeros(2))
    close(mj.laplacian(lambda x: jnp.asarray(3.0), XB, backend="jax"), jnp.zeros(2))
    close(mj.bilaplacian(lambda x: jnp.sum(x**2), XB, backend="jax"), jnp.zeros(2))


def test_import_multijet_does_not_import_jax():
    import subprocess
    import sys

    code = "import sys, multijet; assert 'jax' not in sys.modules, 'jax imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_rule_kinds_cover_the_core_primitives():
    kinds = [("dot_general", "bilinear"), ("mul", "bilinear"), ("tanh", "elementwise"), ("reshape", "linear"),
             ("gather", "linear"), ("scan", "scan"), ("jit", "call"), ("max", "selection"),
             ("add", "sum"), ("div", "divide")]  # fmt: skip
    for name, kind in kinds:
        assert mjax.KINDS[name] == kind


# --- regressions: custom_jvp honoured, complex intermediates, no-reverse-mode programs, clear errors --------


@jax.custom_jvp
def _fixed_point(x):  # three iterations of y = cos(y)/2 + x; the jvp rule is the implicit-function one
    return lax.fori_loop(0, 3, lambda i, y: 0.5 * jnp.cos(y) + x, x)


@_fixed_point.defjvp
def _fixed_point_jvp(primals, tangents):
    y = _fixed_point(primals[0])
    return y, tangents[0] / (1 + 0.5 * jnp.sin(y))


@pytest.mark.parametrize("method", ["collapsed", "standard", "nested"])
def test_custom_jvp_rule_is_used_like_nested_ad(method):
    def f(x):
        return jnp.sum(_fixed_point(x) ** 2)

    np.testing.assert_allclose(mj.laplacian(f, XB, method=method), jax.vmap(partial(_lap, f))(XB), rtol=1e-10)
    np.testing.assert_allclose(mj.bilaplacian(f, X0, method=method), _lap(partial(_lap, f), X0), rtol=1e-9)


def test_custom_jvp_gradient_matches_jax_grad():
    def f(x):
        return jnp.sum(_fixed_point(x) ** 2) * x[0]

    _, grad, lap = mj.laplacian(f, X0, return_grad=True)
    np.testing.assert_allclose(grad, jax.grad(f)(X0), rtol=1e-12)
    np.testing.assert_allclose(lap, _lap(f, X0), rtol=1e-10)


def test_jax_own_custom_jvp_functions_use_the_fast_body_path():
    def f(x):
        return jnp.sum(jax.nn.softplus(x) * jax.nn.relu(x - 0.1)) * x[1]

    jaxpr = jax.make_jaxpr(f)(X0).jaxpr
    calls = [e for e in jaxpr.eqns if e.primitive.name == "custom_jvp_call"]
    assert calls and all(jax_table.defined_in_jax(e) for e in calls)
    np.testing.assert_allclose(mj.bilaplacian(f, XB), jax.vmap(partial(_lap, partial(_lap, f)))(XB), rtol=1e-9)


@pytest.mark.parametrize(
    "f",
    [
        lambda x: jnp.abs(x[0] + 1j * x[1]) ** 2,
        lambda x: jnp.abs(x[0] + 1j * x[1]) * x[2],
        lambda x: jnp.sum(jnp.abs(jnp.fft.fft(x**2)) ** 2),
    ],
)
def test_complex_intermediates(f):
    np.testing.assert_allclose(mj.laplacian(f, XB), jax.vmap(partial(_lap, f))(XB), rtol=1e-10, atol=1e-12)


def test_nested_method_without_reverse_mode():
    def f(x):
        return jnp.sum(lax.while_loop(lambda s: s[0] < 3, lambda s: (s[0] + 1, jnp.sin(s[1]) * x), (0, x))[1])

    ref = jax.vmap(partial(_lap, f))(XB)
    _, grad, lap = mj.laplacian(f, XB, method="nested", return_grad=True)
    np.testing.assert_allclose(lap, ref, rtol=1e-10)
    np.testing.assert_allclose(grad, jax.vmap(jax.jacfwd(f))(XB), rtol=1e-12)


def test_primitive_without_derivative_is_named():
    def f(x):
        return jnp.sum(jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x) ** 2)

    with pytest.raises(mj.UnsupportedPrimitiveError, match="pure_callback.*test_jax_backend.py"):
        mj.laplacian(f, X0)


def test_operator_scaled_by_a_jax_scalar_and_traced_coefficients_are_refused():
    f = partial(_poly)
    np.testing.assert_allclose(
        mj.apply(jnp.array(2.0) ** 2 * mj.Laplacian(), f, X0), 4 * mj.laplacian(f, X0), rtol=1e-12
    )
    with pytest.raises(TypeError, match="concrete numbers"):
        jax.jit(lambda k: mj.apply(k * mj.Laplacian(), f, X0))(2.0)
    with pytest.raises(TypeError, match="concrete numbers"):
        jax.jit(lambda C: mj.weighted_laplacian(f, X0, C))(jnp.eye(D))


def _poly(x):
    return jnp.sum(x**3) * x[0]
