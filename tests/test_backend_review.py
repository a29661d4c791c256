"""Fixes from the executor review: NumPy 1.26 compatibility, registrations made before a backend loads, the
shared per-block inputs and point chunking, JAX schedules and the eager cache."""

from __future__ import annotations

import numpy as np
import pytest

from multijet.backends.numpy_namespace import NS


@pytest.mark.numpy
@pytest.mark.parametrize("upper", [False, True])
def test_numpy_cholesky_upper_without_numpy2(monkeypatch, upper):
    """``xp.linalg.cholesky(a, upper=True)`` on concrete arrays works where ``np.linalg.cholesky`` has no
    ``upper=`` (NumPy 1.26): the conjugate transpose of the lower factor."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(2, 3, 3))
    a = m @ np.swapaxes(m, -1, -2) + 3 * np.eye(3)
    lower = np.linalg.cholesky(a)
    real = np.linalg.cholesky
    monkeypatch.setattr(np.linalg, "cholesky", lambda x: real(x))  # NumPy 1.26's signature: no ``upper``
    got = NS.linalg.cholesky(a, upper=upper)
    np.testing.assert_array_equal(got, np.swapaxes(lower, -1, -2) if upper else lower)


_LATE_TORCH = """
import sys, warnings
import numpy as np
import multijet as mj
from multijet import derivatives, extend
assert "torch" not in sys.modules
def table(xp, x0, y0, K):
    return [None if d is None else -d for d in derivatives.TABLE["erf"](xp, x0, y0, K)]
extend.register_elementwise("bad_erfc", table, numpy=np.vectorize(__import__("math").erfc), torch="no_such_aten_op")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch
    import multijet.backends.torch  # the bad torch= part fails here: warned, not raised
msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
assert any("'bad_erfc'" in m and "torch" in m and "no_such_aten_op" in m for m in msgs), msgs
assert extend.registered()["bad_erfc"] == ("numpy",), extend.registered()
x = torch.tensor([0.3, -0.2], dtype=torch.float64)
lap = mj.laplacian(lambda x: torch.sin(x).sum(), x, backend="torch")
assert torch.allclose(lap, -torch.sin(x).sum()), lap
print("ok")
"""


@pytest.mark.torch
def test_bad_torch_registration_before_import_warns():
    """A ``torch=`` registration that cannot work, made before torch loads, warns naming the primitive when
    the torch backend loads, and the backend still loads and runs."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _LATE_TORCH], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
