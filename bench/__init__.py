"""Benchmarks: `python -m bench [name ...]` (default: all). Results go to BENCHMARKS.md by hand."""
