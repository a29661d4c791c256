"""``python -m multijet.bench memory '<json spec>'``: the peak-memory subprocess (prints one JSON line)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from .memory import memory_child


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "memory":
        print("usage: python -m multijet.bench memory '<json spec>'", file=sys.stderr)
        return 2
    print(json.dumps(memory_child(json.loads(args[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
