"""torch.compile with multijet: a step calling a ``mj.compile``d operator compiles (inductor) and equals eager;
``mj.laplacian`` inside a compiled function runs eagerly (a graph break) instead of failing; no warnings."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import multijet as mj

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch
HERE = Path(__file__).parent


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).double()


def _grads(net, loss):
    net.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in net.parameters() if p.grad is not None]


def _check_step_with_a_compiled_operator():
    net = _net()
    X = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    op = mj.compile(mj.Laplacian(), net, X)

    def step(X):
        return (op(X) - 1.0).pow(2).mean()

    eager = step(X)
    g_eager = _grads(net, eager)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(step)  # inductor
        got = compiled(X)
        got_again = compiled(X)  # no recompilation needed, no warnings
    g_got = _grads(net, got)
    torch.testing.assert_close(got, eager, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_again, eager, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_got, g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    noisy = [str(w.message)[:120] for w in caught if "dynamo" in str(w.filename) or "inductor" in str(w.filename)]
    assert not noisy, noisy


def _check_mj_laplacian_inside_torch_compile():
    net = _net()
    X = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = mj.laplacian(net, X)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = torch.compile(lambda X: mj.laplacian(net, X).pow(2), backend="aot_eager")(X)
    torch.testing.assert_close(got, ref.pow(2), rtol=1e-10, atol=1e-12)
    noisy = [str(w.message)[:120] for w in caught if "dynamo" in str(w.filename)]
    assert not noisy, noisy


@pytest.mark.parametrize("check", ["_check_step_with_a_compiled_operator", "_check_mj_laplacian_inside_torch_compile"])
def test_torch_compile_in_a_subprocess_under_a_timeout(check):
    """Each check runs in a child process under a timeout: inductor compiles with worker processes and the
    compiled step is called repeatedly, so a stall fails the test instead of hanging the run."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_torch_compile as t; t.{check}(); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
