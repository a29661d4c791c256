"""``mj.autotune`` and ``backend="auto"``: a valid choice, the cache reused (no timing the second time), the
cache directory taken from ``MULTIJET_CACHE_DIR``, native programs choosing among methods only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from programs import POINTS, mlp_tanh

import multijet as mj
import multijet.autotune as at
from multijet.backends import available_backends


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory via the environment variable, and a HOME that must stay untouched."""
    monkeypatch.setenv("MULTIJET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def timings(monkeypatch):
    """Counts calls of the timing harness inside autotune."""
    calls = []
    original = at.time_interleaved

    def counting(fns, **kwargs):
        calls.append(sorted(fns))
        return original(fns, **kwargs)

    monkeypatch.setattr(at, "time_interleaved", counting)
    return calls


FAST = {"repeats": 3, "warmup": 1, "budget": 0.5}


def test_valid_choice_and_table(cache, timings):
    res = mj.autotune(mj.Laplacian(), mlp_tanh, POINTS, backends=["numpy"], **FAST)
    assert res.fastest in {"numpy/collapsed", "numpy/standard"}
    assert res.backend == "numpy" and res.method in ("collapsed", "standard")
    assert not res.cached and len(timings) == 1
    best = res.best
    assert all(e.median >= best.median for e in res.entries if e.ok)
    assert all(e.n >= 3 and e.min <= e.median for e in res.entries)
    text = str(res)
    assert "fastest" in text and "numpy" in text and "median" in text
    json.dumps(res.to_dict())


def test_cache_is_reused_and_lives_under_the_env_dir(cache, timings, tmp_path):
    op = mj.Laplacian()
    first = mj.autotune(op, mlp_tanh, POINTS, backends=["numpy"], **FAST)
    assert at.cache_path() == cache / "autotune.json" and (cache / "autotune.json").is_file()
    assert not (tmp_path / "home").exists()  # nothing written under HOME
    second = mj.autotune(op, mlp_tanh, POINTS, backends=["numpy"], **FAST)
    assert len(timings) == 1, "the second call must not time anything"
    assert second.cached and second.fastest == first.fastest
    assert [e.median for e in second.entries] == [e.median for e in first.entries]
    assert "cache" in second.summary()
    # a subset of the cached candidates is served from the cache too
    assert mj.autotune(op, mlp_tanh, POINTS, backends=["numpy"], methods=["standard"], **FAST).cached
    assert len(timings) == 1
    # another shape, dtype or operator is a different key
    mj.autotune(op, mlp_tanh, POINTS[:1], backends=["numpy"], **FAST)
    mj.autotune(op, mlp_tanh, POINTS.astype(np.float32), backends=["numpy"], **FAST)
    mj.autotune(mj.Bilaplacian(), mlp_tanh, POINTS, backends=["numpy"], **FAST)
    assert len(timings) == 4
    data = json.loads((cache / "autotune.json").read_text())
    assert len(data) == 4
    key = next(iter(data.values()))["key"]
    assert {"device", "operator", "shape", "dtype", "program"} <= set(key)
    # retune measures again
    assert not mj.autotune(op, mlp_tanh, POINTS, backends=["numpy"], retune=True, **FAST).cached
    assert len(timings) == 5


def test_default_cache_dir_without_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MULTIJET_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert at.cache_path() == tmp_path / "xdg" / "multijet" / "autotune.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert at.cache_path() == tmp_path / "h" / ".cache" / "multijet" / "autotune.json"


def test_unreadable_cache_warns_and_retunes(cache, timings):
    cache.mkdir(parents=True)
    (cache / "autotune.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable autotune cache"):
        res = mj.autotune(mj.Laplacian(), mlp_tanh, POINTS, backends=["numpy"], **FAST)
    assert not res.cached and len(timings) == 1
    json.loads((cache / "autotune.json").read_text())  # rewritten, valid


def test_backend_auto_tunes_once_then_uses_the_cache(cache, timings):
    expected = mj.laplacian(mlp_tanh, POINTS, backend="numpy")
    got = mj.laplacian(mlp_tanh, POINTS, backend="auto")
    assert isinstance(got, np.ndarray) and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert len(timings) == 1
    choice = at.auto_backend(mj.Laplacian(), mlp_tanh, POINTS)
    assert choice in available_backends()
    mj.laplacian(mlp_tanh, POINTS, backend="auto")
    assert len(timings) == 1, "backend='auto' must reuse the cached choice"


def test_candidate_that_fails_is_reported(cache, monkeypatch):
    import multijet.backends.numpy as nb

    original = nb.run

    def half_broken(plan, f, x, *, method, return_grad=False):
        if method == "standard":
            raise RuntimeError("planted failure")
        return original(plan, f, x, method=method, return_grad=return_grad)

    monkeypatch.setattr(nb, "run", half_broken)
    res = mj.autotune(mj.Laplacian(), mlp_tanh, POINTS, backends=["numpy"], cache=False, **FAST)
    assert res.fastest == "numpy/collapsed"
    failed = [e for e in res.entries if not e.ok]
    assert [e.name for e in failed] == ["numpy/standard"] and "planted failure" in failed[0].error
    assert "error" in str(res)
    assert not cache.exists(), "cache=False must not write"


def test_bad_arguments(cache):
    with pytest.raises(mj.BackendError, match="not installed"):
        mj.autotune(mj.Laplacian(), mlp_tanh, POINTS, backends=["nope"])
    with pytest.raises(ValueError, match="unknown method"):
        mj.autotune(mj.Laplacian(), mlp_tanh, POINTS, backends=["numpy"], methods=["fast"])
    with pytest.raises(mj.BackendError, match="no candidate"):
        mj.autotune(mj.Laplacian(), mlp_tanh, POINTS, backends=["numpy"], methods=["nested"])


def test_native_torch_module_chooses_among_methods(cache, timings):
    if "torch" not in available_backends():
        pytest.skip("torch backend not installed")
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x = torch.as_tensor(POINTS)
    res = mj.autotune(mj.Laplacian(), net, x, **FAST)
    assert {e.backend for e in res.entries} == {"torch"}
    assert {e.method for e in res.entries} == {"collapsed", "standard", "nested"}
    assert res.backend == "torch" and res.method in ("collapsed", "standard", "nested")
    assert at.auto_backend(mj.Laplacian(), net, x) == "torch"
    with pytest.raises(mj.BackendError, match="runs only on 'torch'"):
        mj.autotune(mj.Laplacian(), net, x, backends=["numpy"])


def test_auto_tunes_for_the_requested_method(cache, timings):
    if len(available_backends()) < 2:
        pytest.skip("needs a framework backend")
    out = mj.laplacian(mlp_tanh, POINTS[:2], backend="auto", method="nested")  # NumPy has no nested AD
    assert timings and all(name.endswith("/nested") and not name.startswith("numpy") for name in timings[0])
    np.testing.assert_allclose(out, mj.laplacian(mlp_tanh, POINTS[:2]), rtol=1e-9)


def test_program_id_tells_programs_apart_but_not_their_weights():
    from array_api_compat import array_namespace

    def make(kind, W):
        def f(x):
            xp = array_namespace(x)
            return getattr(xp, kind)(xp.sum(W @ x))

        return f

    W = np.ones((4, 3))
    assert at._program_id(make("tanh", W)) != at._program_id(make("sin", W))
    assert at._program_id(make("tanh", W)) != at._program_id(make("tanh", np.ones((40, 3))))
    assert at._program_id(make("tanh", W)) == at._program_id(make("tanh", 2 * W))
