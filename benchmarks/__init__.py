"""Benchmarks for aer_kernels: ``python -m benchmarks`` (CLI) and ``pytest benchmarks/ --benchmark-only``."""
