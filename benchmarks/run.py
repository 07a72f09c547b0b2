"""``make bench``: run every benchmark and write its JSON under ``benchmarks/results/``."""

from __future__ import annotations

from benchmarks import verifier

if __name__ == "__main__":
    verifier.main()
