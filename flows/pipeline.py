"""Flow ``r1-pipeline``: the whole R1 recipe, one task per stage, one MLflow parent run.

curate -> grpo -> rejection sampling (teacher: the GRPO policy by default) -> sft (student:
the base model by default) -> evaluate -> register.
"""

from __future__ import annotations

from typing import Annotated

from r1core.settings import configure_environment

configure_environment()

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from pydantic import Field  # noqa: E402

import tasks  # noqa: E402
from r1core import stages, summary  # noqa: E402
from r1core.config import load_recipe  # noqa: E402


@flow(name="r1-pipeline")
def r1_pipeline(
    recipe: Annotated[str, Field(description="Path of the recipe YAML (relative to the project).")] = "recipes/quickstart.yaml",
    overrides: Annotated[list[str], Field(description="key=value overrides, e.g. grpo.max_steps=2")] = [],
    fresh: Annotated[bool, Field(description="Re-run every stage even when a cached result exists.")] = False,
) -> dict:
    """Run the R1 recipe end to end and return every stage's outputs (run ids, URIs, metrics).

    Args:
        recipe: Path of the recipe YAML, relative to the project (see recipes/).
        overrides: key=value recipe overrides, e.g. grpo.max_steps=2.
        fresh: Re-run every stage even when a cached result exists.
    """
    log = get_run_logger()
    cfg = load_recipe(recipe, overrides)
    stages.validate(cfg)  # bad data/model/reward names fail here, before any training
    rj = cfg.to_json()
    opts = {"refresh_cache": True} if fresh else {}
    parent = stages.start_pipeline(cfg, flow_run.get_id(), flow_run.get_flow_run_ui_url())
    log.info("MLflow parent run %s (experiment %s)", parent, cfg.experiment_name)

    out: dict[str, dict] = {"base": tasks.base_model(rj)}
    out["curate"] = tasks.curate.with_options(**opts)(rj, parent)
    out["grpo"] = tasks.grpo.with_options(**opts)(rj, parent, out["curate"]["dataset_uri"], out["base"])
    teacher = stages.model_ref(cfg.rejection_sampling.teacher, out)
    out["rejection_sampling"] = tasks.rejection_sampling.with_options(**opts)(
        rj, parent, out["curate"]["dataset_uri"], teacher)
    student = stages.model_ref(cfg.sft.student, out)
    out["sft"] = {**tasks.sft.with_options(**opts)(rj, parent, out["rejection_sampling"]["dataset_uri"], student),
                  "student": student}
    out["evaluate"] = tasks.evaluate.with_options(**opts)(rj, parent, stages.model_ref(cfg.evaluate.model, out))
    out["register"] = tasks.register(rj, parent, out)

    summary.finish_pipeline(parent, out)
    table = summary.markdown(cfg, parent, out)
    create_markdown_artifact(key=f"r1-pipeline-{cfg.name}".lower().replace("_", "-"), markdown=table,
                             description="R1 pipeline summary")
    return {"parent_run_id": parent, **out}
