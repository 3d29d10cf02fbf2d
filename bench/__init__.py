"""Benchmarks: `python -m bench` runs them and writes docs/BENCHMARKS.md."""
