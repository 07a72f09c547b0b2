"""Flow ``r1-stage``: one stage of a pipeline, on the work pool the recipe places it on.

A recipe stage with ``work_pool: gpu`` is not run in the pipeline's flow run: the pipeline
starts a flow run of deployment ``r1-stage/gpu`` (registered by ``r1 deploy --pool gpu
--stages-only``), which a worker of pool ``gpu`` picks up on its own machine, and waits for it
(:func:`tasks.stages.placed_stage`). This flow runs the stage's own task there (its retries and
cache as in the pipeline), under the pipeline's MLflow parent run, and records the stage's
outputs on that parent run for the pipeline to read back.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from r1core import tracking
from r1core.config import Recipe
from tasks import stages as stage_tasks


@flow(name=stage_tasks.STAGE_FLOW)
def r1_stage(
    recipe_json: Annotated[str, Field(description="The pipeline's recipe, as JSON (Recipe.to_json()).")],
    stage: Annotated[str, Field(description="The stage's name in the recipe.")],
    parent_run_id: Annotated[str, Field(description="The pipeline's MLflow parent run id.")],
    upstream: Annotated[dict, Field(description="Outputs of base and of the stages this one reads.")],
    fresh: Annotated[bool, Field(description="Re-run the stage even when a cached result exists.")] = False,
) -> dict:
    """Run one stage of a pipeline here; return its outputs (also recorded on the parent run).

    Args:
        recipe_json: The pipeline's recipe, as JSON.
        stage: The stage's name in the recipe.
        parent_run_id: The pipeline's MLflow parent run id (the stage's run becomes its child).
        upstream: Outputs of ``base`` and of the stages this one reads.
        fresh: Re-run the stage even when a cached result exists.
    """
    cfg = Recipe.model_validate_json(recipe_json)
    task = stage_tasks.STAGE_TASKS[cfg.stages[stage].type]
    out = task.with_options(task_run_name=stage, refresh_cache=fresh or None)(recipe_json, stage, parent_run_id, upstream)
    tracking.log_placed_output(parent_run_id, stage, flow_run.get_id(), out)
    return out
