"""Small helpers shared by the stage modules (progress logging, ids, work folders)."""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path

from r1core.settings import state_dir

logger = logging.getLogger("r1core.stages")


def progress(stage: str):
    """A sampling progress callback ``(done, total, tokens_per_s)`` that logs under ``stage``."""

    def report(done: int, total: int, tokens_per_s: float) -> None:
        logger.info("%s: %d/%d sequences sampled (%.1f tokens/s)", stage, done, total, tokens_per_s)
    return report


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """The numeric, finite entries of ``metrics`` as floats (what MLflow can log)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def work_dir(*parts: str) -> Path:
    """A folder under ``<state>/work`` (created): checkpoints, resumable results."""
    path = state_dir().joinpath("work", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha(text: str) -> str:
    """A short stable id of ``text`` (16 hex digits of SHA-256), for cache and work-folder keys."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]
