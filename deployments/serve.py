"""Serve the project's flows as Prefect deployments (needs a Prefect server: ``prefect server start``).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve

Deployments:
- ``r1-pipeline/r1-pipeline``: the whole recipe; Run from the UI with a recipe path and overrides.
- ``r1-pipeline/curate``, ``r1-pipeline/grpo``, ``r1-pipeline/distill``: the pipeline flow with ``targets``: a recipe's stages of that kind and the
  stages they need (completed ones come from the cache).
- ``evaluate/evaluate``: R1-protocol evaluation of any model URI.
- ``nightly-eval/nightly-eval``: evaluates the registry's ``champion`` and ``challenger`` every
  night at ``R1_NIGHTLY_CRON`` (default ``0 2 * * *``, 02:00 UTC), publishes the deltas as a
  markdown artifact and ends Failed on a regression.
- ``promote/promote``: moves ``champion`` to ``challenger`` when it passes the recipe's gate.
"""

from __future__ import annotations

import os

from prefect import serve

from flows.evaluate import evaluate
from flows.nightly import nightly_eval
from flows.pipeline import r1_pipeline
from flows.promote import promote

NIGHTLY_CRON = os.environ.get("R1_NIGHTLY_CRON", "0 2 * * *")


#: Where each deployed flow is, relative to the project folder (what a work pool's worker loads).
ENTRYPOINTS = {"r1-pipeline": "flows/pipeline.py:r1_pipeline", "evaluate": "flows/evaluate.py:evaluate",
               "nightly-eval": "flows/nightly.py:nightly_eval", "promote": "flows/promote.py:promote",
               "r1-stage": "flows/stage.py:r1_stage"}


def _flows(source: str | None) -> dict:
    """The flow objects by flow name: these modules' own (to serve them here), or loaded from
    ``source`` (a project folder or git URL, to deploy them to a work pool with that pull step)."""
    if source is None:
        from flows.stage import r1_stage

        return {"r1-pipeline": r1_pipeline, "evaluate": evaluate, "nightly-eval": nightly_eval, "promote": promote,
                "r1-stage": r1_stage}
    from prefect import Flow

    return {name: Flow.from_source(source, entrypoint) for name, entrypoint in ENTRYPOINTS.items()}


def deployments(recipe: str = "recipes/quickstart.yaml", model_name: str = "r1-quickstart-student",
                source: str | None = None) -> list:
    """The deployment objects (also used by tests to check names, schedules and parameters).

    Args:
        recipe: the recipe the deployments' parameters default to.
        model_name: the registered model the nightly and promote deployments watch.
        source: ``None`` for the flows of this process (``r1 serve``); a project folder or git URL
            for deployments a work pool's workers run from there (``r1 deploy``).
    """
    f = _flows(source)
    pipeline = f["r1-pipeline"]
    return [
        pipeline.to_deployment(name="r1-pipeline", parameters={"recipe": recipe},
                               description="The R1 recipe end to end.", tags=["r1"]),
        pipeline.to_deployment(name="curate", parameters={"recipe": recipe, "targets": ["curate"]},
                               description="The recipe's curated data set.", tags=["r1"]),
        pipeline.to_deployment(name="grpo", parameters={"recipe": recipe, "targets": ["grpo"]},
                               description="The recipe's GRPO stages (and what they need).", tags=["r1"]),
        pipeline.to_deployment(name="distill", parameters={"recipe": "recipes/distill.yaml",
                                                           "targets": ["rejection_sampling", "sft"]},
                               description="Teacher traces (rejection sampling) -> student SFT.", tags=["r1"]),
        f["evaluate"].to_deployment(name="evaluate", parameters={"recipe": recipe},
                                    description="R1-protocol evaluation of a model URI.", tags=["r1"]),
        f["nightly-eval"].to_deployment(name="nightly-eval", cron=NIGHTLY_CRON,
                                        parameters={"recipe": recipe, "model_name": model_name},
                                        description="Nightly evaluation of the registry's champion and challenger.",
                                        tags=["r1", "nightly"]),
        f["promote"].to_deployment(name="promote", parameters={"recipe": recipe, "model_name": model_name},
                                   description="Promote the challenger to champion through the recipe's gate.",
                                   tags=["r1", "registry"]),
    ]


def stage_deployment(pool: str, source: str):
    """Deployment ``r1-stage/<pool>``: runs one stage of a pipeline on work pool ``pool`` (the
    stages a recipe places there with ``work_pool: <pool>``)."""
    return _flows(source)["r1-stage"].to_deployment(
        name=pool, description=f"One pipeline stage, on work pool {pool} (recipe stages with work_pool: {pool}).",
        tags=["r1", "stage"])


def main(prefect_api_url: str | None = None) -> int:
    """``r1 serve``: serve the deployments against ``prefect_api_url`` (default: ``$PREFECT_API_URL``,
    else the local ``r1 ui`` server at http://127.0.0.1:4200/api)."""
    import prefect.settings

    url = prefect_api_url or os.environ.get("PREFECT_API_URL") or "http://127.0.0.1:4200/api"
    os.environ["PREFECT_API_URL"] = url  # the flow-run processes it starts inherit it
    deps = deployments()
    print(f"serving {len(deps)} deployments against {url} (Ctrl-C stops)", flush=True)
    with prefect.settings.temporary_settings({prefect.settings.PREFECT_API_URL: url}):
        serve(*deps)
    return 0


if __name__ == "__main__":
    main()
