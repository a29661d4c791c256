"""``torch.func`` transforms over module parameters of a function that calls multijet (torch backend).

``f`` closes over the transform's tensors (``functional_call(net, params, (x,))``); the capture traces with
plain stand-ins and the emitted program reads the transform's tensors, so the transform sees every op.
Checked in float64 against ``method="nested"`` differentiated by ordinary autograd.
"""

import pytest

torch = pytest.importorskip("torch")
import multijet as mj  # noqa: E402

D = 3


@pytest.fixture
def setup():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(D, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    X = torch.randn(4, D, dtype=torch.float64)
    params = {k: v.detach() for k, v in net.named_parameters()}
    return net, X, params


def _f(net, p):
    return lambda x: torch.func.functional_call(net, p, (x,)).squeeze(-1)


def _autograd_reference(net, X, params, op):
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss = op(_f(net, p), X, "nested").pow(2).mean()
    g = torch.autograd.grad(loss, list(p.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if gi is None else gi for (k, v), gi in zip(p.items(), g, strict=True)}


OPS = {
    "laplacian": lambda f, X, m: mj.laplacian(f, X, method=m),
    "bilaplacian": lambda f, X, m: mj.bilaplacian(f, X, method=m),
    "laplacian of laplacian": lambda f, X, m: mj.laplacian(lambda x: mj.laplacian(f, x, method=m), X, method=m),
}


@pytest.mark.parametrize("method", ["collapsed", "standard"])
@pytest.mark.parametrize("op", list(OPS))
def test_func_grad_over_parameters(setup, op, method):
    net, X, params = setup
    ref = _autograd_reference(net, X, params, OPS[op])
    g = torch.func.grad(lambda p: OPS[op](_f(net, p), X, method).pow(2).mean())(params)
    for k in params:
        torch.testing.assert_close(g[k], ref[k], rtol=1e-10, atol=1e-12)


def test_func_jacrev_and_vmap_over_parameters(setup):
    net, X, params = setup

    def lap(p, method):
        return mj.laplacian(_f(net, p), X, method=method)

    J = torch.func.jacrev(lambda p: lap(p, "collapsed"))(params)
    J_ref = torch.func.jacrev(lambda p: lap(p, "nested"))(params)
    for k in params:
        torch.testing.assert_close(J[k], J_ref[k], rtol=1e-10, atol=1e-12)
    ensemble = {k: torch.stack([v, 2 * v]) for k, v in params.items()}
    out = torch.func.vmap(lambda p: lap(p, "collapsed"))(ensemble)
    ref = torch.stack([lap({k: v[i] for k, v in ensemble.items()}, "nested") for i in range(2)])
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
