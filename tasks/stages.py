"""Prefect tasks: one thin wrapper per r1core stage, with retries and caching in the decorator.

Every stage task is ``(recipe_json, stage, parent_run_id, upstream)``: ``stage`` names the stage
in ``recipe.stages``; ``upstream`` maps ``base`` and the stages it reads from to their outputs.
The pipeline flow passes those as the upstream tasks' futures, so Prefect orders the stages
(and draws the graph's edges in its UI) and resolves them to small values (run ids, URIs, metric
dicts) before the task runs; the task then resolves its own inputs
(:func:`r1core.graph.resolve_inputs`).

Caching (:data:`STAGE_CACHE_POLICY`, Prefect cache policies): a stage is skipped when a completed
run had the same stage settings, seed and resolved inputs (:class:`StageInputs`: not the whole
recipe, not the parent MLflow run id, so a new pipeline run reuses a completed stage), the same
task source (``TASK_SOURCE``) and the same library (:class:`LibraryVersion`: every file of
``r1core``, so a change inside ``r1core/grpo`` invalidates what it produced).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.utilities.hashing import hash_objects

import r1core
from r1core import graph, stages
from r1core.config import Recipe
from r1core.stage_process import run_stage_in_process
from r1core.stage_utils import release_memory


def _recipe(recipe_json: str) -> Recipe:
    return Recipe.model_validate_json(recipe_json)


@dataclass
class StageInputs(CachePolicy):
    """Cache key part: the stage's name and settings (not where it runs: ``work_pool``), the recipe's
    seed, experiment and name, and the stage's inputs resolved from ``upstream`` (URIs of models and
    data sets)."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        recipe = _recipe(inputs["recipe_json"])
        stage = inputs["stage"]
        resolved = graph.resolve_inputs(recipe, stage, inputs.get("upstream") or {})
        settings = recipe.stages[stage]
        payload = {"stage": stage, "settings": settings.model_dump(mode="json", exclude=set(settings.PLACEMENT)),
                   "recipe": {"seed": recipe.seed, "experiment": recipe.experiment_name, "name": recipe.name},
                   "inputs": resolved}
        return hash_objects(payload, raise_on_failure=True)


@functools.cache
def library_fingerprint() -> str:
    """SHA-256 of every source file of the ``r1core`` package (Python and C++), by path and content."""
    root = Path(r1core.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".cpp") and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class LibraryVersion(CachePolicy):
    """Cache key part: :func:`library_fingerprint` (a change anywhere in ``r1core`` invalidates)."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        return library_fingerprint()


#: The stages' cache policy.
STAGE_CACHE_POLICY = StageInputs() + TASK_SOURCE + LibraryVersion()

def retry_unless_input_error(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: retry what may pass on a second try (an endpoint outage, a
    killed process), not an error a rerun repeats: bad input (``ValueError``: recipe, data, model
    references, TRL args; each names its fix) or a verifier that cannot start."""
    from r1core.verify import VerifierUnavailable

    exc = state.data if isinstance(state.data, BaseException) else None
    return not isinstance(exc, (ValueError, VerifierUnavailable))


_TASK = dict(persist_result=True, retry_delay_seconds=10, retry_condition_fn=retry_unless_input_error)


@task(name="base-model", retries=1, cache_policy=NO_CACHE, retry_delay_seconds=10,
      retry_condition_fn=retry_unless_input_error)
def base_model(recipe_json: str) -> dict:
    """Log the base model to MLflow once (found again by tag) and return its URI."""
    try:
        return stages.base_model(_recipe(recipe_json))
    finally:
        release_memory("base-model")


def stage_inputs(recipe: Recipe, stage: str, upstream: dict[str, dict]) -> dict[str, Any]:
    """The keyword inputs of ``stage``'s function; a register stage also gets ``lineage`` (every
    upstream output, which its registered version is tagged with)."""
    inputs = graph.resolve_inputs(recipe, stage, upstream)
    if recipe.stages[stage].type == "register":
        inputs["lineage"] = dict(upstream)
    return inputs


def orchestrator_tags() -> dict[str, str]:
    """``prefect.flow_run_id`` and ``prefect.flow_run_url`` of the flow run this task runs in (so an
    evaluation outside a pipeline still links back to the run that asked for it)."""
    from prefect.runtime import flow_run

    from r1core.tracking import TAG_FLOW_RUN, TAG_FLOW_RUN_URL

    run_id = flow_run.get_id()
    if not run_id:
        return {}
    url = flow_run_ui_url()
    return {TAG_FLOW_RUN: run_id, **({TAG_FLOW_RUN_URL: url} if url else {})}


def flow_run_ui_url() -> str | None:
    """This flow run's page in the Prefect UI, or ``None`` where no UI URL is configured (Prefect then
    returns ``"None/flow-runs/..."``, which is no link)."""
    from prefect.runtime import flow_run

    url = flow_run.get_flow_run_ui_url()
    return url if url and url.startswith(("http://", "https://")) else None


def _stage_task(type_: str, doc: str, retries: int, cache_policy=STAGE_CACHE_POLICY):
    def run(recipe_json: str, stage: str, parent_run_id: str | None, upstream: dict) -> dict:
        recipe = _recipe(recipe_json)
        inputs = stage_inputs(recipe, stage, upstream)
        if parent_run_id is None:  # a stage run of its own (the evaluate flow): link it to this flow run
            inputs["run_tags"] = orchestrator_tags()
        if recipe.concurrency > 1:  # stages at once: each in its own process (model loading is not thread-safe)
            return run_stage_in_process(recipe_json, stage, parent_run_id, inputs)
        try:
            return stages.run_stage(recipe, stage, parent_run_id, **inputs)
        finally:  # stages share this process: hand the next one the memory this one freed
            release_memory(stage)

    run.__doc__ = doc
    run.__name__ = run.__qualname__ = type_  # Prefect's task key derives from the name
    return task(run, name=type_.replace("_", "-"), retries=retries, cache_policy=cache_policy, **_TASK)


curate = _stage_task("curate", "Curate the training set (normalise, dedupe, decontaminate, filter, sample).", 2)
grpo = _stage_task("grpo", "GRPO with the R1 rule-based rewards; returns the policy's model URI.", 1)
rejection_sampling = _stage_task(
    "rejection_sampling", "Sample from the teacher and keep verified traces; returns the traces' dataset URI.", 1)
sft = _stage_task("sft", "SFT of the student on traces; returns its model URI.", 1)
evaluate = _stage_task("evaluate", "R1-protocol evaluation (k samples, T=0.6, top-p 0.95); metrics attached to the model.", 1)
register = _stage_task("register", "Register the model, set challenger, and champion by the gate (idempotent: never "
                       "cached).", 2, cache_policy=NO_CACHE)
compare = _stage_task("compare", "Distillation report: student, teacher and base under one protocol, gain recovered, "
                      "n-gram contamination of the SFT traces.", 1)

STAGE_TASKS = {"curate": curate, "grpo": grpo, "rejection_sampling": rejection_sampling, "sft": sft,
               "evaluate": evaluate, "register": register, "compare": compare}


#: The flow a placed stage runs as: deployment ``r1-stage/<work pool>`` (``r1 deploy --stages-only``).
STAGE_FLOW = "r1-stage"


class PlacementError(RuntimeError):
    """A stage placed on a work pool did not complete there (or cannot be sent there)."""


def stage_deployment(pool: str) -> str:
    """The deployment that runs one stage on work pool ``pool``."""
    return f"{STAGE_FLOW}/{pool}"


def check_placements(recipe: Recipe, selected: list[str]) -> None:
    """Before the first stage: every work pool a selected stage names has its ``r1-stage``
    deployment (else a placed stage would fail after the stages before it ran).

    Raises:
        PlacementError: a deployment is missing (the message gives the command that registers it).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    pools = sorted({recipe.stages[s].work_pool for s in selected if recipe.stages[s].work_pool})
    if not pools:
        return
    with get_client(sync_client=True) as client:
        for pool in pools:
            try:
                client.read_deployment_by_name(stage_deployment(pool))
            except ObjectNotFound:
                users = [s for s in selected if recipe.stages[s].work_pool == pool]
                raise PlacementError(
                    f"stages {', '.join(users)} are placed on work pool {pool!r}, but deployment "
                    f"{stage_deployment(pool)} does not exist on this Prefect server. Register it with "
                    f"`r1 deploy --pool {pool} --stages-only` and start a worker: "
                    f"`prefect worker start --pool {pool}`.") from None


@task(name="placed-stage", cache_policy=NO_CACHE, retries=0)
def placed_stage(recipe_json: str, stage: str, parent_run_id: str, upstream: dict, fresh: bool = False) -> dict:
    """Run ``stage`` as a flow run of deployment ``r1-stage/<its work_pool>`` (a worker of that pool
    picks it up, on whatever machine it runs) and wait for it; return the stage's outputs.

    The stage's MLflow run is still a child of ``parent_run_id``, its retries and cache are its
    task's, on the worker; the outputs come back through MLflow (:func:`r1core.tracking.read_placed_output`).

    Raises:
        PlacementError: the flow run ended in a state other than Completed (its message named).
    """
    from prefect.deployments import run_deployment

    from r1core.tracking import read_placed_output

    pool = _recipe(recipe_json).stages[stage].work_pool
    name = stage_deployment(pool)
    run = run_deployment(name, parameters={"recipe_json": recipe_json, "stage": stage, "parent_run_id": parent_run_id,
                                           "upstream": upstream, "fresh": fresh}, timeout=None, as_subflow=True,
                         flow_run_name=f"{stage}@{pool}")
    if run.state is None or not run.state.is_completed():
        state = run.state.name if run.state else "unknown"
        message = (run.state.message or "") if run.state else ""
        raise PlacementError(f"stage {stage} on work pool {pool!r}: flow run {run.name} ({run.id}) ended {state}. "
                             f"{message}".strip())
    return read_placed_output(parent_run_id, stage, str(run.id))


#: Prefix of the flow-run tag naming the process that runs it (``r1.owner:host:pid:start``).
OWNER_TAG_PREFIX = "r1.owner:"


def owner_flow_tag() -> str:
    """The tag ``r1 pipeline`` / ``r1 eval`` put on their flow runs (:func:`r1core.tracking.owner_tag`)."""
    from r1core.tracking import owner_tag

    return OWNER_TAG_PREFIX + owner_tag()


def crash_orphaned_flow_runs() -> list[str]:
    """Mark Crashed every Running (or Pending) flow run whose owning ``r1 pipeline`` / ``r1 eval``
    process on this host is gone (a ``kill -9`` leaves it Running in the state folder's Prefect
    database: nothing was left alive to report it). Runs owned by live processes or other hosts
    are left alone. Returns the names of the runs marked."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    from r1core.tracking import owner_gone

    marked = []
    states = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(state=states)):
            owner = next((t[len(OWNER_TAG_PREFIX):] for t in run.tags if t.startswith(OWNER_TAG_PREFIX)), None)
            if owner and owner_gone(owner):
                client.set_flow_run_state(run.id, Crashed(message=f"its process ({owner}) was killed; marked by the "
                                                                  "next r1 run in this state folder"), force=True)
                marked.append(run.name)
    return marked
