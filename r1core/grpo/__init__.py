"""GRPO stage: TRL's ``GRPOTrainer`` with the R1 rewards, logging into the stage's MLflow run.

The trainer is :class:`R1GRPOTrainer` (:mod:`r1core.grpo.trainer`); its docstring lists, once,
every change it makes to TRL's. The package follows TRL's layout for a trainer extension:

- :mod:`r1core.grpo.config`: :class:`R1GRPOConfig`, TRL's ``GRPOConfig`` plus the settings of
  those changes as dataclass fields (with help text), read by the trainer as ``self.args.<field>``.
- :mod:`r1core.grpo.trainer`: :class:`R1GRPOTrainer`, TRL's hooks overridden.
- :mod:`r1core.grpo.callbacks`: :class:`CheckpointAlignedMLflowCallback` (metrics committed with
  checkpoints, so a resumed run's history has no duplicated steps).
- :mod:`r1core.grpo.cpu_loss`: :func:`install_cpu_logprob_head`, the CPU LM head for the loss: the
  one part that relies on TRL's and transformers' private internals (named in its docstring).
- here: the stage glue: a recipe's ``grpo`` section -> :class:`R1GRPOConfig` (:func:`grpo_args`),
  rows -> prompt dataset (:func:`build_prompt_dataset`), and :func:`train_grpo`.

With ``grpo.eval`` set, :class:`r1core.training_eval.InTrainingEvaluation` evaluates the policy
during training (pass@1 against step, R1 Figure 2), and R1's figures are logged at the end.

Everything else (the loss, ``loss_type``, ``beta``, clipping, generation) is TRL's, configured
through the recipe's ``grpo.args``; at the end of training a learning curve (each reward's mean
against step) is logged as ``learning_curve.png``.

Run on a base model this is R1-Zero (DeepSeek-R1, arXiv:2501.12948, section 2.2); run on an SFT
model it is R1's reasoning-oriented RL stage (section 2.3.2).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from datasets import Dataset

from r1core.config import trl_config
from r1core.grpo.callbacks import CheckpointAlignedMLflowCallback
from r1core.grpo.config import R1_FIELDS, R1GRPOConfig
from r1core.grpo.cpu_loss import install_cpu_logprob_head
from r1core.grpo.trainer import R1GRPOTrainer
from r1core.prompts import render
from r1core.rewards import get_rewards
from r1core.sampling import vllm_available
from r1core.stage_utils import cpu_step_callbacks

__all__ = ["CheckpointAlignedMLflowCallback", "R1GRPOConfig", "R1GRPOTrainer", "build_prompt_dataset", "grpo_args",
           "in_training_evaluation", "install_cpu_logprob_head", "train_grpo", "vllm_available"]

logger = logging.getLogger(__name__)


def build_prompt_dataset(rows: pd.DataFrame, tokenizer, template: str, prefill: str | None) -> Dataset:
    """Rows ``{id, problem, answer, ...}`` -> TRL prompt dataset ``{prompt, answer, id, answer_type,
    metadata, problem, domain}`` (prompts as text; ``answer_type`` and ``metadata`` tell the verifier
    how each answer is checked; ``problem`` is the prompt as posed, for an LLM judge; ``domain``
    routes each row to its rewards, :func:`r1core.judge.row_domains`)."""
    from r1core.judge import domains_of
    from r1core.verify import checks_of

    prompts = [render(tokenizer, p, template, prefill) for p in rows["problem"]]
    checks = checks_of(rows)
    return Dataset.from_dict({"prompt": prompts, "answer": [str(a) for a in rows["answer"]],
                              "id": [str(i) for i in rows["id"]], "answer_type": checks["answer_types"],
                              "metadata": checks["metadata"], "problem": [str(p) for p in rows["problem"]],
                              "domain": domains_of(rows)})


#: Where a recipe sets each of :data:`r1core.grpo.config.R1_FIELDS`: the ``grpo`` stage key of the
#: same name, except these.
_STAGE_KEY = {"generation_engine": "engine"}


def check_args(cfg, where: str = "grpo") -> None:
    """Check a ``grpo`` section's ``args`` before any work: every key a field of
    :class:`R1GRPOConfig`, and none of the trainer's own settings (:data:`R1_FIELDS`), which come
    from the stage's keys.

    Raises:
        ValueError: the first bad key, with the fix.
    """
    from r1core import config

    misplaced = sorted(set(cfg.args) & set(R1_FIELDS))
    if misplaced:
        key = _STAGE_KEY.get(misplaced[0], misplaced[0])
        raise ValueError(f"{where}.args has {misplaced}, which R1GRPOTrainer reads from the grpo stage's own keys, "
                         f"not from TRL's GRPOConfig fields: set {where}.{key} instead of {where}.args.{misplaced[0]}.")
    config.check_args(R1GRPOConfig, where, cfg.args)


def grpo_args(cfg, output_dir: str, seed: int, use_cpu: bool) -> R1GRPOConfig:
    """The :class:`R1GRPOConfig` for a recipe's ``grpo`` section (``cfg.args`` override the defaults here).

    Defaults chosen for a small CPU run: one group of ``num_generations`` per prompt, two
    prompts per step, no reference model (``beta=0``), logging every step to MLflow.

    Rollouts follow the stage's ``engine`` (:func:`r1core.sampling.resolve_engine`; ``auto``:
    ``vllm`` on CUDA with vLLM installed, else ``cpu``): ``vllm`` is TRL's vLLM integration
    (``use_vllm``, ``vllm_mode="colocate"``, the stage's ``vllm`` memory and parallelism settings as
    TRL's ``vllm_*`` fields), ``cpu`` the project's decoding loop (``generation_engine="r1"``),
    ``hf`` TRL's transformers ``generate``. ``grpo.args`` can still turn vLLM off (``use_vllm: false``).
    The trainer's other settings (:data:`r1core.grpo.config.R1_FIELDS`) come from the stage's keys
    of the same names (``dynamic_sampling_rounds`` only when ``dynamic_sampling`` is on, else ``0``).

    Raises:
        ValueError: an ``args`` key that ``R1GRPOConfig`` does not have, one of the trainer's own
            settings given in ``args`` instead of as a stage key (each with the fix), or
            ``engine: vllm`` where vLLM cannot run.
    """
    from r1core.sampling import resolve_engine

    check_args(cfg)
    engine = resolve_engine(cfg.engine)
    defaults: dict[str, Any] = dict(
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.num_generations * 2,
        max_completion_length=cfg.max_completion_length,
        beta=0.0,
        temperature=1.0,
        reward_weights=list(cfg.rewards.values()),
        dynamic_sampling_rounds=cfg.dynamic_sampling_rounds if cfg.dynamic_sampling else 0,
        completions_log_steps=cfg.completions_log_steps,
        stop_strings=list(cfg.stop_strings),
        generation_engine="hf" if engine == "hf" else "r1",
        reflection_markers=cfg.reflection_markers,
        language=cfg.language,
    )
    if cfg.save_steps:
        defaults.update(save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1)
    if engine == "vllm":  # TRL generates with vLLM inside the trainer, sharing the GPU with training
        defaults.update(use_vllm=True, vllm_mode="colocate",
                        vllm_gpu_memory_utilization=cfg.vllm.gpu_memory_utilization,
                        vllm_tensor_parallel_size=cfg.vllm.tensor_parallel_size)
        if cfg.vllm.max_model_len is not None:
            defaults.update(vllm_max_model_length=cfg.vllm.max_model_len)
    return trl_config(R1GRPOConfig, "grpo", defaults, cfg.args, output_dir=output_dir, seed=seed, use_cpu=use_cpu)


def in_training_evaluation(cfg, tokenizer, eval_sets, seed: int):
    """The :class:`r1core.training_eval.InTrainingEvaluation` callback for ``cfg.eval`` (``None`` when unset).

    It samples the policy being trained (:class:`r1core.sampling.EngineSampler`, which has no vLLM
    path) with ``hf`` when that is the stage's ``engine``, else with ``cpu`` (the project's engine)."""
    from r1core.generation import SamplingParams
    from r1core.training_eval import InTrainingEvaluation

    ev = cfg.eval
    if ev is None or not eval_sets:
        return None
    params = SamplingParams(max_new_tokens=ev.max_new_tokens or cfg.max_completion_length, temperature=ev.temperature,
                            top_p=ev.top_p, seed=seed)
    template, prefill = (ev.prompt_template, None) if ev.prompt_template else (cfg.prompt_template, cfg.prefill)
    return InTrainingEvaluation(eval_sets, tokenizer, params, k=ev.num_samples, eval_steps=ev.eval_steps,
                                template=template, prefill=prefill, batch_size=ev.batch_size,
                                stop_strings=cfg.stop_strings, engine="hf" if cfg.engine == "hf" else "cpu")


def train_grpo(model, tokenizer, rows: pd.DataFrame, cfg, output_dir: str, seed: int = 42,
               eval_sets=None) -> dict[str, float]:
    """Train ``model`` with GRPO on ``rows``; save the policy (and tokenizer) to ``output_dir``.

    Logs into the active MLflow run through TRL's MLflow callback (per-step ``reward``,
    ``rewards/<name>/mean``, ``frac_reward_zero_std``, ``completions/clipped_ratio``, ``kl``...).

    Args:
        model: the policy (a causal LM, loaded by the caller).
        tokenizer: its tokenizer.
        rows: curated problems with ``problem`` and ``answer`` columns.
        cfg: the recipe's :class:`r1core.config.GRPOStageConfig`.
        output_dir: where checkpoints and the final model go.
        eval_sets: :class:`r1core.training_eval.EvalSet` list for ``cfg.eval`` (evaluation during training).

    Returns:
        Summary metrics: ``train_runtime`` (seconds), ``train_loss``, the mean of each reward
        over the first and last logged step, and with ``cfg.eval`` each set's pass@1 (and its
        standard error) at the first and last evaluation (``eval/<set>/pass@1_first``, ...).
    """
    import torch

    reward_funcs, _ = get_rewards(cfg.rewards, cfg.reward_args)
    args = grpo_args(cfg, output_dir, seed, use_cpu=not torch.cuda.is_available())
    dataset = build_prompt_dataset(rows, tokenizer, cfg.prompt_template, cfg.prefill)
    tokenizer.padding_side = "left"
    evaluation = in_training_evaluation(cfg, tokenizer, eval_sets, seed)
    trainer = R1GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                            train_dataset=dataset, processing_class=tokenizer,
                            callbacks=cpu_step_callbacks(args) + ([evaluation] if evaluation else []))
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if last:
        logger.info("GRPO: resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    _log_learning_curve(trainer, list(cfg.rewards))
    if trainer.accelerator.is_main_process:
        from r1core.training_eval import log_figures

        log_figures(trainer.state.log_history, evaluation)
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
    for name in ("completions/mean_length", "signals/reflection_rate"):
        vals = [h[name] for h in history if name in h]
        if vals:
            summary[f"{name.split('/')[-1]}_first"], summary[f"{name.split('/')[-1]}_last"] = vals[0], vals[-1]
    if evaluation is not None:
        summary.update(evaluation.summary())
    Path(output_dir, "r1_done").write_text("ok")
    return summary


def _log_learning_curve(trainer, reward_names: list[str]) -> None:
    """Each reward's mean against step, as ``learning_curve.png`` in the active MLflow run."""
    if mlflow.active_run() is None or not trainer.accelerator.is_main_process:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = [h for h in trainer.state.log_history if "reward" in h]
    if not history:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["reward"] for h in history], label="reward (weighted sum)", linewidth=2)
    for name in reward_names:
        key = f"rewards/{name}/mean"
        ax.plot([h["step"] for h in history if key in h], [h[key] for h in history if key in h], label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.set_title("GRPO learning curve")
    ax.legend()
    mlflow.log_figure(fig, "learning_curve.png")
    plt.close(fig)
