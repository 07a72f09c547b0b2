"""Flow ``nightly-eval``: evaluate the registry's champion and challenger, publish the deltas,
and fail the run when a model regressed against its previous evaluation."""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed
from pydantic import Field

from r1core.config import evaluation_recipe, load_recipe
from r1core.nightly import report
from tasks import stages as stage_tasks


@flow(name="nightly-eval")
def nightly_eval(
    model_name: Annotated[str, Field(description="Registered model whose aliases are evaluated.")] = "r1-quickstart-student",
    recipe: Annotated[str, Field(description="Recipe whose evaluate stage sets the protocol.")] = "recipes/quickstart.yaml",
    aliases: Annotated[list[str], Field(description="Aliases to evaluate.")] = ["champion", "challenger"],  # noqa: B006
    overrides: Annotated[list[str], Field(description="key=value overrides, e.g. evaluate.limit=50")] = [],  # noqa: B006
):
    """Evaluate each alias of ``model_name``; compare with each alias's previous evaluation and
    the challenger with the champion; publish a markdown artifact; Failed state on a regression.

    Args:
        model_name: Registered model whose aliases are evaluated.
        recipe: Recipe whose evaluate stage sets benchmarks, k and sampling.
        aliases: Aliases to evaluate (default champion and challenger).
        overrides: key=value recipe overrides, e.g. evaluate.limit=50.
    """
    log = get_run_logger()
    cfg = load_recipe(recipe, overrides)
    results = {}
    for alias in aliases:
        uri = f"models:/{model_name}@{alias}"
        ev, stage = evaluation_recipe(cfg, uri)
        results[alias] = stage_tasks.evaluate.with_options(refresh_cache=True, task_run_name=f"evaluate-{alias}")(
            ev.to_json(), stage, None, {})
    text, regressed = report(model_name, results)
    create_markdown_artifact(key=f"nightly-eval-{model_name}".lower().replace("_", "-"), markdown=text,
                             description=f"Nightly evaluation of {model_name}")
    log.info(text)
    if regressed:
        _tag_flow_run(["regression"])
        return Failed(message=f"regression in {regressed}", data=results)
    return Completed(message="no regression", data=results)


def _tag_flow_run(extra: list[str]) -> None:
    """Add tags to this flow run (visible and filterable in the Prefect UI)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.get_id())
        client.update_flow_run(run.id, tags=sorted(set(run.tags) | set(extra)))
