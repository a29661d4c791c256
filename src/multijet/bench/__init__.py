"""The benchmark harness behind ``multijet bench`` and ``benchmarks/table1.py``.

* :mod:`~multijet.bench.programs`: the paper's network (tanh MLP D→768→768→512→512→1) built natively for each
  backend from one NumPy seed, its inputs, the operators by name;
* :mod:`~multijet.bench.memory`: peak memory, one subprocess per configuration
  (``python -m multijet.bench memory SPEC``);
* :mod:`~multijet.bench.run`: one panel of the paper's Fig. 5, timed with interleaved repetitions
  (:func:`multijet.timing.time_interleaved`), with straight-line fits of time and memory against batch size
  or sample count (cost per datum / per sample);
* :mod:`~multijet.bench.plots`: the PNG of a panel; :mod:`~multijet.bench.env`: machine description and
  thread limits.

The library's core (api, plan, spec, backends, compare, autotune) never imports this package; the timing
and machine helpers the core needs live in :mod:`multijet.timing` and are re-exported here.
Frameworks are imported only when a configuration uses them.
"""

from __future__ import annotations

from .._dispatch import backend_methods, to_numpy
from ..timing import Timing, cpu_model, device_name, sync, time_interleaved, versions
from .env import THREADS_ENV, enable_jax_x64, machine_info, rerun_with_threads, thread_env
from .memory import measure_memory, peak_reset_supported
from .plots import plot_bench
from .programs import OPERATORS, PAPER_WIDTHS, make_input, make_operator, make_program, mlp_layers
from .run import BenchConfig, fit_line, run_bench

__all__ = [
    "PAPER_WIDTHS",
    "OPERATORS",
    "Timing",
    "BenchConfig",
    "time_interleaved",
    "sync",
    "machine_info",
    "device_name",
    "cpu_model",
    "versions",
    "make_operator",
    "make_program",
    "make_input",
    "mlp_layers",
    "fit_line",
    "measure_memory",
    "peak_reset_supported",
    "run_bench",
    "plot_bench",
    "backend_methods",
    "to_numpy",
    "THREADS_ENV",
    "thread_env",
    "rerun_with_threads",
    "enable_jax_x64",
]
