"""``mj.autotune``: time every backend × method for one operator, program and input here; cache the answer.

Candidates are built with :func:`multijet.compile` (plan and trace once, as a training loop would) and called
on the user's ``x``: warm-up calls first (tracing, JIT compilation), then interleaved repetitions, with the
device synchronised (:func:`multijet.timing.time_interleaved`). The fastest candidate has the smallest median.

Results are cached in ``$MULTIJET_CACHE_DIR/autotune.json`` (default ``$XDG_CACHE_HOME/multijet`` or
``~/.cache/multijet``), keyed by device name, operator coefficients, program, input shape, dtype,
randomisation and library versions; ``backend="auto"`` (:func:`auto_backend`) reads the cache or tunes once.
:mod:`multijet.api` does not import this module: the package registers a resolver with
:func:`multijet.api.register_auto_backend` that loads it on the first ``backend="auto"`` call.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import api
from ._dispatch import backend_methods, native_backend
from ._text import plain_table as _plain_table
from ._text import short as _short
from .backends import available_backends
from .backends.interop import interop, native_program_backend
from .errors import BackendError
from .spec import Operator
from .timing import device_name, thread_settings, time_interleaved, versions

__all__ = ["autotune", "auto_backend", "TuneResult", "Entry", "cache_dir", "cache_path", "CACHE_ENV"]

#: environment variable naming the cache directory
CACHE_ENV = "MULTIJET_CACHE_DIR"
_CACHE_FILE = "autotune.json"


def cache_dir() -> Path:
    """``$MULTIJET_CACHE_DIR``, else ``$XDG_CACHE_HOME/multijet``, else ``~/.cache/multijet``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "multijet"


def cache_path() -> Path:
    """The autotune cache file."""
    return cache_dir() / _CACHE_FILE


@dataclass
class Entry:
    """One candidate's timing (seconds per call), or why it could not run."""

    backend: str
    method: str
    median: float | None = None
    min: float | None = None
    iqr: float | None = None
    n: int = 0
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.method}"

    @property
    def ok(self) -> bool:
        return self.error is None and self.median is not None


@dataclass
class TuneResult:
    """What :func:`autotune` measured (or read from the cache). ``print(result)`` shows the table."""

    key: dict[str, Any]
    entries: list[Entry]
    cached: bool = False
    path: Path | None = None
    created: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))

    @property
    def best(self) -> Entry | None:
        """The fastest candidate (smallest median), or None if none ran."""
        ok = [e for e in self.entries if e.ok]
        return min(ok, key=lambda e: e.median) if ok else None

    @property
    def backend(self) -> str | None:
        return None if self.best is None else self.best.backend

    @property
    def method(self) -> str | None:
        return None if self.best is None else self.best.method

    @property
    def fastest(self) -> str | None:
        """``"backend/method"`` of the fastest candidate."""
        return None if self.best is None else self.best.name

    def ranking(self) -> list[Entry]:
        return sorted(self.entries, key=lambda e: (not e.ok, e.median if e.ok else 0.0))

    def summary(self) -> str:
        best = self.best
        if best is None:
            return "no candidate ran: " + "; ".join(f"{e.name}: {e.error}" for e in self.entries)
        ok = [e for e in self.ranking() if e.ok]
        nxt = f", {ok[1].median / best.median:.2f}x faster than {ok[1].name}" if len(ok) > 1 else ""
        src = f" (from the cache {self.path})" if self.cached else ""
        return f"fastest: {best.name} ({best.median * 1e3:.3g} ms median{nxt}){src}"

    def _title(self) -> str:
        k = self.key
        rnd = f", {k['samples']} {k['distribution']} samples" if k.get("samples") else ""
        t = k.get("threads") or {}
        threads = f"; torch {t['torch_threads']} threads" if t.get("torch_threads") else ""
        limit = f", limit {t['limit']}" if t.get("limit") else ""
        return f"autotune {k['operator_repr']} on x{k['shape']} {k['dtype']}{rnd} — {k['device']}{threads}{limit}"

    _HEAD = ["backend", "method", "median ms", "min ms", "IQR ms", "reps", "× fastest", "note"]

    def _rows(self) -> list[list[str]]:
        best = self.best
        rows = []
        for e in self.ranking():
            if not e.ok:
                rows.append([e.backend, e.method, "—", "—", "—", "—", "—", "error: " + _short(e.error or "", 90)])
                continue
            ratio = e.median / best.median if best else float("nan")
            note = "fastest" if e is best else ""
            rows.append([e.backend, e.method, f"{e.median * 1e3:.4g}", f"{e.min * 1e3:.4g}", f"{e.iqr * 1e3:.2g}",
                         str(e.n), f"{ratio:.2f}x", note])  # fmt: skip
        return rows

    def __str__(self) -> str:
        return "\n\n".join([self._title(), _plain_table(self._HEAD, self._rows()), self.summary()])

    __repr__ = __str__

    def __rich__(self):  # pragma: no cover - exercised when rich prints the result
        from rich.console import Group
        from rich.markup import escape
        from rich.text import Text

        from ._cli_output import folding_table

        rows = self._rows()
        t = folding_table(self._title(), self._HEAD, rows)
        for row in rows:
            style = "bold green" if row[-1] == "fastest" else ("red" if row[2] == "—" else None)
            t.add_row(*map(escape, row), style=style)
        return Group(t, Text(self.summary(), style="bold"))

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "created": self.created, "cached": self.cached, "fastest": self.fastest,
                "entries": [e.__dict__ for e in self.entries]}  # fmt: skip


def autotune(
    op: Operator,
    f: Callable,
    x,
    backends: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    *,
    samples: int | None = None,
    distribution: str | None = None,
    seed: int = 0,
    warmup: int = 2,
    repeats: int = 15,
    budget: float | None = 10.0,
    cache: bool = True,
    retune: bool = False,
    threads: int | None = None,
) -> TuneResult:
    """Time ``op`` on ``f`` at ``x`` for every backend × method and name the fastest.

    ``backends`` defaults to every installed backend for an array-API program with NumPy ``x``, and to the
    one framework a native program (``nn.Module``, torch / JAX ``x``) can run, where only the methods compete.
    ``methods`` defaults to each backend's methods. ``budget`` caps the seconds spent on the timed rounds
    (at least 3 rounds). With ``cache=True`` a matching earlier result is returned without timing anything
    (``retune=True`` measures again); new results are written to :func:`cache_path`. ``threads`` sets torch's
    intra-op threads while timing (XLA's and BLAS's pools are fixed when they load: ``multijet autotune
    --threads N`` reruns in a process with all of them limited). The thread settings are recorded in the
    result and are part of the cache key, so rankings from different settings are not mixed.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        with _torch_threads(threads):
            return autotune(op, f, x, backends, methods, samples=samples, distribution=distribution, seed=seed,
                            warmup=warmup, repeats=repeats, budget=budget, cache=cache, retune=retune)  # fmt: skip
    if not isinstance(op, Operator):
        raise TypeError(f"expected an operator spec such as mj.Laplacian(), got {type(op).__name__}")
    shape = tuple(int(s) for s in getattr(x, "shape", np.shape(x)))
    if len(shape) not in (1, 2) or shape[-1] < 1:
        raise ValueError(f"x must have shape (D,) or (N, D), got {shape}")
    api.plan(op, shape[-1], samples=samples, distribution=distribution, seed=seed)  # plan errors surface here
    cands = _candidates(f, x, backends, methods)
    key = _key(op, f, x, shape, samples, distribution, torch_timed=any(b == "torch" for b, _ in cands))
    key_id = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_path()
    names = [f"{b}/{m}" for b, m in cands]
    if cache and not retune:
        stored = _load(path).get(key_id, {}).get("candidates", {})
        if names and all(n in stored for n in names):
            entries = [Entry(**stored[n]) for n in names]
            return TuneResult(key, entries, cached=True, path=path, created=_load(path)[key_id].get("updated", ""))
    entries = _measure(op, f, x, cands, samples, distribution, seed, warmup, repeats, budget)
    result = TuneResult(key, entries, cached=False, path=path if cache else None)
    if cache:
        _store(path, key_id, key, entries, result.created)
    return result


def auto_backend(
    op: Operator,
    f: Callable,
    x,
    *,
    method: str = "collapsed",
    samples: int | None = None,
    distribution: str | None = None,
) -> str:
    """The fastest backend for ``op`` on ``f`` at ``x`` with ``method`` (what ``backend="auto"`` uses).

    A framework-native program can only run on its own framework, which is returned without timing;
    otherwise the cached :func:`autotune` result is used, or the backends are tuned once and cached.
    """
    native = native_backend(f, x)
    if native is not None:
        return native
    res = autotune(op, f, x, methods=[method], samples=samples, distribution=distribution, budget=5.0)
    if res.best is None:
        raise BackendError(
            f"backend='auto' found no backend that can run this program with method={method!r}: "
            + "; ".join(f"{e.name}: {e.error}" for e in res.entries)
        )
    return res.best.backend


# --- internals -------------------------------------------------------------------------------------------------


def _candidates(f, x, backends, methods) -> list[tuple[str, str]]:
    installed = available_backends()
    native = native_backend(f, x)
    if backends is None:
        names = [native] if native is not None else installed
    else:
        names = list(backends)
        unknown = [b for b in names if b not in installed]
        if unknown:
            raise BackendError(f"backend(s) {unknown} are not installed; installed backends: {installed}")
        if native is not None and names != [native]:
            raise BackendError(
                f"this program runs only on {native!r} (a {native} module or array); got backends={names}"
            )
    out: list[tuple[str, str]] = []
    for b in names:
        offered = backend_methods(b)
        if methods is not None:
            from .plan import METHODS

            bad = [m for m in methods if m not in METHODS]
            if bad:
                raise ValueError(f"unknown method(s) {bad}; expected some of {METHODS}")
        out.extend((b, m) for m in (methods if methods is not None else offered) if m in offered)
    if not out:
        raise BackendError(f"no candidate: backends {names} offer none of the methods {list(methods or [])}")
    return out


def _program_id(f) -> str:
    """A name for the program that survives restarts: class and parameter shapes, or module, name and code."""
    owner_of_f = native_program_backend(f)
    if owner_of_f is not None:
        return interop(owner_of_f).program_id(f)
    h = hashlib.sha1()
    _fingerprint(f, h, depth=0)
    name = getattr(f, "__qualname__", type(f).__qualname__)
    return f"{getattr(f, '__module__', '?')}.{name}#{h.hexdigest()[:12]}"


def _fingerprint(obj, h, depth: int) -> None:
    """Feed what determines a function's program into ``h``: its code (bytecode, constants, names) and the
    arrays and functions it reads from closures and globals (their shapes and dtypes)."""
    code = getattr(obj, "__code__", None)
    if code is not None and depth < 3:
        h.update(code.co_code)
        h.update(repr((code.co_consts, code.co_names)).encode())
        cells = [c.cell_contents for c in (getattr(obj, "__closure__", None) or ()) if _has_contents(c)]
        glb = getattr(obj, "__globals__", {})
        for value in cells + [glb[n] for n in code.co_names if n in glb]:
            _fingerprint(value, h, depth + 1)
        return
    shape = getattr(obj, "shape", None)
    if isinstance(shape, tuple) and hasattr(obj, "dtype"):  # an array (not the numpy module: np.shape, np.dtype)
        # not the contents: timings do not depend on them, and a training loop must not retune every step
        h.update(repr((type(obj).__name__, tuple(shape), str(obj.dtype))).encode())
    elif isinstance(obj, int | float | complex | str | bytes | bool | type(None)):
        h.update(repr(obj).encode())
    else:
        h.update(type(obj).__qualname__.encode())


def _has_contents(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:  # an empty cell (a variable not yet assigned)
        return False
    return True


def _key(op: Operator, f, x, shape, samples, distribution, torch_timed: bool = True) -> dict[str, Any]:
    dim = shape[-1]
    coeffs = sorted((list(a), float(c)) for a, c in op.coefficients(dim).items())
    return {
        "device": device_name(x),
        "operator_repr": repr(op),
        "operator": hashlib.sha1(json.dumps(coeffs).encode()).hexdigest()[:16],
        "shape": list(shape),
        "dtype": str(getattr(x, "dtype", np.asarray(x).dtype)).replace("torch.", ""),
        "samples": samples,
        "distribution": (api._distribution(distribution) if samples is not None else None),
        "program": _program_id(f),
        "versions": versions(),
        "threads": thread_settings(torch=torch_timed),
        **{k: v for name in available_backends() for k, v in interop(name).config().items()},
    }


@contextlib.contextmanager
def _torch_threads(n: int):
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            yield
            return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _measure(op, f, x, cands, samples, distribution, seed, warmup, repeats, budget) -> list[Entry]:
    fns: dict[str, Callable[[], Any]] = {}
    errors: dict[str, str] = {}
    for b, m in cands:
        try:
            c = api.compile(op, f, x, backend=b, method=m, samples=samples, distribution=distribution, seed=seed)
            fns[f"{b}/{m}"] = lambda c=c: c(x)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot run is reported, not fatal
            errors[f"{b}/{m}"] = f"{type(exc).__name__}: {exc}"
    timings = time_interleaved(fns, warmup=warmup, repeats=repeats, budget=budget) if fns else {}
    entries = []
    for b, m in cands:
        name = f"{b}/{m}"
        t = timings.get(name)
        if name in errors:
            entries.append(Entry(b, m, error=errors[name]))
        elif isinstance(t, BaseException):
            entries.append(Entry(b, m, error=f"{type(t).__name__}: {t}"))
        else:
            entries.append(Entry(b, m, median=t.median, min=t.min, iqr=t.iqr, n=t.n))
    return entries


def _load(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        warnings.warn(f"ignoring the unreadable autotune cache {path}: {exc}", stacklevel=3)
        return {}


def _store(path: Path, key_id: str, key: dict, entries: list[Entry], when: str) -> None:
    """Merge one result into the cache file (written atomically); a failure to write only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _load(path)
        data[key_id] = {"key": key, "updated": when, "candidates": {e.name: e.__dict__ for e in entries}}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write the autotune cache {path}: {exc} (set {CACHE_ENV} to a writable directory)",
                      stacklevel=3)  # fmt: skip


class _CallableModule(types.ModuleType):
    """``multijet.autotune`` is both this module and the function (importing the submodule rebinds the
    package attribute to the module), so the module forwards calls to :func:`autotune`."""

    def __call__(self, *args, **kwargs) -> TuneResult:
        return autotune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
