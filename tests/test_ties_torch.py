"""Exact ties and kinks on torch: collapsed = standard = torch's own nested AD of the original f (float64).

Away from ties every selection follows its chosen operand; at an exact tie torch's AD has a convention per op
(maximum/minimum and max-reductions split ½–½, clamp keeps x on the boundary, hardtanh gives nobody the
derivative there, relu/abs give 0 at 0, leaky_relu the slope, max.dim/sort follow the returned indices).
The programs put the op's operand through ``u = x² − ¼`` (exact in binary at x = ±½), so that its second
Taylor coefficient is non-zero and the tie's weight shows up in the Laplacian.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch.func import hessian  # noqa: E402

import multijet as mj  # noqa: E402

DT = torch.float64
METHODS = ["collapsed", "standard", "nested"]


def _t(*v):
    return torch.tensor(v, dtype=DT)


def lap_oracle(f, X):
    return torch.stack([torch.diagonal(hessian(f)(x), dim1=-2, dim2=-1).sum(-1) for x in X])


def bilap_oracle(f, X):
    def lap(x):
        return torch.diagonal(hessian(f)(x), dim1=-2, dim2=-1).sum(-1)

    return torch.stack([torch.diagonal(hessian(lap)(x), dim1=-2, dim2=-1).sum(-1) for x in X])


def _u(x):
    return x * x - 0.25  # 0 at x = ±0.5, with u_2 = 2 per unit direction


def _q(y):
    return (y + y**2).sum()  # sees both s and s²


C = _t(0.0)
LO, HI = _t(-0.2, 0.0, 0.1), _t(0.0, 0.3, 0.0)

PROGRAMS = {
    "maximum_const": lambda x: _q(torch.maximum(_u(x), C)),
    "minimum_const": lambda x: _q(torch.minimum(_u(x), C)),
    "maximum_both": lambda x: _q(torch.maximum(_u(x[:2]), _u(x[1:]))),
    "max_binary": lambda x: _q(torch.max(_u(x), torch.zeros(3, dtype=DT))),
    "clamp_scalar": lambda x: _q(torch.clamp(_u(x), 0.0, 0.5)),
    "clamp_upper": lambda x: _q(torch.clamp(-_u(x), -0.5, 0.0)),
    "clamp_tensor": lambda x: _q(torch.clamp(_u(x), LO, HI)),
    "clamp_tensor_x_bounds": lambda x: _q(torch.clamp(_u(x), torch.zeros(3, dtype=DT), x * 0 + 0.3)),
    "clamp_min": lambda x: _q(torch.clamp_min(_u(x), 0.0)),
    "clamp_max": lambda x: _q(torch.clamp_max(_u(x), 0.0)),
    "clip": lambda x: _q(torch.clip(_u(x), min=0.0)),
    "hardtanh": lambda x: _q(F.hardtanh(_u(x) - 1.0) + F.hardtanh(_u(x) + 1.0)),
    "relu6": lambda x: _q(F.relu6(_u(x)) + F.relu6(_u(x) + 6.0)),
    "relu": lambda x: _q(torch.relu(_u(x))),
    "leaky_relu": lambda x: _q(F.leaky_relu(_u(x), 0.2)),
    "abs": lambda x: _q(torch.abs(_u(x))),
    "where_gt": lambda x: _q(torch.where(_u(x) > 0, _u(x) * 3.0, torch.sin(_u(x)))),
    "where_ge": lambda x: _q(torch.where(_u(x) >= 0, _u(x) * 3.0, torch.sin(_u(x)))),
    "amax": lambda x: _q(torch.amax(x * x)) + torch.amax((x * x).reshape(1, 3), dim=1).sum(),
    "max_all": lambda x: _q(torch.max(x * x)) + _q(torch.min(-x * x)),
    "max_dim": lambda x: _q(torch.max((x * x).reshape(1, 3), dim=1).values),
    "min_dim_keepdim": lambda x: _q(torch.min((-x * x).reshape(1, 3), dim=1, keepdim=True).values),
    "sort": lambda x: (torch.sort(x * x).values * _t(1.0, 2.0, 3.0)).pow(3).sum(),
    "sort_descending": lambda x: (torch.sort(x * x, descending=True).values * _t(1.0, 2.0, 3.0)).pow(3).sum(),
    "topk": lambda x: (torch.topk(x * x, 2).values * _t(1.0, 3.0)).pow(3).sum(),
}

# ties everywhere: u = 0 at ±0.5 (against the constant 0), equal squares (0.25 twice), u ties with the bounds
POINTS = _t(0.5, -0.5, 0.3), _t(0.5, 0.5, -0.5), _t(-0.5, 0.1, 0.5)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_laplacian_at_ties_matches_torch_nested_ad(name):
    f = PROGRAMS[name]
    X = torch.stack(POINTS)
    ref = lap_oracle(f, X)
    for method in METHODS:
        out = mj.laplacian(f, X, backend="torch", method=method)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10, msg=f"{name} {method}")


def test_known_values():
    c = torch.tensor(0.1, dtype=DT)

    def f1(x):
        return (torch.maximum(x, c) ** 2).sum()

    def f2(x):
        return (torch.clamp(x, -0.5, 0.5) ** 2).sum()

    for f, x, want in ((f1, [0.1, 0.3], 2.5), (f2, [0.5, 0.1, -0.5], 6.0)):
        X = torch.tensor([x], dtype=DT)
        assert lap_oracle(f, X).item() == pytest.approx(want)
        for method in METHODS:
            assert mj.laplacian(f, X, backend="torch", method=method).item() == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("name", ["maximum_const", "maximum_both", "clamp_scalar", "hardtanh", "abs", "sort", "amax"])
def test_bilaplacian_at_ties_matches_torch_nested_ad(name):
    f = PROGRAMS[name]
    X = torch.stack(POINTS[:2])
    ref = bilap_oracle(f, X)
    for method in ("collapsed", "standard"):
        out = mj.bilaplacian(f, X, backend="torch", method=method)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9, msg=f"{name} {method}")
