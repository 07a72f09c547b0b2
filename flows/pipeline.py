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
    targets: Annotated[list[str] | None, Field(description="Run only these stages (names or types) and what "
                                                           "they need; default: every stage.")] = None,
) -> dict:
    """Run a recipe's stages in dependency order and return every stage's outputs (run ids, URIs, metrics).

    Args:
        recipe: Path of the recipe YAML, relative to the project (see recipes/).
        overrides: key=value recipe overrides, e.g. grpo.max_steps=2 (grpo names a stage).
        fresh: Re-run every stage even when a cached result exists.
        targets: Run only these stages (names or types, e.g. grpo) and the stages they need.
    """
    return run_recipe(recipe, overrides, fresh, targets)


@flow(name="curate")
def curate(
    recipe: Annotated[str, Field(description="Path of the recipe YAML.")] = "recipes/quickstart.yaml",
    overrides: Annotated[list[str], Field(description="key=value overrides, e.g. curate.num_problems=500")] = [],
    fresh: Annotated[bool, Field(description="Re-run even when a cached result exists.")] = False,
) -> dict:
    """Run the recipe's curate stages: the curated data set, logged to MLflow with its digest.

    Args:
        recipe: Path of the recipe YAML, relative to the project (see recipes/).
        overrides: key=value recipe overrides, e.g. curate.num_problems=500.
        fresh: Re-run even when a cached result exists.
    """
    return run_recipe(recipe, overrides, fresh, ["curate"])


@flow(name="grpo")
def grpo(
    recipe: Annotated[str, Field(description="Path of the recipe YAML.")] = "recipes/quickstart.yaml",
    overrides: Annotated[list[str], Field(description="key=value overrides, e.g. grpo.max_steps=100")] = [],
    fresh: Annotated[bool, Field(description="Re-run even when a cached result exists.")] = False,
) -> dict:
    """Run the recipe's grpo stages and the stages they need (cached ones are reused).

    Args:
        recipe: Path of the recipe YAML, relative to the project (see recipes/).
        overrides: key=value recipe overrides, e.g. grpo.max_steps=100.
        fresh: Re-run even when a cached result exists.
    """
    return run_recipe(recipe, overrides, fresh, ["grpo"])


@flow(name="distill")
def distill(
    recipe: Annotated[str, Field(description="Path of the recipe YAML.")] = "recipes/distill.yaml",
    overrides: Annotated[list[str], Field(description="key=value overrides, e.g. rejection_sampling.num_samples=8")] = [],
    fresh: Annotated[bool, Field(description="Re-run even when a cached result exists.")] = False,
) -> dict:
    """Run the recipe's rejection sampling and sft stages (teacher traces -> student) and what they need.

    Args:
        recipe: Path of the recipe YAML, relative to the project (see recipes/).
        overrides: key=value recipe overrides, e.g. rejection_sampling.num_samples=8.
        fresh: Re-run even when a cached result exists.
    """
    return run_recipe(recipe, overrides, fresh, ["rejection_sampling", "sft"])


def run_recipe(recipe: str, overrides: list[str], fresh: bool, targets: list[str] | None) -> dict:
    """The body of every pipeline flow: check, open the parent run, run the stage waves, summarise."""
    log = get_run_logger()
    cfg = load_recipe(recipe, overrides)  # the stage graph is checked here
    stages.validate(cfg)  # bad data/model/reward names fail here, before any training
    selected = graph.select(cfg, targets) if targets else list(cfg.stages)
    rj = cfg.to_json()
    opts = {"refresh_cache": True} if fresh else {}
    parent = stages.start_pipeline(cfg, flow_run.get_id(), flow_run.get_flow_run_ui_url())
    log.info("MLflow parent run %s (experiment %s)", parent, cfg.experiment_name)

    out: dict[str, dict] = {"base": tasks.base_model(rj)}
    for wave in graph.waves(cfg):
        wave = [name for name in wave if name in selected]
        for i in range(0, len(wave), cfg.concurrency):
            batch = wave[i : i + cfg.concurrency]
            futures = {name: _submit(cfg, rj, name, parent, out, opts) for name in batch}
            out.update({name: f.result() for name, f in futures.items()})
        if wave:
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
