"""GRPO stage: TRL's ``GRPOTrainer`` with the R1 rewards, logging into the stage's MLflow run.

:class:`R1GRPOTrainer` is TRL's trainer with one change: ``log`` also writes the sampled
completions, each reward's score and the advantage as an MLflow table every
``completions_log_steps`` steps (TRL's own completions table reaches only wandb/trackio).
Everything else (the loss, ``loss_type``, ``beta``, clipping, generation) is TRL's, configured
through the recipe's ``grpo.args``.

Run on a base model this is R1-Zero (DeepSeek-R1, section 2.2); run on an SFT model it is R1's
reasoning-oriented RL stage.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from r1core.config import trl_config
from r1core.prompts import render
from r1core.rewards import get_rewards

logger = logging.getLogger(__name__)


class R1GRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer``; the only change is in :meth:`log` (an MLflow completions table).

    Args:
        completions_log_steps: log the table every this many optimizer steps (``0``: never).
        *args, **kwargs: as for ``trl.GRPOTrainer``.
    """

    def __init__(self, *args, completions_log_steps: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.completions_log_steps = completions_log_steps

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        step = self.state.global_step
        if (
            self.completions_log_steps
            and step % self.completions_log_steps == 0
            and self.accelerator.is_main_process
            and mlflow.active_run() is not None
            and self._logs["prompt"]
            and "train_runtime" not in logs  # the end-of-training summary log repeats the last step
        ):
            table = {
                "step": [step] * len(self._logs["prompt"]),
                "prompt": [str(p) for p in self._logs["prompt"]],
                "completion": [str(c) for c in self._logs["completion"]],
                **{f"reward/{k}": list(v) for k, v in self._logs["rewards"].items()},
                "advantage": list(self._logs["advantages"]),
            }
            n = min(len(v) for v in table.values())
            mlflow.log_table(pd.DataFrame({k: v[-n:] for k, v in table.items()}),
                             artifact_file=f"completions/step_{step:05d}.json")


def build_prompt_dataset(rows: pd.DataFrame, tokenizer, template: str, prefill: str | None) -> Dataset:
    """Rows ``{id, problem, answer, ...}`` -> TRL prompt dataset ``{prompt, answer, id}`` (prompts as text)."""
    prompts = [render(tokenizer, p, template, prefill) for p in rows["problem"]]
    return Dataset.from_dict({"prompt": prompts, "answer": [str(a) for a in rows["answer"]],
                              "id": [str(i) for i in rows["id"]]})


def grpo_args(cfg, output_dir: str, seed: int, use_cpu: bool) -> GRPOConfig:
    """The ``GRPOConfig`` for a recipe's ``grpo`` section (``cfg.args`` override the defaults here).

    Defaults chosen for a small CPU run: one group of ``num_generations`` per prompt, two
    prompts per step, no reference model (``beta=0``), logging every step to MLflow.

    Raises:
        ValueError: an ``args`` key that ``GRPOConfig`` does not have (with the fix).
    """
    defaults: dict[str, Any] = dict(
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.num_generations * 2,
        max_completion_length=cfg.max_completion_length,
        beta=0.0,
        temperature=1.0,
        reward_weights=list(cfg.rewards.values()),
    )
    return trl_config(GRPOConfig, "grpo", defaults, cfg.args, output_dir=output_dir, seed=seed, use_cpu=use_cpu)


def train_grpo(model, tokenizer, rows: pd.DataFrame, cfg, output_dir: str, seed: int = 42) -> dict[str, float]:
    """Train ``model`` with GRPO on ``rows``; save the policy (and tokenizer) to ``output_dir``.

    Logs into the active MLflow run through TRL's MLflow callback (per-step ``reward``,
    ``rewards/<name>/mean``, ``frac_reward_zero_std``, ``completions/clipped_ratio``, ``kl``...).

    Args:
        model: the policy (a causal LM, loaded by the caller).
        tokenizer: its tokenizer.
        rows: curated problems with ``problem`` and ``answer`` columns.
        cfg: the recipe's :class:`r1core.config.GRPOStageConfig`.
        output_dir: where checkpoints and the final model go.

    Returns:
        Summary metrics: ``train_runtime`` (seconds), ``train_loss`` and the mean of each
        reward over the first and last logged step.
    """
    import torch

    reward_funcs, _ = get_rewards(cfg.rewards, cfg.reward_args)
    args = grpo_args(cfg, output_dir, seed, use_cpu=not torch.cuda.is_available())
    dataset = build_prompt_dataset(rows, tokenizer, cfg.prompt_template, cfg.prefill)
    tokenizer.padding_side = "left"
    trainer = R1GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                            train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    history = [h for h in trainer.state.log_history if "reward" in h]
    summary = {"train_runtime": float(result.metrics.get("train_runtime", math.nan)),
               "train_loss": float(result.training_loss)}
    for name in cfg.rewards:
        key = f"rewards/{name}/mean"
        vals = [h[key] for h in history if key in h]
        if vals:
            summary[f"{name}_first"] = float(vals[0])
            summary[f"{name}_last"] = float(vals[-1])
    Path(output_dir, "r1_done").write_text("ok")
    return summary
