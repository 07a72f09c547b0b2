"""The pipeline's stages, one module each, as plain functions: each opens its MLflow child run,
reads its inputs by URI, runs one stage of the recipe, logs its outputs and returns small values
(URIs, ids, metrics).

==================  ====================================  =====================================
stage type          module                                library it drives
==================  ====================================  =====================================
curate              :mod:`r1core.stages.curate`           :mod:`r1core.curation`, :mod:`r1core.procedural`
grpo                :mod:`r1core.stages.grpo`             :mod:`r1core.grpo`
rejection_sampling  :mod:`r1core.stages.rejection_sampling` :mod:`r1core.rejection`, :mod:`r1core.sampling`
sft                 :mod:`r1core.stages.sft`              :mod:`r1core.sft`
evaluate            :mod:`r1core.stages.evaluate`         :mod:`r1core.evaluation`, :mod:`r1core.budget`
register            :mod:`r1core.stages.register`         :mod:`r1core.promote`
compare             :mod:`r1core.stages.compare`          :mod:`r1core.distill_report`, the evaluate stage
==================  ====================================  =====================================

Every stage function is ``fn(recipe, name, parent_run_id, **inputs)``: ``name`` is the stage's
key in ``recipe.stages`` (its settings, and its MLflow run's name), and ``inputs`` are the
stage's input fields resolved to URIs by :func:`r1core.graph.resolve_inputs`. ``tasks/`` wraps
them; they never import Prefect, so a notebook can call them directly::

    from r1core import stages

    parent = stages.start_pipeline(recipe)
    base = stages.base_model(recipe)
    cur = stages.run_stage(recipe, "curate", parent)
    pol = stages.run_stage(recipe, "grpo", parent, data=cur["dataset_uri"], model=base["model_uri"])

(``stages.grpo`` is the module; its function is ``stages.grpo.grpo``.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from r1core.config import Recipe
from r1core.stages import compare, curate, evaluate, grpo, register, rejection_sampling, sft
from r1core.stages.common import HELDOUT, TAG_MODEL_ROLE, TAG_STAGE_TYPE, heldout_uri  # noqa: F401
from r1core.stages.pipeline import base_model, start_pipeline, validate  # noqa: F401
from r1core.stages.register import lineage_tags  # noqa: F401

logger = logging.getLogger(__name__)

#: Stage type -> its function.
STAGE_FUNCTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "curate": curate.curate, "grpo": grpo.grpo, "rejection_sampling": rejection_sampling.rejection_sampling,
    "sft": sft.sft, "evaluate": evaluate.evaluate, "register": register.register, "compare": compare.compare}


def run_stage(recipe: Recipe, name: str, parent_run_id: str | None, **inputs) -> dict[str, Any]:
    """Run stage ``name`` of ``recipe`` (the function of its type) with its resolved ``inputs``.

    Raises:
        KeyError: ``name`` is not a stage of the recipe.
    """
    stage_type = recipe.stages[name].type
    logger.info("stage %s (%s): started", name, stage_type)
    return STAGE_FUNCTIONS[stage_type](recipe, name, parent_run_id, **inputs)
