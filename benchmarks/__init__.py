"""Benchmarks and one-off ablations/reports; not part of the installed package.

Run from the repository root, e.g. ``python -m benchmarks.bench_anomaly --help``.
Figures and the commands that produced them: docs/benchmarks.md.
"""
