"""The shared jet engine: one program form, one schedule, one propagation, run by every backend.

* :mod:`.program` — :class:`Program`, the normalised form every capture produces;
* :mod:`.kinds` — the kinds of equation and the native callables a backend supplies for each;
* :mod:`.schedule` — structural zeros, direction dependence and collapse points, computed once;
* :mod:`.propagate` — the interpreter loop with the shared rules (:mod:`.rules`, :mod:`.selection`,
  :mod:`.generic`, :mod:`.control`);
* :mod:`.run` — seeding the plan's jet groups and reading off value, operator and gradient;
* :mod:`.blocks` — what each direction block of a group is seeded with (weights, unit rows or directions);
* :mod:`.outputs` — what every capture does with ``f``'s output (a tuple/list stacked).

Framework-free: nothing here imports torch or jax.
"""

from . import kinds
from .blocks import BlockInputs, block_inputs
from .config import GenericRuleWarning, is_strict, set_strict
from .context import Context, Identity, Layout
from .outputs import stack_outputs
from .program import Equation, Program, Var
from .propagate import propagate
from .run import (
    GroupSpec,
    block_sizes,
    evaluate,
    group_specs,
    group_weights,
    python_loop,
    schedule_for,
    schedule_text,
    uses_sparsity,
)
from .schedule import Schedule, make_schedule

__all__ = [
    "kinds",
    "Program",
    "Equation",
    "Var",
    "Context",
    "Identity",
    "Layout",
    "Schedule",
    "make_schedule",
    "propagate",
    "evaluate",
    "group_specs",
    "GroupSpec",
    "schedule_for",
    "schedule_text",
    "uses_sparsity",
    "python_loop",
    "group_weights",
    "block_sizes",
    "block_inputs",
    "BlockInputs",
    "set_strict",
    "is_strict",
    "GenericRuleWarning",
    "stack_outputs",
]
