"""Train a small Poisson PINN with multijet's collapsed Laplacian on the PyTorch backend.

    −Δu = f on (0, 1)², u = 0 on the boundary, with f = 2π² sin(πx) sin(πy) (exact u = sin(πx) sin(πy)).

The operator is compiled once (`mj.compile`); every step reads the network's parameters live and
backpropagates through the emitted jet program. Run: python examples/poisson_pinn_torch.py [--steps 300]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import multijet as mj


def main(steps: int = 300, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    dtype = torch.float64
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
    ).to(dtype)
    interior = torch.rand(256, 2, dtype=dtype)
    t = torch.rand(64, 1, dtype=dtype)
    zeros, ones = torch.zeros_like(t), torch.ones_like(t)
    boundary = torch.cat([torch.cat(p, 1) for p in [(t, zeros), (t, ones), (zeros, t), (ones, t)]])
    rhs = 2 * math.pi**2 * torch.sin(math.pi * interior[:, :1]) * torch.sin(math.pi * interior[:, 1:])

    laplacian = mj.compile(mj.Laplacian(), net, interior, backend="torch")  # traced and planned once
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps + 1):
        opt.zero_grad()
        residual = -laplacian(interior) - rhs
        loss = residual.pow(2).mean() + 10 * net(boundary).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"step {step:4d}  loss {loss.item():.4e}")
    grid = torch.rand(1000, 2, dtype=dtype)
    exact = torch.sin(math.pi * grid[:, :1]) * torch.sin(math.pi * grid[:, 1:])
    with torch.no_grad():
        err = (net(grid) - exact).abs().max().item()
    print(
        f"{steps} steps in {time.perf_counter() - t0:.1f} s; loss {losses[0]:.3e} -> {losses[-1]:.3e}; "
        f"max |u - u*| = {err:.3e}"
    )
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    main(args.steps)
