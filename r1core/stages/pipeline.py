"""What runs around the stages: the checks before any stage starts, the pipeline's parent MLflow
run, and the base model logged once per store."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from r1core import data, models, tracking
from r1core.config import Recipe, check_args
from r1core.stage_utils import sha
from r1core.stages.common import HELDOUT, TAG_BASE_REF, TAG_MODEL_ROLE, slug

logger = logging.getLogger(__name__)


def validate(recipe: Recipe, *, here: bool = False) -> None:
    """Check everything that can be checked before expensive work, for every stage: data sets,
    models, reward names, ``args`` keys against the TRL config class each stage builds, training
    launches (the stage graph itself is checked when the recipe loads,
    :func:`r1core.graph.check_graph`). ``r1 recipe``, ``r1 pipeline`` and ``r1 eval`` all call it
    before Prefect starts.

    Args:
        here: the stages without a ``work_pool`` run on this machine (``r1 pipeline``): also check
            their launches against its devices (more processes than GPUs, DeepSpeed without CUDA).

    Raises:
        r1core.data.DataError, r1core.models.ModelNotFoundError, ValueError: with the fix.
    """
    from r1core.graph import upstream
    from r1core.rewards import get_rewards

    refs = [recipe.model]
    for name, st in recipe.stages.items():
        if st.type == "curate":
            if st.reasoning_gym is not None:
                from r1core.procedural import check_tasks

                check_tasks(st.reasoning_gym)
            for spec in [*([] if st.reasoning_gym else [st.dataset]), *st.decontaminate]:
                data.check_available(spec)
        elif st.type == "evaluate":
            for spec in st.benchmarks:
                data.check_available(spec)
            if st.heldout is not None:
                _check_heldout_source(recipe, f"stages.{name}.heldout", st.heldout)
        elif st.type == "grpo":
            from r1core import grpo

            get_rewards(st.rewards, st.reward_args)
            _check_grpo_eval(recipe, name)
            grpo.check_args(st, f"stages.{name}")
        elif st.type == "sft":
            from trl import SFTConfig

            check_args(SFTConfig, f"stages.{name}", st.args)
            for i, source in enumerate(st.mixture or []):
                if source.data.endswith(".jsonl"):  # stage outputs are graph inputs, checked when the recipe loads
                    from r1core.sft import read_conversational

                    read_conversational(Path(source.data), f"stages.{name}.mixture.{i}.data")
        elif st.type == "compare":
            from r1core.config import evaluation_recipe

            protocol, stage = evaluation_recipe(recipe, "base", stage=st.protocol, settings=st.overrides)
            for spec in protocol.stages[stage].benchmarks:
                data.check_available(spec)
        if st.type in ("grpo", "sft"):
            from r1core.launch import check_launch

            check_launch(st, f"stages.{name}", devices=here and not st.work_pool)
        refs += [ref for ref, kind in st.input_refs().values()
                 if kind == "model" and ref != "base" and upstream(ref) is None]
    for ref in refs:
        resolved = models.resolve_model(ref)  # raises ModelNotFoundError with the fix
        if resolved.is_hub and data.data_dir() is not None:
            logger.info("model %s will be read from the hub", ref)


def _check_grpo_eval(recipe: Recipe, name: str) -> None:
    """A GRPO stage's in-training evaluation must name benchmarks that exist: catalog benchmarks
    in the mirror, and ``heldout`` only when ``grpo.data`` is a curate stage with procedural tasks."""
    ev = recipe.stages[name].eval
    if ev is None:
        return
    for spec in ev.benchmarks:
        if spec != HELDOUT:
            data.check_available(spec)
            continue
        _check_heldout_source(recipe, f"stages.{name}.eval.benchmarks names 'heldout', but stages.{name}.data",
                              recipe.stages[name].data)


def _check_heldout_source(recipe: Recipe, what: str, ref: str) -> None:
    """``ref`` must be the output of a curate stage that writes a held-out set (procedural tasks)."""
    from r1core.graph import upstream

    source = recipe.stages.get(upstream(ref) or "")
    if source is None or source.type != "curate" or source.reasoning_gym is None or not source.reasoning_gym.heldout_size:
        raise ValueError(f"{what} ({ref}) is not a curate stage with procedural tasks and a held-out set: curate with "
                         "dataset: reasoning_gym (and reasoning_gym.heldout_size > 0), or name catalog benchmarks "
                         "such as math500.")


def start_pipeline(recipe: Recipe, flow_run_id: str | None = None, flow_run_url: str | None = None) -> str:
    """Create the pipeline's parent MLflow run (tagged with recipe and Prefect ids); return its id."""
    tags = {tracking.TAG_RECIPE: recipe.name, "r1.recipe_json_sha": sha(recipe.to_json())}
    if flow_run_id:
        tags[tracking.TAG_FLOW_RUN] = flow_run_id
    if flow_run_url:
        tags[tracking.TAG_FLOW_RUN_URL] = flow_run_url
    run_id = tracking.start_parent_run(recipe.experiment_name, f"{recipe.name}-pipeline", tags,
                                       {"recipe": recipe.name, "model": recipe.model, "seed": recipe.seed})
    client = MlflowClient()
    client.log_text(run_id, recipe.to_json(), "recipe.json")
    return run_id


def base_model(recipe: Recipe) -> dict[str, str]:
    """Log the recipe's base model to MLflow once per store and return ``{model_id, model_uri, ref}``.

    Hub ids and MLflow URIs are referenced as they are (not copied); local checkpoints and the
    default model are logged once, in a run named ``base-model``, and found again by tag.
    """
    ref = recipe.model
    if ref.startswith(("models:/", "runs:/")):
        return {"ref": ref, "model_uri": ref, "model_id": ref.split("/", 1)[1] if ref.startswith("models:/m-") else ""}
    resolved = models.resolve_model(ref)
    if resolved.is_hub:
        return {"ref": ref, "model_uri": ref, "model_id": ""}
    exp_id = tracking.setup(recipe.experiment_name)
    model_id = tracking.find_logged_model(exp_id, TAG_BASE_REF, ref)
    if model_id is None:
        model, tok = models.load_model_and_tokenizer(ref)
        with mlflow.start_run(experiment_id=exp_id, run_name="base-model", tags={**tracking.environment_tags(),
                              TAG_BASE_REF: ref, tracking.TAG_STAGE: "base-model"}):
            info = tracking.log_model(model, tok, name=slug(ref), tags={TAG_BASE_REF: ref, TAG_MODEL_ROLE: "base"})
        model_id = info.model_id
    return {"ref": ref, "model_uri": f"models:/{model_id}", "model_id": model_id}
