"""Benchmarks of the whole pipeline against the real parts, each beside its baseline.

Run with ``tools/bench`` (or ``python -m benchmarks``); see README.md. Not part of the
test run: pytest collects only ``tests/``.
"""
