"""The training examples run and their loss falls (a few dozen steps; the README runs them longer)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.torch
def test_torch_pinn_loss_falls():
    pytest.importorskip("torch")
    losses = _load("poisson_pinn_torch").main(steps=60)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.jax
def test_jax_pinn_loss_falls():
    pytest.importorskip("jax")
    losses = _load("poisson_pinn_jax").main(steps=60)
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.jax
def test_vmc_example_finds_the_exact_ground_state_energy():
    pytest.importorskip("jax")
    vmc = _load("vmc_harmonic_jax")
    results = vmc.main(walkers=400, steps=60, alphas=(0.5, 0.7))
    mean, err = results[0.5]
    assert abs(mean - vmc.exact(0.5)) < 1e-10 and err < 1e-10  # an eigenstate: E_L is E₀ at every walker
    mean, err = results[0.7]
    assert mean > vmc.exact(0.5)  # the variational principle (E(0.7) − E₀ = 0.17, about 6 standard errors here)
    assert abs(mean - vmc.exact(0.7)) < 5 * err
