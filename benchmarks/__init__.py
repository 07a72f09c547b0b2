"""Benchmarks (``make bench``): speed figures measured side by side, written to ``benchmarks/results/``."""
