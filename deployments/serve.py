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


def deployments(recipe: str = "recipes/quickstart.yaml", model_name: str = "r1-quickstart-student") -> list:
    """The deployment objects (also used by tests to check names, schedules and parameters)."""
    return [
        r1_pipeline.to_deployment(name="r1-pipeline", parameters={"recipe": recipe},
                                  description="The R1 recipe end to end.", tags=["r1"]),
        r1_pipeline.to_deployment(name="curate", parameters={"recipe": recipe, "targets": ["curate"]},
                                  description="The recipe's curated data set.", tags=["r1"]),
        r1_pipeline.to_deployment(name="grpo", parameters={"recipe": recipe, "targets": ["grpo"]},
                                  description="The recipe's GRPO stages (and what they need).", tags=["r1"]),
        r1_pipeline.to_deployment(name="distill", parameters={"recipe": "recipes/distill.yaml",
                                                              "targets": ["rejection_sampling", "sft"]},
                                  description="Teacher traces (rejection sampling) -> student SFT.", tags=["r1"]),
        evaluate.to_deployment(name="evaluate", parameters={"recipe": recipe},
                               description="R1-protocol evaluation of a model URI.", tags=["r1"]),
        nightly_eval.to_deployment(name="nightly-eval", cron=NIGHTLY_CRON,
                                   parameters={"recipe": recipe, "model_name": model_name},
                                   description="Nightly evaluation of the registry's champion and challenger.",
                                   tags=["r1", "nightly"]),
        promote.to_deployment(name="promote", parameters={"recipe": recipe, "model_name": model_name},
                              description="Promote the challenger to champion through the recipe's gate.",
                              tags=["r1", "registry"]),
    ]


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
