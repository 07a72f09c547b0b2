"""Flow ``evaluate``: R1-protocol evaluation of any model, on its own MLflow run."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from r1core.config import evaluation_recipe, load_recipe
from tasks import stages as stage_tasks


@flow(name="evaluate")
def evaluate(
    model: Annotated[str, Field(description="MLflow model URI, hub id or path.")] = "models:/r1-quickstart-student@champion",
    recipe: Annotated[str, Field(description="Recipe whose evaluate stage sets the protocol.")] = "recipes/quickstart.yaml",
    overrides: Annotated[list[str], Field(description="key=value overrides, e.g. evaluate.limit=50")] = [],
    benchmarks: Annotated[list[str] | None, Field(description="Benchmarks (aime24, math500, amc23, gsm8k).")] = None,
    num_samples: Annotated[int | None, Field(description="k samples per problem.", ge=1)] = None,
    limit: Annotated[int | None, Field(description="First N problems of each benchmark.", ge=1)] = None,
    max_new_tokens: Annotated[int | None, Field(description="Completion cap in tokens.", ge=1)] = None,
    budgets: Annotated[list[int] | None, Field(description="s1 budget forcing: thinking budgets in tokens.")] = None,
    num_waits: Annotated[int | None, Field(description="s1 budget forcing: times 'Wait' extends thinking.", ge=0)] = None,
    stage: Annotated[str | None, Field(description="Which evaluate stage of the recipe (default: evaluate).")] = None,
) -> dict:
    """Evaluate ``model`` with the protocol of the recipe's evaluate stage (benchmarks, k, sampling).

    Args:
        model: MLflow model URI (models:/name@champion, models:/m-...), hub id or path.
        recipe: Recipe whose evaluate stage sets benchmarks, k and sampling.
        overrides: key=value recipe overrides, e.g. evaluate.limit=50.
        benchmarks: Benchmarks to run (default: the recipe's).
        num_samples: k samples per problem (default: the recipe's).
        limit: First N problems of each benchmark (default: the recipe's).
        max_new_tokens: Completion cap in tokens (default: the recipe's).
        budgets: s1 budget forcing sweep over these thinking budgets, in tokens (default: none).
        num_waits: s1 budget forcing: times an early end of thinking becomes 'Wait'.
        stage: The recipe's evaluate stage to take the protocol from (default: the one named evaluate).
    """
    settings = {k: v for k, v in [("benchmarks", benchmarks), ("num_samples", num_samples), ("limit", limit),
                                  ("max_new_tokens", max_new_tokens)] if v is not None}
    if budgets or num_waits is not None:
        settings["budget_forcing"] = {k: v for k, v in [("max_thinking_tokens", budgets), ("num_waits", num_waits)]
                                      if v is not None}
    cfg, name = evaluation_recipe(load_recipe(recipe, overrides), model, stage, settings)
    return stage_tasks.evaluate.with_options(refresh_cache=True)(cfg.to_json(), name, None, {})
