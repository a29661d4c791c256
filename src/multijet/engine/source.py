"""Where in the user's code an operation came from (shared by every capture's error messages)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

__all__ = ["PACKAGE_DIR", "user_frame", "user_line_from_stack"]

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _outside(fname: str, skip: Iterable[str]) -> bool:
    path = os.path.abspath(fname)
    return not path.startswith(PACKAGE_DIR) and not any(path.startswith(d) for d in skip) and "<" not in fname[:1]


def user_frame(skip: Iterable[str] = ()) -> str | None:
    """``file:line`` of the innermost frame of the current stack outside multijet and ``skip`` folders."""
    skip = tuple(skip)
    f = sys._getframe(1)
    while f is not None:
        if _outside(f.f_code.co_filename, skip):
            return f"{f.f_code.co_filename}:{f.f_lineno}"
        f = f.f_back
    return None


def user_line_from_stack(stack: str | None, skip: Iterable[str] = ()) -> str | None:
    """The innermost user frame of a recorded stack trace text (``File "…", line N`` entries)."""
    if not stack:
        return None
    skip = tuple(skip)
    found = None
    for line in stack.splitlines():
        line = line.strip()
        if line.startswith('File "'):
            fname = line[6 : line.index('"', 6)]
            rest = line[line.index('"', 6) + 1 :]
            if _outside(fname, skip) and "line " in rest:
                found = f"{fname}:{rest.split('line ', 1)[1].split(',', 1)[0]}"
    return found

