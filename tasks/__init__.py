"""Prefect tasks: one thin wrapper per r1core stage, with retries and caching in the decorator.

Inputs and outputs are small values (the recipe as JSON, run ids, URIs, metric dicts). The
cache key of a stage is its own recipe section, the seed, its upstream URIs and the source of
the stage function, so re-running a pipeline after a failure skips the stages that completed;
the parent MLflow run id is not part of the key.
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


def _recipe(recipe_json: str) -> Recipe:
    return Recipe.model_validate_json(recipe_json)


def stage_cache_key(stage: str, sections: tuple[str, ...], fn):
    """A ``cache_key_fn``: hash of the stage's recipe sections, seed, upstream inputs and ``fn``'s source."""
    source = inspect.getsource(fn)

    def key(context, parameters: dict) -> str:
        recipe = json.loads(parameters["recipe_json"])
        payload = {
            "stage": stage,
            "sections": {s: recipe.get(s) for s in (*sections, "seed", "experiment", "name")},
            "inputs": {k: v for k, v in parameters.items() if k not in ("recipe_json", "parent_run_id")},
            "source": hashlib.sha256(source.encode()).hexdigest(),
        }
        return f"{stage}-" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]

    return key


_TASK = dict(persist_result=True, retry_delay_seconds=10)


@task(name="base-model", retries=1, cache_policy=NO_CACHE, **{k: v for k, v in _TASK.items() if k != "persist_result"})
def base_model(recipe_json: str) -> dict:
    """Log the base model to MLflow once (found again by tag) and return its URI."""
    return stages.base_model(_recipe(recipe_json))


@task(name="curate", retries=2, cache_key_fn=stage_cache_key("curate", ("curate",), stages.curate), **_TASK)
def curate(recipe_json: str, parent_run_id: str) -> dict:
    """Curate the training set (normalise, dedupe, decontaminate, sample)."""
    return stages.curate(_recipe(recipe_json), parent_run_id)


@task(name="grpo", retries=1, cache_key_fn=stage_cache_key("grpo", ("grpo", "model"), stages.grpo), **_TASK)
def grpo(recipe_json: str, parent_run_id: str, dataset_uri: str, base: dict) -> dict:
    """GRPO with the R1 rule-based rewards; returns the policy's model URI."""
    return stages.grpo(_recipe(recipe_json), parent_run_id, dataset_uri, base)


@task(name="rejection-sampling", retries=1,
      cache_key_fn=stage_cache_key("rejection_sampling", ("rejection_sampling",), stages.rejection_sampling), **_TASK)
def rejection_sampling(recipe_json: str, parent_run_id: str, dataset_uri: str, teacher_uri: str) -> dict:
    """Sample from the teacher and keep verified traces; returns the traces' dataset URI."""
    return stages.rejection_sampling(_recipe(recipe_json), parent_run_id, dataset_uri, teacher_uri)


@task(name="sft", retries=1, cache_key_fn=stage_cache_key("sft", ("sft",), stages.sft), **_TASK)
def sft(recipe_json: str, parent_run_id: str, traces_uri: str, student_uri: str) -> dict:
    """Distil the traces into the student; returns the student's model URI."""
    return stages.sft(_recipe(recipe_json), parent_run_id, traces_uri, student_uri)


@task(name="evaluate", retries=1, cache_key_fn=stage_cache_key("evaluate", ("evaluate",), stages.evaluate), **_TASK)
def evaluate(recipe_json: str, parent_run_id: str | None, model_uri: str) -> dict:
    """R1-protocol evaluation (k samples, T=0.6, top-p 0.95); metrics attached to the model."""
    return stages.evaluate(_recipe(recipe_json), parent_run_id, model_uri)


@task(name="register", retries=2, cache_policy=NO_CACHE, retry_delay_seconds=5)
def register(recipe_json: str, parent_run_id: str, outputs: dict) -> dict:
    """Register the student, set challenger, and champion by the gate."""
    return stages.register(_recipe(recipe_json), parent_run_id, outputs)
