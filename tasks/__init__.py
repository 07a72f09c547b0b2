"""Prefect tasks: one thin wrapper per r1core stage, with retries and caching in the decorator.

Every stage task is ``(recipe_json, stage, parent_run_id, inputs)``: ``stage`` names the stage
in ``recipe.stages`` and ``inputs`` are its inputs resolved to URIs (small values, as are the
outputs: run ids, URIs, metric dicts). The cache key of a stage is its settings, the seed, its
inputs and the source of the stage function, so re-running a pipeline after a failure skips the
stages that completed; the parent MLflow run id is not part of the key.
"""

from __future__ import annotations

import hashlib
import inspect
import json

from r1core.settings import configure_environment

configure_environment()

from prefect import task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from r1core import stages  # noqa: E402
from r1core.config import Recipe  # noqa: E402
from r1core.stage_process import run_stage_in_process  # noqa: E402
from r1core.stage_utils import release_memory  # noqa: E402


def _recipe(recipe_json: str) -> Recipe:
    return Recipe.model_validate_json(recipe_json)


def stage_cache_key(fn):
    """A ``cache_key_fn``: hash of the stage's settings, the seed, its resolved inputs and ``fn``'s source.

    The stage's name is part of the key (two stages of one type with the same settings are two
    stages); the parent run id is not (a new pipeline run reuses a completed stage).
    """
    source = inspect.getsource(fn)

    def key(context, parameters: dict) -> str:
        recipe = json.loads(parameters["recipe_json"])
        stage = parameters["stage"]
        payload = {
            "stage": stage,
            "settings": recipe["stages"][stage],
            "recipe": {k: recipe.get(k) for k in ("seed", "experiment", "name")},
            "inputs": parameters.get("inputs") or {},
            "source": hashlib.sha256(source.encode()).hexdigest(),
        }
        return f"{stage}-" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]

    return key


_TASK = dict(persist_result=True, retry_delay_seconds=10)


@task(name="base-model", retries=1, cache_policy=NO_CACHE, retry_delay_seconds=10)
def base_model(recipe_json: str) -> dict:
    """Log the base model to MLflow once (found again by tag) and return its URI."""
    try:
        return stages.base_model(_recipe(recipe_json))
    finally:
        release_memory("base-model")


def _stage_task(type_: str, doc: str, retries: int):
    fn = stages.STAGE_FUNCTIONS[type_]

    def run(recipe_json: str, stage: str, parent_run_id: str | None, inputs: dict) -> dict:
        recipe = _recipe(recipe_json)
        if recipe.concurrency > 1:  # stages at once: each in its own process (model loading is not thread-safe)
            return run_stage_in_process(recipe_json, stage, parent_run_id, inputs)
        try:
            return fn(recipe, stage, parent_run_id, **inputs)
        finally:  # stages share this process: hand the next one the memory this one freed
            release_memory(stage)

    run.__doc__ = doc
    run.__name__ = run.__qualname__ = type_  # Prefect's task key derives from the name
    return task(run, name=type_.replace("_", "-"), retries=retries, cache_key_fn=stage_cache_key(fn), **_TASK)


curate = _stage_task("curate", "Curate the training set (normalise, dedupe, decontaminate, filter, sample).", 2)
grpo = _stage_task("grpo", "GRPO with the R1 rule-based rewards; returns the policy's model URI.", 1)
rejection_sampling = _stage_task(
    "rejection_sampling", "Sample from the teacher and keep verified traces; returns the traces' dataset URI.", 1)
sft = _stage_task("sft", "SFT of the student on traces; returns its model URI.", 1)
evaluate = _stage_task("evaluate", "R1-protocol evaluation (k samples, T=0.6, top-p 0.95); metrics attached to the model.", 1)


@task(name="register", retries=2, cache_policy=NO_CACHE, retry_delay_seconds=5)
def register(recipe_json: str, stage: str, parent_run_id: str, inputs: dict) -> dict:
    """Register the model, set challenger, and champion by the gate (idempotent: never cached)."""
    return stages.register(_recipe(recipe_json), stage, parent_run_id, **inputs)


STAGE_TASKS = {"curate": curate, "grpo": grpo, "rejection_sampling": rejection_sampling, "sft": sft,
               "evaluate": evaluate, "register": register}
