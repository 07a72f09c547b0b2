"""The ``grpo`` stage: GRPO on a curated set (:mod:`r1core.grpo`), in this process or in
``accelerate launch`` subprocesses (:mod:`r1core.launch`), resumable from its last checkpoint;
the trained policy becomes a LoggedModel."""

from __future__ import annotations

import json
import shutil
from typing import Any

import mlflow

from r1core import models, tracking
from r1core.config import Recipe
from r1core.stage_utils import finite, sha, work_dir
from r1core.stages.common import TAG_MODEL_ROLE, stage_run


def grpo(recipe: Recipe, name: str, parent_run_id: str, data: str, model: str) -> dict[str, Any]:
    """GRPO on the problems of data set ``data`` (a URI) from policy ``model`` (a model URI or
    reference), see :mod:`r1core.grpo`; the trained policy becomes a LoggedModel."""
    from r1core.grpo import train_grpo
    from r1core.training_eval import eval_sets

    cfg = recipe.stages[name]
    dataset_uri, policy_ref = data, model
    # The work folder is keyed by the stage's inputs: a retry of a killed run finds its checkpoints
    # and its MLflow run there, and continues both.
    out_dir = work_dir("grpo", sha(json.dumps([name, cfg.model_dump(mode="json"), dataset_uri, policy_ref,
                                                 recipe.seed], sort_keys=True)))
    run_file = out_dir / "mlflow_run_id"
    resume = run_file.read_text().strip() if run_file.exists() and any(out_dir.glob("checkpoint-*")) else None
    with stage_run(recipe, name, parent_run_id, resume_run_id=resume) as run:
        run_file.write_text(run.info.run_id)
        rows = tracking.read_dataset(dataset_uri)
        tracking.log_input(tracking.pandas_dataset(rows, dataset_uri, "curated", "answer"), "training")
        mlflow.set_tags({"r1.input_model": policy_ref, "r1.rewards": json.dumps(cfg.rewards)})
        if cfg.accelerate_config or cfg.num_processes > 1:  # accelerate launch subprocesses
            from r1core.launch import launch_stage

            summary = launch_stage(recipe, name, dataset_uri, policy_ref, out_dir, run.info.run_id)
            policy, tok = models.load_model_and_tokenizer(str(out_dir))
        else:
            policy, tok = models.load_model_and_tokenizer(policy_ref)
            summary = train_grpo(policy, tok, rows, cfg, str(out_dir), seed=recipe.seed,
                                 eval_sets=eval_sets(cfg, dataset_uri))
        mlflow.log_metrics({tracking.mlflow_key(f"summary/{k}"): v for k, v in finite(summary).items()})
        info = tracking.log_model(policy, tok, name="grpo-policy",
                                  params={"rewards": json.dumps(cfg.rewards), "max_steps": cfg.max_steps},
                                  tags={TAG_MODEL_ROLE: "grpo", "r1.parent_model": policy_ref})
        shutil.rmtree(out_dir, ignore_errors=True)
        return {"run_id": run.info.run_id, "model_uri": f"models:/{info.model_id}", "model_id": info.model_id,
                "input_model": policy_ref, **{k: float(v) for k, v in finite(summary).items()}}
