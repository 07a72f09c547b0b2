"""Student SFT (distillation) on kept traces with TRL's ``SFTTrainer``.

The traces are TRL's conversational prompt-completion rows (``prompt``: system/user messages,
``completion``: the assistant message), so the loss is on the completion tokens only, and the
chat template's end-of-turn token (``<|im_end|>`` for SmolLM2) is part of the completion: the
student learns to stop. DeepSeek-R1 section 2.4 distils its small models this way (SFT only,
no RL).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from r1core.config import trl_config
from r1core.stage_utils import trim_heap_callbacks

logger = logging.getLogger(__name__)


class NoTracesError(ValueError):
    """SFT was asked to train on an empty set of traces."""


def sft_args(cfg, output_dir: str, seed: int, use_cpu: bool) -> SFTConfig:
    """The ``SFTConfig`` for a recipe's ``sft`` section (``cfg.args`` override the defaults here).

    Raises:
        ValueError: an ``args`` key that ``SFTConfig`` does not have.
    """
    defaults: dict[str, Any] = dict(
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=cfg.packing,
    )
    return trl_config(SFTConfig, "sft", defaults, cfg.args, output_dir=output_dir, seed=seed, use_cpu=use_cpu)


def build_trainer(model, tokenizer, traces: pd.DataFrame, cfg, output_dir: str, seed: int = 42) -> SFTTrainer:
    """TRL's ``SFTTrainer`` over ``traces`` (conversational prompt-completion rows): the chat
    template renders each row, and the loss (``labels``, -100 elsewhere) covers the assistant turn
    only, its end-of-turn token included."""
    import torch

    args = sft_args(cfg, output_dir, seed, use_cpu=not torch.cuda.is_available())
    dataset = Dataset.from_dict({"prompt": list(traces["prompt"]), "completion": list(traces["completion"])})
    tokenizer.padding_side = "right"
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=trim_heap_callbacks(args))


def train_sft(model, tokenizer, traces: pd.DataFrame, cfg, output_dir: str, seed: int = 42) -> dict[str, float]:
    """Fine-tune ``model`` on ``traces`` (rows with ``prompt`` and ``completion`` messages); save to ``output_dir``.

    Logs per-step ``loss``, ``mean_token_accuracy``... into the active MLflow run (TRL's MLflow callback).

    Raises:
        NoTracesError: ``traces`` is empty (say how to get traces).
    """
    if len(traces) == 0:
        raise NoTracesError(
            "Rejection sampling kept no traces, so there is nothing to distil. Raise "
            "rejection_sampling.num_samples or num_problems, lower its difficulty, or use a stronger teacher."
        )
    trainer = build_trainer(model, tokenizer, traces, cfg, output_dir, seed)
    result = trainer.train()
    trainer.save_model(output_dir)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(output_dir)
    Path(output_dir, "r1_done").write_text("ok")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"train_runtime": float(result.metrics.get("train_runtime", math.nan)),
            "train_loss": float(result.training_loss),
            "loss_first": float(losses[0]) if losses else math.nan,
            "loss_last": float(losses[-1]) if losses else math.nan,
            "num_traces": float(len(traces))}
