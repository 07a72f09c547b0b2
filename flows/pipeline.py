"""Flow ``r1-pipeline``: a recipe's stage graph, one Prefect task per stage, one MLflow parent run.

The recipe's ``stages`` decide what runs and what feeds what (:mod:`r1core.graph`). Each stage's
task is submitted with its upstream tasks' futures as inputs, so Prefect runs a stage when what
it reads is ready, stages whose inputs are ready together (up to the recipe's ``concurrency``,
the stage graph's task runner), and draws the edges in its UI. The quickstart graph is
curate -> grpo -> rejection sampling -> sft -> evaluate -> register. The ``curate``, ``grpo`` and
``distill`` deployments are this flow with ``targets``. A stage with a ``work_pool`` runs on that
pool as a flow run of ``r1-stage/<pool>`` (:mod:`flows.stage`), the pipeline waiting for it.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from r1core import graph, stages, summary, tracking
from r1core.config import Recipe, load_recipe
from tasks import stages as stage_tasks


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


def run_recipe(recipe: str, overrides: list[str], fresh: bool, targets: list[str] | None) -> dict:
    """The body of the pipeline flow: check, open the parent run, run the stage graph, summarise."""
    log = get_run_logger()
    cfg = load_recipe(recipe, overrides)  # the stage graph is checked here
    stages.validate(cfg, here=True)  # bad data/model/reward names, launches this machine cannot run: here
    selected = graph.select(cfg, targets) if targets else list(cfg.stages)
    stage_tasks.check_placements(cfg, selected)  # a stage placed on a work pool has somewhere to run
    parent = stages.start_pipeline(cfg, flow_run.get_id(), stage_tasks.flow_run_ui_url())
    log.info("MLflow parent run %s (experiment %s)", parent, cfg.experiment_name)
    runner = ThreadPoolTaskRunner(max_workers=cfg.concurrency)
    try:
        out = stage_graph.with_options(task_runner=runner)(cfg.to_json(), selected, parent, fresh)
    except BaseException:  # a stage failed (or the run was interrupted): the lineage says so
        tracking.end_parent_run(parent, "FAILED")
        raise
    summary.finish_pipeline(cfg, parent, out)
    table = summary.markdown(cfg, parent, out)
    create_markdown_artifact(key=f"r1-pipeline-{cfg.name}".lower().replace("_", "-"), markdown=table,
                             description="R1 pipeline summary")
    return {"parent_run_id": parent, **out}


@flow(name="stage-graph")
def stage_graph(recipe_json: str, selected: list[str], parent_run_id: str, fresh: bool = False) -> dict[str, dict]:
    """Submit every selected stage's task with its upstream futures; return each stage's outputs
    (and ``base``, the base model). Runs as a subflow of ``r1-pipeline``, whose task runner bounds
    how many stages run at once."""
    cfg = Recipe.model_validate_json(recipe_json)
    futures = {"base": stage_tasks.base_model.submit(recipe_json)}
    deps = graph.dependencies(cfg)
    for name in graph.order(cfg):
        if name not in selected:
            continue
        stage = cfg.stages[name]
        reads = graph.ancestors(cfg, name) if stage.type == "register" else deps[name]
        upstream = {"base": futures["base"], **{s: futures[s] for s in reads}}
        refresh = fresh and stage.type != "register"
        if stage.work_pool:  # runs on that pool, as a flow run of r1-stage/<pool>; this task waits for it
            task = stage_tasks.placed_stage.with_options(task_run_name=f"{name}@{stage.work_pool}")
            futures[name] = task.submit(recipe_json, name, parent_run_id, upstream, fresh=refresh)
        else:
            task = stage_tasks.STAGE_TASKS[stage.type].with_options(task_run_name=name, refresh_cache=refresh or None)
            futures[name] = task.submit(recipe_json, name, parent_run_id, upstream)
    out = {name: f.result() for name, f in futures.items()}
    get_run_logger().info("stages done: %s", ", ".join(n for n in out if n != "base"))
    return out
