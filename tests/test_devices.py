"""Inputs keep their device and dtype through every method; accelerator tests skip cleanly without one."""

from __future__ import annotations

import types

import numpy as np
import pytest

import multijet as mj
from multijet.backends.interop import interop
from multijet.timing import device_name


def _torch_net(torch, device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double().to(device)


def _check_torch_on(torch, device):
    net = _torch_net(torch, device)
    X = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    ref = torch.func.vmap(lambda x: torch.func.hessian(lambda y: net(y)[0])(x).trace())(X.cpu().to(device))
    for method in ("collapsed", "standard", "nested"):
        out = mj.laplacian(net, X, method=method)
        assert out.device == X.device and out.dtype == X.dtype, method
        torch.testing.assert_close(out[:, 0], ref, rtol=1e-10, atol=1e-12, msg=method)
    value, grad, lap = mj.compile(mj.Laplacian(), net, X, return_grad=True)(X)
    assert {value.device, grad.device, lap.device} == {X.device}
    est = mj.laplacian(net, X, samples=3, seed=0)
    assert est.device == X.device


@pytest.mark.torch
def test_torch_cpu_device_and_dtype_kept_through_every_method():
    torch = pytest.importorskip("torch")
    _check_torch_on(torch, torch.device("cpu"))


def _cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


@pytest.mark.torch
@pytest.mark.skipif(_cuda() is None, reason="no CUDA device visible (torch.cuda.is_available() is False)")
def test_torch_cuda_device_kept_and_named():  # pragma: no cover - needs a GPU
    torch = _cuda()
    _check_torch_on(torch, torch.device("cuda"))
    assert device_name(torch.zeros(1, device="cuda")).startswith("cuda: ")


def _jax_gpu():
    try:
        import jax
    except ImportError:
        return None
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


@pytest.mark.jax
@pytest.mark.skipif(_jax_gpu() is None, reason="no JAX GPU device visible (jax.devices('gpu') is empty)")
def test_jax_gpu_device_kept_and_named():  # pragma: no cover - needs a GPU
    import jax

    gpu = _jax_gpu()
    W = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    X = jax.device_put(np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32), gpu)
    out = mj.laplacian(lambda x: jax.numpy.tanh(W @ x).sum(), X)
    assert out.devices() == {gpu}
    assert device_name(X).startswith("gpu: ")


@pytest.mark.jax
def test_jax_result_on_the_input_device():
    jax = pytest.importorskip("jax")
    W = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    X = jax.device_put(np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32), jax.devices()[-1])
    for method in ("collapsed", "standard", "nested"):
        out = mj.laplacian(lambda x: jax.numpy.tanh(W @ x).sum(), X, method=method)
        assert out.devices() == {jax.devices()[-1]} and out.dtype == X.dtype, method


def test_device_names_of_accelerators_without_one():
    """The names autotune's cache key and `multijet info` use: CPU arrays give None (the CPU's name is used),
    other torch device types their type."""
    assert interop("torch").device_name(types.SimpleNamespace(device=types.SimpleNamespace(type="cpu"))) is None
    assert interop("torch").device_name(types.SimpleNamespace(device=types.SimpleNamespace(type="mps"))) == "mps"
    assert device_name(np.zeros(3)).startswith("cpu: ")
