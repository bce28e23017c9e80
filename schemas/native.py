"""The compiled kernel (`native/`, Rust through PyO3), when it is installed.

`make setup` builds and installs it. Without it (a machine with no Rust
toolchain) every caller keeps its Python implementation, which stays the
reference: each kernel function gives byte for byte what the Python one
gives on every input it takes, and hands back None for anything it does not
read or write itself (non-ASCII ids, timestamps off the canonical shape, an
unexpected type), which the Python code then handles as it always has.
tests/unit/test_native.py compares the two on generated inputs.
"""

from __future__ import annotations

from types import ModuleType

try:
    import taskstream_native as _kernel
except ImportError:  # not built: the Python reference everywhere
    _kernel = None  # type: ignore[assignment]

kernel: ModuleType | None = _kernel


def describe() -> str:
    """One line for the worker's start-up log."""
    if kernel is None:
        return "native kernel: not installed (pure Python codec; `make setup` builds it)"
    return f"native kernel: {kernel.__name__} (Rust): input reader, record writer, ids, timestamps"
