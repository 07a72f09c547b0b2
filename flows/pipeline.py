"""Flow ``r1-pipeline``: a recipe's stage graph, one Prefect task per stage, one MLflow parent run.

The recipe's ``stages`` decide what runs and what feeds what (:mod:`r1core.graph`); stages whose
inputs are ready run together, up to the recipe's ``concurrency``. The quickstart graph is
curate -> grpo -> rejection sampling -> sft -> evaluate -> register.
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
from r1core import graph, stages, summary  # noqa: E402
from r1core.config import load_recipe  # noqa: E402


@flow(name="r1-pipeline")
def r1_pipeline(
    recipe: Annotated[str, Field(description="Path of the recipe YAML (relative to the project).")] = "recipes/quickstart.yaml",
    overrides: Annotated[list[str], Field(description="key=value overrides, e.g. grpo.max_steps=2")] = [],
    fresh: Annotated[bool, Field(description="Re-run every stage even when a cached result exists.")] = False,
) -> dict:
    """Run a recipe's stages in dependency order and return every stage's outputs (run ids, URIs, metrics).

    Args:
        recipe: Path of the recipe YAML, relative to the project (see recipes/).
        overrides: key=value recipe overrides, e.g. grpo.max_steps=2 (grpo names a stage).
        fresh: Re-run every stage even when a cached result exists.
    """
    log = get_run_logger()
    cfg = load_recipe(recipe, overrides)  # the stage graph is checked here
    stages.validate(cfg)  # bad data/model/reward names fail here, before any training
    rj = cfg.to_json()
    opts = {"refresh_cache": True} if fresh else {}
    parent = stages.start_pipeline(cfg, flow_run.get_id(), flow_run.get_flow_run_ui_url())
    log.info("MLflow parent run %s (experiment %s)", parent, cfg.experiment_name)

    out: dict[str, dict] = {"base": tasks.base_model(rj)}
    for wave in graph.waves(cfg):
        for i in range(0, len(wave), cfg.concurrency):
            batch = wave[i : i + cfg.concurrency]
            futures = {name: _submit(cfg, rj, name, parent, out, opts) for name in batch}
            out.update({name: f.result() for name, f in futures.items()})
        log.info("stages done: %s", ", ".join(wave))

    summary.finish_pipeline(cfg, parent, out)
    table = summary.markdown(cfg, parent, out)
    create_markdown_artifact(key=f"r1-pipeline-{cfg.name}".lower().replace("_", "-"), markdown=table,
                             description="R1 pipeline summary")
    return {"parent_run_id": parent, **out}


def _submit(cfg, recipe_json: str, name: str, parent: str, out: dict, opts: dict):
    """Submit stage ``name``'s task with its inputs resolved from the outputs so far."""
    stage = cfg.stages[name]
    inputs = graph.resolve_inputs(cfg, name, out)
    if stage.type == "register":  # the registered version is tagged with everything upstream
        inputs["lineage"] = {s: out[s] for s in ["base", *graph.ancestors(cfg, name)]}
    task = tasks.STAGE_TASKS[stage.type]
    task_opts = {**opts} if stage.type != "register" else {}
    return task.with_options(task_run_name=name, **task_opts).submit(recipe_json, name, parent, inputs)
