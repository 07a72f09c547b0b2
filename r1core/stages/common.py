"""What every stage module shares: its MLflow child run, the tags stages write, and the names of
the held-out set a curate stage logs beside its training set."""

from __future__ import annotations

import re
from pathlib import Path

from r1core import tracking
from r1core.config import Recipe
from r1core.tracking import HELDOUT, heldout_uri  # noqa: F401 (the stages' names for them)

TAG_BASE_REF = "r1.base_ref"
TAG_MODEL_ROLE = "r1.model_role"
TAG_STAGE_TYPE = "r1.stage_type"

def stage_run(recipe: Recipe, name: str, parent_run_id: str, **kwargs):
    """The stage's nested MLflow run, named after the stage and tagged with its type
    (:func:`r1core.tracking.stage_run`; ``kwargs`` such as ``resume_run_id`` pass through)."""
    return tracking.stage_run(parent_run_id, name, tags={TAG_STAGE_TYPE: recipe.stages[name].type}, **kwargs)


def slug(ref: str) -> str:
    """A model reference as a LoggedModel name (letters, digits, ``-``, ``_``; at most 60 characters)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(ref).name if Path(ref).exists() else ref).strip("-")[:60] or "model"


def loggable(settings: dict) -> dict:
    """Flatten a stage's endpoint settings for ``log_params`` (an API key is never in them: only
    the name of the variable that holds it)."""
    flat = {k: v for k, v in settings.items() if k != "endpoint"}
    for k, v in (settings.get("endpoint") or {}).items():
        flat[f"endpoint.{k}"] = v
    return flat
