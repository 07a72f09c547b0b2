"""The ``register`` stage: the model becomes a registered version tagged with its whole lineage;
``challenger`` is set, and ``champion`` moves through the one promotion gate (:mod:`r1core.promote`)."""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from r1core import tracking
from r1core.config import Recipe
from r1core.stages.common import stage_run


def lineage_tags(recipe: Recipe, upstream_outputs: dict[str, dict]) -> dict[str, str]:
    """Tags naming every upstream stage's MLflow run and output, so a registered version leads
    back through each stage to the data: ``r1.run.<stage>``, ``r1.model.<stage>``,
    ``r1.dataset.<stage>`` (+ ``.digest``), ``r1.teacher.<stage>``, and ``r1.base_model``.
    ``upstream_outputs`` maps stage names (and ``base``) to their results."""
    tags = {"r1.recipe": recipe.name}
    for stage, out in upstream_outputs.items():
        if stage == "base":
            tags["r1.base_model"] = out["model_uri"]
            continue
        tags[f"r1.run.{stage}"] = out["run_id"]
        if "model_uri" in out:
            tags[f"r1.model.{stage}"] = out["model_uri"]
        if "dataset_uri" in out:
            tags[f"r1.dataset.{stage}"] = out["dataset_uri"]
            tags[f"r1.dataset.{stage}.digest"] = out.get("digest", "")
        if "teacher" in out:
            tags[f"r1.teacher.{stage}"] = out["teacher"]
    return tags


def register(recipe: Recipe, name: str, parent_run_id: str, model: str, evaluation: dict | None = None,
             lineage: dict[str, dict] | None = None) -> dict[str, Any]:
    """Register ``model`` (a ``models:/m-...`` URI) as a new model version tagged with its lineage
    (:func:`lineage_tags` of ``lineage``, the upstream stages' outputs) and ``evaluation``'s metrics;
    set ``challenger``, then move ``champion`` through the project's one gate
    (:func:`r1core.promote.promote`: no champion yet, or the gate metric beats the champion's by
    more than ``min_margin`` with no guard benchmark regressed beyond noise). Never deletes a
    version; re-registering the same model returns its existing version.
    """
    from r1core.promote import promote
    cfg = recipe.stages[name]
    client = MlflowClient()
    with stage_run(recipe, name, parent_run_id) as run:
        metrics = (evaluation or {}).get("metrics", {})
        gate_value = metrics.get(cfg.gate_metric)
        # the stage that trained the model (an evaluation's output names the model too, not its parent)
        producer = next((o for o in (lineage or {}).values() if o.get("model_uri") == model and "input_model" in o), {})
        tags = {
            **lineage_tags(recipe, lineage or {}),
            "r1.pipeline_run_id": parent_run_id,
            "r1.parent_model": producer.get("input_model", ""),
            **{f"r1.metric.{tracking.mlflow_key(k)}": f"{v:.6g}" for k, v in metrics.items()},
        }
        model_id = model.removeprefix("models:/") if model.startswith("models:/m-") else None
        try:
            client.get_registered_model(cfg.model_name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(cfg.model_name, description=f"Models of recipe {recipe.name}.")
        existing = [v for v in client.search_model_versions(f"name='{cfg.model_name}'")
                    if v.source == model or (model_id and getattr(v, "model_id", None) == model_id)]
        if existing:  # a re-run over a cached model: same version, no duplicate
            version = existing[0]
        else:
            version = mlflow.register_model(model, cfg.model_name, tags=tags)
        client.set_registered_model_alias(cfg.model_name, "challenger", version.version)
        gate = promote(cfg.model_name, cfg.gate_metric, cfg.min_margin, tuple(cfg.guard_benchmarks))
        decision = gate.reason
        client.set_model_version_tag(cfg.model_name, version.version, "r1.gate.decision", decision)
        mlflow.set_tags({"r1.registered_model": cfg.model_name, "r1.registered_version": version.version,
                         "r1.gate.decision": decision})
        if gate_value is not None:
            mlflow.log_metric("gate/challenger", gate_value)
        champion_value = gate.numbers.get(f"champion/{tracking.mlflow_key(cfg.gate_metric)}")
        if champion_value is not None:
            mlflow.log_metric("gate/champion", champion_value)
        aliases = client.get_model_version(cfg.model_name, version.version).aliases
        return {"run_id": run.info.run_id, "name": cfg.model_name, "version": str(version.version),
                "aliases": sorted(aliases), "decision": decision}
