"""PyTorch backend: every rule and every operator × method against nested torch.autograd (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from array_api_compat import array_namespace

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch.func import hessian, jacrev, vmap  # noqa: E402

import multijet as mj  # noqa: E402
from multijet.backends import torch as mjt  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::multijet.engine.GenericRuleWarning")

DT = torch.float64
METHODS = ["collapsed", "standard", "nested"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=_gen(seed), dtype=DT) * scale


# --- oracles: nested autograd ----------------------------------------------------------------------------


def hess_oracle(f, X):
    """(N, *out, D, D) Hessians by torch.func.hessian (forward-over-reverse)."""
    return torch.stack([hessian(f)(x) for x in X])  # a loop: vmap(hessian) of slogdet is wrong in torch 2.13


def lap_oracle(f, X):
    return torch.diagonal(hess_oracle(f, X), dim1=-2, dim2=-1).sum(-1)


def bilap_oracle(f, X):
    def lap(x):
        return torch.diagonal(hessian(f)(x), dim1=-2, dim2=-1).sum(-1)

    return torch.stack([torch.diagonal(hessian(lap)(x), dim1=-2, dim2=-1).sum(-1) for x in X])


def close(a, b, rtol=1e-9, atol=1e-10):
    assert isinstance(a, torch.Tensor), type(a)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --- one small program per op ----------------------------------------------------------------------------

D = 6
W1, B1 = _randn(5, D, seed=1, scale=0.5), _randn(5, seed=2, scale=0.1)
M33 = _randn(3, 3, seed=3, scale=0.5)
A22 = _randn(2, 2, seed=4)
SPD = torch.eye(3, dtype=DT) * 2.0


def _mk_modules():
    torch.manual_seed(0)
    mods = {
        "linear+tanh": torch.nn.Sequential(torch.nn.Linear(D, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)),
        "sigmoid": torch.nn.Sequential(torch.nn.Linear(D, 4), torch.nn.Sigmoid(), torch.nn.Linear(4, 1)),
        "softplus": torch.nn.Sequential(torch.nn.Linear(D, 4), torch.nn.Softplus(), torch.nn.Linear(4, 1)),
        "silu": torch.nn.Sequential(torch.nn.Linear(D, 4), torch.nn.SiLU(), torch.nn.Linear(4, 1)),
        "gelu": torch.nn.Sequential(torch.nn.Linear(D, 4), torch.nn.GELU(), torch.nn.Linear(4, 1)),
        "gelu_tanh": torch.nn.Sequential(
            torch.nn.Linear(D, 4), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(4, 1)
        ),
        "relu": torch.nn.Sequential(torch.nn.Linear(D, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1)),
        "elu": torch.nn.Sequential(torch.nn.Linear(D, 4), torch.nn.ELU(), torch.nn.Linear(4, 1)),
        "layernorm": torch.nn.Sequential(
            torch.nn.Linear(D, 4), torch.nn.LayerNorm(4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
        ),
    }
    for m in mods.values():
        m.double()
    conv1 = torch.nn.Conv1d(2, 3, kernel_size=2).double()
    conv2 = torch.nn.Conv2d(1, 2, kernel_size=2).double()
    mods["conv1d"] = lambda x: torch.tanh(conv1(x.reshape(2, 3))).sum()
    mods["conv2d"] = lambda x: torch.sin(conv2(x.reshape(1, 2, 3))).pow(2).sum()
    return mods


MODULES = _mk_modules()


def _loop(x):
    h = x[:3]
    for i in range(3):
        h = torch.tanh(M33 @ h + 0.1 * i) + h  # Python loop with a residual connection
    return h.sum()


PROGRAMS = {
    **MODULES,
    "mm": lambda x: torch.tanh(x.reshape(2, 3) @ M33).sum(),
    "matmul_vec": lambda x: torch.sin(torch.matmul(W1, x) + B1).sum(),
    "matmul_jets": lambda x: (x.reshape(2, 3) @ x.reshape(3, 2)).sum(),
    "addmm": lambda x: torch.cos(torch.addmm(B1[:2], x.reshape(2, 3), M33[:, :2])).sum(),
    "bmm": lambda x: torch.bmm(x.reshape(1, 2, 3), torch.exp(x).reshape(1, 3, 2)).sum(),
    "einsum": lambda x: torch.einsum("ij,jk,ik->", x.reshape(2, 3), M33, torch.tanh(x.reshape(2, 3))),
    "arith": lambda x: (x[0] * x[1] - x[2] / (2.0 + x[3] ** 2)) * 3.0 + 1.0 / (1.5 + torch.sin(x[4])) - x[5],
    "broadcast": lambda x: (x[:3, None] * x[None, 3:] + x[:3, None] - 2.0).pow(2).sum(),
    "pow": lambda x: ((x**2 + 1.0) ** 1.5).sum() + (x**3).sum() + (torch.exp(x) ** x).sum(),
    "sqrt_rsqrt": lambda x: (torch.sqrt(x**2 + 1.0) + torch.rsqrt(x**2 + 2.0)).sum(),
    "exp_log": lambda x: (torch.exp(0.3 * x) * torch.log(x**2 + 1.5)).sum(),
    "trig": lambda x: (torch.sin(x) * torch.cos(x[0]) + torch.tan(0.3 * x)).sum(),
    "inverse_trig": lambda x: (torch.asin(0.4 * torch.tanh(x)) + torch.atan(x)).sum(),
    "erf": lambda x: torch.erf(0.7 * x).sum(),
    "sum_mean": lambda x: torch.tanh(x.reshape(2, 3)).sum(0).pow(2).mean() + x.reshape(2, 3).mean(1).prod(),
    "prod": lambda x: torch.prod(torch.cos(x)),
    "cumsum": lambda x: torch.sin(torch.cumsum(x, 0)).sum(),
    "logsumexp": lambda x: torch.logsumexp(x.reshape(2, 3), dim=1).sum(),
    "softmax": lambda x: (torch.softmax(x, 0) * torch.arange(D, dtype=DT)).sum(),
    "log_softmax": lambda x: F.log_softmax(x, 0)[2],
    "vector_norm": lambda x: torch.linalg.vector_norm(x) + torch.linalg.vector_norm(x.reshape(2, 3), dim=1).sum(),
    "views": lambda x: torch.tanh(x.view(2, 3).transpose(0, 1).reshape(6).unsqueeze(0).squeeze(0)).pow(3).sum(),
    "permute": lambda x: (
        (x.reshape(1, 2, 3).permute(2, 0, 1) * torch.arange(6, dtype=DT).reshape(3, 1, 2)).pow(2).sum()
    ),
    "cat_stack": lambda x: (
        torch.tanh(torch.cat([x, x[:2] ** 2, torch.ones(2, dtype=DT)]) @ torch.arange(10, dtype=DT) / 10)
        + torch.stack([x[0], x[1] * x[2]]).prod()
    ),
    "index_slice_select": lambda x: (x[torch.tensor([0, 2, 2])] ** 2).sum() * x[1:5:2].sum() + x[3] * torch.sin(x[-1]),
    "expand": lambda x: (x[:3].reshape(3, 1).expand(3, 4) * torch.arange(4, dtype=DT)).pow(2).sum(),
    "where_clamp": lambda x: torch.where(x > 0, x**2, torch.sin(x)).sum() + torch.clamp(x, -0.5, 0.5).pow(2).sum(),
    "max_min": lambda x: torch.maximum(x, x**2 - 1).sum() + torch.minimum(x, 0.5 * x).pow(2).sum(),
    "sort": lambda x: (torch.sort(x).values * torch.arange(D, dtype=DT)).pow(2).sum(),
    "slogdet": lambda x: torch.linalg.slogdet(SPD + 0.3 * x[:3, None] * x[None, 3:] + 0.1 * M33)[1],
    "solve": lambda x: torch.linalg.solve(SPD + 0.2 * torch.diag(torch.sin(x[:3])), x[3:]).pow(2).sum(),
    "cholesky": lambda x: torch.linalg.cholesky(SPD + 0.2 * x[:3, None] * x[None, :3]).sum(),
    "loop": _loop,
    "vector_output": lambda x: torch.stack([torch.tanh(x).sum(), (x**2).prod()]),
}


@pytest.fixture(scope="module")
def X():
    return _randn(3, D, seed=7, scale=0.8)


@pytest.mark.parametrize("method", ["collapsed", "standard"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_op_laplacian(name, method, X):
    f = PROGRAMS[name]
    out = mj.laplacian(f, X, method=method, backend="torch")
    close(out, lap_oracle(f, X), rtol=1e-8, atol=1e-9)


BILAP_OPS = [
    "slogdet",
    "cholesky",
    "index_slice_select",
    "where_clamp",
    "linear+tanh",
    "arith",
    "exp_log",
    "pow",
    "sort",
    "solve",
    "softmax",
    "layernorm",
    "conv1d",
    "cat_stack",
    "prod",
]


def _manual_layernorm_net(net):
    """The same network with LayerNorm written out: torch 2.13's own 4th derivatives of native_layer_norm are
    wrong (nested autograd of nn.LayerNorm disagrees with itself), so the oracle differentiates this one."""
    lin1, ln, lin2 = net[0], net[1], net[3]

    def f(x):
        h = lin1(x)
        m = h.mean()
        v = ((h - m) ** 2).mean()
        return lin2(torch.tanh((h - m) / torch.sqrt(v + ln.eps) * ln.weight + ln.bias))

    return f


def bilap_oracle_rev(f, X):
    """Δ²f by four nested reverse passes: torch's forward-mode formulas of slogdet/solve are wrong beyond first
    order, which breaks the forward-over-reverse oracle (and torch's own hessian of these ops)."""
    return torch.stack([torch.einsum("...iijj->...", jacrev(jacrev(jacrev(jacrev(f))))(x)) for x in X])


@pytest.mark.parametrize("name", BILAP_OPS)
def test_op_bilaplacian(name):
    f = PROGRAMS[name]
    X = _randn(2, D, seed=11, scale=0.5)
    if name == "layernorm":
        ref = bilap_oracle(_manual_layernorm_net(f), X)
    elif name in ("slogdet", "solve"):
        ref = bilap_oracle_rev(f, X)
    else:
        ref = bilap_oracle(f, X)
    for method in ["collapsed", "standard"]:
        close(mj.bilaplacian(f, X, method=method, backend="torch"), ref, rtol=1e-7, atol=1e-8)


def test_generic_rule_matches_hand_written():
    """The generic rule (nested jvp) and the hand-written tanh rule agree at order 4."""
    from multijet.backends import torch_table as tt
    from multijet.engine import config

    f = PROGRAMS["linear+tanh"]
    X = _randn(2, D, seed=3)
    hand = mj.bilaplacian(f, X, backend="torch")
    saved = tt.TABLE.pop("tanh")
    try:
        with pytest.warns(UserWarning, match="generic nested-AD rule"):
            config._WARNED.discard(("torch", "aten.tanh.default"))
            gen = mj.bilaplacian(f, X, backend="torch")
    finally:
        tt.TABLE["tanh"] = saved
    close(gen, hand, rtol=1e-10, atol=1e-12)


# --- operators × methods ---------------------------------------------------------------------------------

NET = torch.nn.Sequential(
    torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 1)
).double()


def _prog(x):  # not an MLP: products, division, exp/log, powers, several inputs combined
    return torch.stack([x[0] * torch.exp(x[1]) / (1.0 + x[2] ** 2), torch.log(1.0 + x @ x) * torch.sin(x).sum()])


C3 = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 0.5]], dtype=DT)
SIGMA = torch.tensor([[1.0, 0.0], [0.5, 2.0], [0.0, -1.0]], dtype=DT)


def _weighted_oracle(f, X, C):
    return (hess_oracle(f, X) * C).sum((-1, -2))


OPERATORS = {
    "laplacian": (lambda f, X, **k: mj.laplacian(f, X, **k), lap_oracle),
    "weighted": (
        lambda f, X, **k: mj.weighted_laplacian(f, X, C3.numpy(), **k),
        lambda f, X: _weighted_oracle(f, X, C3),
    ),
    "factor": (
        lambda f, X, **k: mj.weighted_laplacian(f, X, factor=SIGMA.numpy(), **k),
        lambda f, X: _weighted_oracle(f, X, SIGMA @ SIGMA.T),
    ),
    "bilaplacian": (lambda f, X, **k: mj.bilaplacian(f, X, **k), bilap_oracle),
    "helmholtz": (
        lambda f, X, **k: mj.apply(mj.Laplacian() + 4.0 * mj.LinearOperator({(0, 0, 0): 1.0}), f, X, **k),
        lambda f, X: lap_oracle(f, X) + 4.0 * vmap(f)(X),
    ),
    "advection": (
        lambda f, X, **k: mj.apply(mj.LinearOperator({(1, 0, 0): 2.0, (0, 0, 1): -1.0}), f, X, **k),
        lambda f, X: (vmap(jacrev(f))(X) * torch.tensor([2.0, 0.0, -1.0], dtype=DT)).sum(-1),
    ),
    "mixed_third": (
        lambda f, X, **k: mj.apply(mj.LinearOperator({(2, 1, 0): 1.0, (0, 0, 3): 0.5}), f, X, **k),
        lambda f, X: (lambda T: T[..., 0, 0, 1] + 0.5 * T[..., 2, 2, 2])(vmap(jacrev(hessian(f)))(X)),
    ),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("op", sorted(OPERATORS))
@pytest.mark.parametrize("fname", ["mlp", "program"])
def test_operator_method(op, method, fname):
    f = NET if fname == "mlp" else _prog
    X = _randn(3, 3, seed=5, scale=0.7)
    call, oracle = OPERATORS[op]
    ref = oracle(f, X)
    out = call(f, X, backend="torch", method=method)
    close(out, ref, rtol=1e-8, atol=1e-9)
    single = call(f, X[1], backend="torch", method=method)  # unbatched x has no batch axis
    close(single, ref[1], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("op", ["laplacian", "bilaplacian", "weighted"])
def test_randomised_matches_nested_on_same_directions(op):
    """A seeded randomised plan gives the same directions to every method; torch.Generator accepted."""
    call = {"laplacian": mj.laplacian, "bilaplacian": mj.bilaplacian}.get(op)
    X = _randn(2, 3, seed=9)
    outs = {}
    for method in METHODS:
        kw = dict(backend="torch", method=method, samples=5, seed=torch.Generator().manual_seed(3))
        outs[method] = call(NET, X, **kw) if call else mj.weighted_laplacian(NET, X, C3.numpy(), **kw)
    close(outs["collapsed"], outs["nested"], rtol=1e-8, atol=1e-10)
    close(outs["standard"], outs["nested"], rtol=1e-8, atol=1e-10)
    again = mj.laplacian(NET, X, backend="torch", samples=5, seed=torch.Generator().manual_seed(3))
    if op == "laplacian":
        close(again, outs["collapsed"], rtol=0, atol=0)


def test_randomised_laplacian_unbiased():
    X = _randn(1, 3, seed=2)
    exact = mj.laplacian(NET, X, backend="torch")
    est = torch.stack([mj.laplacian(NET, X, backend="torch", samples=4, seed=s) for s in range(200)])
    se = est.std() / math.sqrt(len(est))
    assert abs(est.mean() - exact).item() < 4 * se.item() + 1e-12


def test_return_grad_one_pass():
    X = _randn(4, 3, seed=1)
    for method in METHODS:
        value, grad, lap = mj.laplacian(NET, X, backend="torch", method=method, return_grad=True)
        close(value, vmap(NET)(X))
        close(grad, vmap(jacrev(NET))(X))
        close(lap, lap_oracle(NET, X), rtol=1e-8, atol=1e-9)
    # a plan whose directions are not e_i needs the extra gradient jets
    value, grad, res = mj.weighted_laplacian(NET, X, C3.numpy(), backend="torch", return_grad=True)
    close(grad, vmap(jacrev(NET))(X))
    close(res, _weighted_oracle(NET, X, C3), rtol=1e-8, atol=1e-9)


# --- training, no_grad, compile, dtype --------------------------------------------------------------------


def _pinn_net():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)
    ).double()


@pytest.mark.parametrize("method", ["collapsed", "standard"])
def test_pinn_parameter_gradients_match_nested(method):
    net = _pinn_net()
    X = _randn(5, 2, seed=4)
    g = torch.sin(X[:, :1])

    def grads(lap_fn):
        net.zero_grad()
        loss = ((lap_fn(X) - g) ** 2).mean()
        loss.backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]

    ours = grads(lambda X: mj.laplacian(net, X, backend="torch", method=method))
    ref = grads(lambda X: lap_oracle(net, X))
    for a, b in zip(ours, ref, strict=True):
        close(a, b, rtol=1e-8, atol=1e-10)
    compiled = mj.compile(mj.Laplacian(), net, X, backend="torch", method=method)
    for a, b in zip(grads(compiled), ref, strict=True):
        close(a, b, rtol=1e-8, atol=1e-10)


def test_compile_reads_parameters_live_and_does_not_rebuild():
    net = _pinn_net()
    X = _randn(4, 2, seed=4)
    lap = mj.compile(mj.Laplacian(), net, X, backend="torch")
    prog = lap._fn.program(X)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = lap(X).detach().clone()
    for _ in range(3):
        opt.zero_grad()
        lap(X).pow(2).mean().backward()
        opt.step()
    after = lap(X)
    assert lap._fn.program(X) is prog  # same emitted program, no rebuild
    assert not torch.allclose(before, after)
    close(after, lap_oracle(net, X), rtol=1e-8, atol=1e-10)
    assert "matmul" in lap._fn.code and "def forward" in lap._fn.code
    X2 = _randn(7, 2, seed=5)  # another batch size reuses the program
    close(lap(X2), lap_oracle(net, X2), rtol=1e-8, atol=1e-10)
    assert lap._fn.program(X2) is prog


def test_no_grad_keeps_no_graph():
    net = _pinn_net()
    X = _randn(4, 2, seed=4)
    with torch.no_grad():
        out = mj.laplacian(net, X, backend="torch")
    assert out.grad_fn is None and not out.requires_grad
    close(out, lap_oracle(net, X).detach(), rtol=1e-8, atol=1e-10)


def test_float32_scaled_tolerance():
    net32 = _pinn_net().float()
    X = _randn(4, 2, seed=4)
    ref = lap_oracle(_pinn_net(), X).float()
    for method in METHODS:
        out = mj.laplacian(net32, X.float(), backend="torch", method=method)
        assert out.dtype == torch.float32 and out.device == X.device
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out = mj.bilaplacian(net32, X.float(), backend="torch")
    torch.testing.assert_close(out, bilap_oracle(_pinn_net(), X).float(), rtol=2e-3, atol=2e-4)


# --- agreement with the NumPy reference on an array-API program -----------------------------------------


def _array_api_program(x):
    from array_api_compat import array_namespace

    xp = array_namespace(x)
    h = xp.tanh(x * 0.7 + 0.1)
    return xp.sum(h * h) + xp.exp(-xp.sum(x * x) / 4) * xp.sin(x[..., 0]) + xp.sqrt(1.0 + x[..., 1] ** 2)


@pytest.mark.parametrize("op", ["laplacian", "bilaplacian"])
def test_agrees_with_numpy_backend(op):
    fn = getattr(mj, op)
    Xn = np.random.default_rng(0).normal(size=(4, 3))
    ref = fn(_array_api_program, Xn, backend="numpy")
    for method in METHODS:
        out = fn(_array_api_program, torch.tensor(Xn), backend="torch", method=method)
        np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-9, atol=1e-10)


# --- errors -----------------------------------------------------------------------------------------------


def test_unsupported_primitive_names_op_and_line():
    def f(x):
        y = torch.tanh(x)
        return torch.special.zeta(y + 3.0, 2.0).sum()  # torch has no derivative of zeta in x

    with pytest.raises(mj.UnsupportedPrimitiveError) as e:
        mj.laplacian(f, _randn(2, 3), backend="torch")
    msg = str(e.value)
    assert "'torch'" in msg and "test_torch_backend.py" in msg and "zeta" in msg


def test_data_dependent_control_flow_is_an_error_not_a_wrong_number():
    def f(x):
        if x.sum() > 0:
            return (x**2).sum()
        return (x**3).sum()

    with pytest.raises(mj.BackendError, match="torch.where"):
        mj.laplacian(f, _randn(2, 3), backend="torch")


def test_strict_mode_refuses_generic_rule():
    from multijet import engine

    engine.set_strict(True)
    try:
        with pytest.raises(mj.UnsupportedPrimitiveError, match="aten.prod"):
            mj.laplacian(PROGRAMS["prod"], _randn(2, D), backend="torch")
    finally:
        engine.set_strict(False)


def test_seed_from_generator():
    s1 = mjt.seed_from(torch.Generator().manual_seed(1))
    s2 = mjt.seed_from(torch.Generator().manual_seed(1))
    assert isinstance(s1, int) and s1 == s2
    with pytest.raises(TypeError):
        mjt.seed_from("nope")


def test_emitted_program_runs_under_torch_compile():
    net = _pinn_net()
    X = _randn(4, 2, seed=4)
    lap = mj.compile(mj.Laplacian(), net, X, backend="torch")
    gm = lap._fn.graph_module
    compiled = torch.compile(gm, backend="aot_eager")  # dynamo traces the emitted code (no C++ toolchain needed)
    close(compiled(X)[1], lap_oracle(net, X), rtol=1e-8, atol=1e-10)


def test_first_layer_coefficient_is_batch_independent():
    """With V = I the first layer's per-direction coefficient V Wᵀ = Wᵀ is Wᵀ itself: no matmul, not per point."""
    net = _pinn_net()
    X = _randn(4, 2, seed=4)
    gm = mj.compile(mj.Laplacian(), net, X, backend="torch")._fn.graph_module
    depends = {}
    for n in gm.graph.nodes:
        depends[n] = n.op == "placeholder" or any(depends[a] for a in n.all_input_nodes)
    mms = [n for n in gm.graph.nodes if n.target is torch.matmul]
    assert len(mms) == 1 + 3 + 2  # layer 1: x_0 only (x_1 = Wᵀ, S_2 = 0); layer 2: x_0, x_1, S_2; last: x_0, S_2
    assert all(depends[n] for n in mms)
    first = next(n for n in gm.graph.nodes if n.target is torch.linalg.vecdot)  # Σ_r (x_1)_r² of the first layer
    assert not depends[first.args[0]]  # x_1 of the first layer does not see the batch


# --- regressions: ops torch cannot differentiate, random ops, nested AD on the captured program ------------


def test_hypot_is_differentiated_not_zeroed():
    X = _randn(3, 3, seed=4)

    def f(x):
        return torch.hypot(x[0], x[1] + 2.0) * x[2]

    close(mj.laplacian(f, X), lap_oracle(f, X))


def test_prims_op_without_derivative_is_refused():
    with pytest.raises(mj.UnsupportedPrimitiveError, match="prims.cbrt"):
        mj.laplacian(lambda x: torch.ops.prims.cbrt(x).sum(), _randn(2, 3))


def test_dropout_in_train_mode_is_refused_and_eval_mode_runs():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.5), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    net = net.double()
    X = _randn(2, 3, seed=1)
    with pytest.raises(mj.UnsupportedPrimitiveError, match="bernoulli.*net.eval"):
        mj.laplacian(net, X)
    net.eval()
    close(mj.laplacian(net, X), lap_oracle(net, X))


def test_nested_is_exact_for_linalg_over_a_batch():
    A0 = _randn(3, 3, seed=7)

    def f(x):
        return torch.linalg.det(A0 + torch.diag(x**2))

    X = _randn(4, 3, seed=8)
    ref = lap_oracle(f, X)  # per point: vmap over points of torch's forward AD of det is wrong in torch 2.13
    for method in METHODS:
        close(mj.laplacian(f, X, method=method), ref)


def test_nested_bilaplacian_of_layer_norm():
    ln = torch.nn.LayerNorm(4).double()

    def f(x):
        return torch.tanh(ln(x)).sum() * x[0]

    def by_hand(x):  # the same function, layer norm written out: torch's own higher-order AD of it is wrong
        z = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + ln.eps)
        return torch.tanh(z * ln.weight + ln.bias).sum() * x[0]

    X = _randn(2, 4, seed=9)
    ref = bilap_oracle(by_hand, X)
    for method in METHODS:
        close(mj.bilaplacian(f, X, method=method), ref, rtol=1e-8, atol=1e-8)


def test_in_place_slice_assignment():
    def f(x):
        y = torch.zeros(4, dtype=x.dtype)
        y[1:3] = x[:2] ** 2
        y[0] = torch.sin(x[2])
        return (torch.tanh(y) * torch.arange(1.0, 5.0, dtype=x.dtype)).sum()

    X = _randn(3, 3, seed=10)
    ref = torch.stack([torch.trace(torch.autograd.functional.hessian(f, x)) for x in X])
    for method in ("collapsed", "standard"):
        close(mj.laplacian(f, X, method=method), ref)


def test_tuple_output_is_stacked_like_numpy():
    def f(x):
        xp = array_namespace(x)
        return xp.sum(x) ** 2, xp.prod(xp.sin(x))

    X = _randn(3, 3, seed=11)
    ref = mj.laplacian(f, X.numpy(), backend="numpy")
    for method in METHODS:
        out = mj.laplacian(f, X, method=method)
        assert out.shape == (3, 2)
        np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(mj.BackendError, match="share a shape"):
        mj.laplacian(lambda x: (x, x.sum()), X)


def test_compiled_shows_its_code():
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    c = mj.compile(mj.Laplacian(), net, _randn(2, 3), backend="torch")
    assert "tanh" in c.code and "def forward" in c.code
    assert isinstance(c.graph_module, torch.fx.GraphModule)


@pytest.mark.parametrize("method", METHODS)
def test_dtype_mismatch_with_parameters_is_named(method):
    net = torch.nn.Linear(3, 1).double()
    with pytest.raises(mj.BackendError, match="x is torch.float32 but the module's parameters are torch.float64"):
        mj.laplacian(net, torch.randn(2, 3), method=method)


def test_wrong_input_dimension_and_value_dependent_shapes_are_clear_errors():
    with pytest.raises(mj.BackendError, match=r"one point of shape \(3,\)"):
        mj.laplacian(torch.nn.Linear(5, 1).double(), _randn(2, 3))
    with pytest.raises(mj.BackendError, match="value-dependent shape"):
        mj.laplacian(lambda x: x[x > 0].sum() ** 2, _randn(2, 3))
    with pytest.raises(ValueError, match="empty batch"):
        mj.laplacian(lambda x: x.sum(), _randn(0, 3))


def test_register_elementwise_takes_an_aten_op_a_torch_function_or_a_name():
    # the Laplacian of a registered function on every backend: tests/test_recipes.py
    from multijet import derivatives
    from multijet.backends import torch_table

    def erfc_table(xp, x0, y0, K):
        return [-d for d in derivatives.TABLE["erf"](xp, x0, y0, K)]

    for native in (torch.ops.aten.erfc, torch.ops.aten.erfc.default, torch.special.erfc, "erfc"):
        with mj.register_elementwise("erfc_t", erfc_table, torch=native):
            assert any(k.startswith("erfc") for k in torch_table.TABLE)
        assert not any(k.startswith("erfc") for k in torch_table.TABLE)
    with pytest.raises(ValueError, match="not one ATen op"):
        mj.register_elementwise("silu_t", erfc_table, torch=torch.nn.functional.silu)
    with pytest.raises(ValueError, match="no op 'erfcc'"):
        mj.register_elementwise("erfc_t", erfc_table, torch="erfcc")
    assert "silu_t" not in derivatives.TABLE and "erfc_t" not in derivatives.TABLE
