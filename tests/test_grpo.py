"""The GRPO trainer subclass on a tiny model: it trains, and logs into the active MLflow run."""

from __future__ import annotations

import mlflow
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from r1core import tracking
from r1core.config import GRPOStageConfig
from r1core.grpo import R1GRPOTrainer, build_prompt_dataset, grpo_args
from r1core.models import load_model_and_tokenizer


def length_reward(completions, **kwargs):
    """Test-only reward that varies within a group, so advantages are non-zero."""
    return [float(len(c)) / 100 for c in completions]


def test_trainer_updates_parameters_and_logs_to_mlflow(tiny_model_dir, tmp_path):
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = pd.DataFrame({"id": ["a", "b"], "problem": ["1+1?", "2+2?"], "answer": ["2", "4"]})
    cfg = GRPOStageConfig(rewards={"accuracy": 1.0}, num_generations=2, max_completion_length=8, max_steps=2,
                          learning_rate=1e-2,
                          args={"per_device_train_batch_size": 4})
    exp = tracking.setup("test-grpo")
    with mlflow.start_run(experiment_id=exp) as run:
        trainer = R1GRPOTrainer(model=model, reward_funcs=[length_reward],
                                args=grpo_args(cfg, str(tmp_path), seed=0, use_cpu=True),
                                train_dataset=build_prompt_dataset(rows, tok, "r1_zero", "<think>\n"),
                                processing_class=tok)
        trainer.train()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "no parameter changed after two GRPO steps"
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "rewards/length_reward/mean")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "completions")}
    assert "completions/step_00001.json" in artifacts


def test_grpo_args_rejects_unknown_trl_fields(tmp_path):
    import pytest

    cfg = GRPOStageConfig(args={"num_generation": 4})
    with pytest.raises(ValueError, match="num_generation"):
        grpo_args(cfg, str(tmp_path), seed=0, use_cpu=True)
