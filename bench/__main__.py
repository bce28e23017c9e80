"""`python -m bench [NAME ...] [--option ...]`: run the named benchmarks (default: all).

Each benchmark is a module of this package with a `main(argv) -> int`; the
arguments from the first one starting with "-" on are handed to each of them.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "core",
    "batchcore",
    "broker",
    "stream",
    "buckets",
    "audit",
    "api_spike",
    "peer",
    "idle",
    "restore",
)
# Run only when named (`make soak`): they take the machine for many minutes,
# or need an argument (`ab --against REF`).
ON_REQUEST = ("soak", "profile", "ab")


def main(argv: list[str]) -> int:
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, options = argv[:split] or list(BENCHMARKS), argv[split:]
    known = BENCHMARKS + ON_REQUEST
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.stderr.write(f"unknown benchmark(s): {', '.join(unknown)}; known: {known}\n")
        return 2
    status = 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        status = max(status, module.main(options))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
