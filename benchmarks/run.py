"""``make bench``: run every benchmark and write its JSON under ``benchmarks/results/``.

The verifier's throughput (``verifier.json``), then the performance figures side by side
(``latest.json``, a dated copy and ``latest.md``; see :mod:`benchmarks.perf`).
"""

from __future__ import annotations

from benchmarks import perf, verifier

if __name__ == "__main__":
    verifier.main()
    perf.main()
