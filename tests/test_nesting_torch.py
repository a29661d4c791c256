"""Operators nest on torch: the jet program is a torch program, so ``Δ(Δf)`` is the engine applied to its own
output, and it equals ``Δ²f`` to round-off — under ``torch.no_grad()``, for parameter gradients, compiled."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.func import hessian  # noqa: E402

import multijet as mj  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::multijet.engine.GenericRuleWarning")

DT = torch.float64


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Sigmoid(), torch.nn.Linear(8, 1)
    ).double()


def _prog(x):  # not an MLP: products, division, exp/log, a reduction
    return x[0] * torch.exp(x[1]) / (1.0 + x[2] ** 2) + torch.log(1.0 + x @ x) * torch.sin(x).sum()


def _X(n=4):
    return torch.randn(n, 3, dtype=DT, generator=torch.Generator().manual_seed(1)) * 0.7


def _lap(f):
    return lambda x: torch.diagonal(hessian(f)(x), dim1=-2, dim2=-1).sum(-1)


def bilap_oracle(f, X):
    return torch.stack([_lap(_lap(f))(x) for x in X])


@pytest.mark.parametrize("fname", ["mlp", "program"])
def test_laplacian_of_laplacian_is_bilaplacian_under_no_grad(fname):
    f = _net() if fname == "mlp" else _prog
    X = _X()
    with torch.no_grad():
        nested = mj.laplacian(lambda x: mj.laplacian(f, x), X, backend="torch")
        direct = mj.bilaplacian(f, X, backend="torch")
    assert not nested.requires_grad
    torch.testing.assert_close(nested, direct, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(nested, bilap_oracle(f, X).detach(), rtol=1e-9, atol=1e-9)


def test_standard_inside_collapsed():
    X = _X(3)
    out = mj.laplacian(lambda x: mj.laplacian(_prog, x, method="standard"), X, backend="torch")
    torch.testing.assert_close(out, mj.bilaplacian(_prog, X), rtol=1e-10, atol=1e-10)


def _grads(net, loss_fn, X):
    net.zero_grad()
    loss_fn(X).mean().backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]


def test_parameter_gradient_of_nested_laplacian_matches_nested_autograd():
    net = _net()
    X = _X()
    ours = _grads(net, lambda X: mj.laplacian(lambda x: mj.laplacian(net, x), X, backend="torch"), X)
    ref = _grads(net, lambda X: bilap_oracle(net, X), X)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_compiled_nested_laplacian_trains_with_live_parameters():
    net = _net()
    X = _X()
    lap2 = mj.compile(mj.Laplacian(), lambda x: mj.laplacian(net, x), X, backend="torch")
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    before = lap2(X).detach().clone()
    for _ in range(2):
        opt.zero_grad()
        lap2(X).pow(2).mean().backward()
        opt.step()
    after = lap2(X)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, bilap_oracle(net, X), rtol=1e-9, atol=1e-10)
