"""Benchmarks (``make bench``): figures measured on this machine, written to ``benchmarks/results/``."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(path: Path, result: dict) -> dict:
    """Write ``result`` as JSON to ``path`` (folders created), print it, and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result
