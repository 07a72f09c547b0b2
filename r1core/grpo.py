"""GRPO stage: TRL's ``GRPOTrainer`` with the R1 rewards, logging into the stage's MLflow run.

:class:`R1GRPOTrainer` is TRL's trainer with four changes:

1. **Dynamic sampling** (DAPO, arXiv:2503.14476, section 3.2), which TRL lacks, in
   ``_generate_and_score_completions``: groups whose rewards are all equal have zero advantage
   and waste the step; they are dropped and more prompts are sampled (up to
   ``dynamic_sampling_rounds`` extra generation rounds) until the batch is full of informative
   groups. If the cap is reached, dropped groups fill the rest, so the batch size never changes.
   Logged as ``dynamic_sampling/dropped_groups`` and ``dynamic_sampling/extra_rounds``; TRL's
   other metrics of the step average over every round generated.
2. ``log`` also writes the sampled completions, each reward's score and the advantage as an
   MLflow table every ``completions_log_steps`` steps (TRL's own table reaches only wandb/trackio).
3. **Fast rollouts** in ``_generate_single_turn``: without vLLM, completions come from the
   project's decoding loop (:func:`r1core.generation.sample_token_ids`: each group's prompt
   pre-filled once, top-p without a full-vocabulary sort, finished completions leave the batch)
   instead of transformers ``generate``; same weights and forward, so TRL's recomputed
   log-probabilities are the sampler's and no importance-sampling correction is needed.
   ``generation_engine="hf"`` keeps TRL's path.
4. ``stop_strings`` (e.g. ``["</answer>"]``), in ``_generate_single_turn``: each completion is cut
   after the first stop string and ended with EOS, as a stop string would end generation (TRL's
   transformers path cannot pass a tokenizer to ``generate``, which stop strings need). Without
   it, a small policy keeps writing after ``</answer>`` and the strict format reward stays 0.
5. **A CPU LM head for the loss**: TRL's fused log-probability head folds vocabulary tiles with
   torch ops and scores every position (prompt included) wherever Triton is missing; on CPU this
   trainer scores only the completion positions, one ``(chunk, V)`` matmul + ``log_softmax`` per
   chunk of tokens, recomputed in the backward pass (activation checkpointing), so memory stays
   ``(chunk, V)`` floats. Each group's prompt runs through the backbone once, its KV cache shared
   by the group's completions (gradients summed back through it), and each completion runs only up
   to its last scored token (:func:`_shared_prefix_hidden`). Same log-probabilities, entropies and
   gradients (tested against TRL's head).
6. Its MLflow callback is :class:`CheckpointAlignedMLflowCallback`: with checkpointing on,
   metrics are committed with each checkpoint, so a run killed and resumed from its last
   checkpoint continues its metric history with no duplicated steps.
7. **R1's self-evolution signals** per step, in ``_calculate_rewards`` (where the step's
   completions are text): ``signals/reflection_rate`` and ``signals/language_consistency``
   (:mod:`r1core.signals`), beside TRL's ``completions/mean_length``.

With ``grpo.eval`` set, :class:`r1core.training_eval.InTrainingEvaluation` evaluates the policy
during training (pass@1 against step, R1 Figure 2), and R1's figures are logged at the end.

Everything else (the loss, ``loss_type``, ``beta``, clipping, generation) is TRL's, configured
through the recipe's ``grpo.args``; at the end of training a learning curve (each reward's mean
against step) is logged as ``learning_curve.png``.

Run on a base model this is R1-Zero (DeepSeek-R1, section 2.2); run on an SFT model it is R1's
reasoning-oriented RL stage.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from datasets import Dataset
from transformers.integrations import MLflowCallback
from trl import GRPOConfig, GRPOTrainer

from r1core.config import trl_config
from r1core.prompts import render
from r1core.rewards import get_rewards
from r1core.stage_utils import trim_heap_callbacks

logger = logging.getLogger(__name__)


class CheckpointAlignedMLflowCallback(MLflowCallback):
    """transformers' ``MLflowCallback`` made safe to resume: with checkpointing on
    (``save_strategy != "no"``), logged metrics are held back and committed synchronously just
    before each checkpoint is written (:meth:`commit`, called by :class:`R1GRPOTrainer`) and at
    the end of training; on (re)start, steps the MLflow run already holds are not logged again.

    A kill after the commit but before the checkpoint replays a few steps: they are skipped.
    A kill after the checkpoint loses only uncommitted steps, which the resumed run redoes.
    """

    def __init__(self):
        super().__init__()
        self._pending: list[tuple[int, dict]] = []
        self._committed_step = 0

    def setup(self, args, state, model):
        super().setup(args, state, model)
        self._async_log = False  # a commit must be on disk before the checkpoint is
        run = self._ml_flow.active_run()
        if run is not None and state.is_world_process_zero:
            from mlflow.tracking import MlflowClient

            history = MlflowClient().get_metric_history(run.info.run_id, "loss")
            self._committed_step = max((m.step for m in history), default=0)

    def on_log(self, args, state, control, logs, model=None, **kwargs):
        if not self._initialized:
            self.setup(args, state, model)
        if state.global_step <= self._committed_step:
            return  # replayed after a resume: already in the run
        if args.save_strategy in ("no", None) or str(args.save_strategy).endswith("NO"):
            return super().on_log(args, state, control, logs, model=model, **kwargs)
        self._pending.append((state.global_step, dict(logs)))

    def commit(self, args, state, control=None, model=None) -> None:
        """Write the held-back metrics to MLflow (synchronously)."""
        import copy

        for step, logs in self._pending:
            if step <= self._committed_step:
                continue
            at_step = copy.copy(state)
            at_step.global_step = step
            super().on_log(args, at_step, control, logs, model=model)
            self._committed_step = step
        self._pending.clear()

    def on_train_end(self, args, state, control, **kwargs):
        self.commit(args, state, control, kwargs.get("model"))
        return super().on_train_end(args, state, control, **kwargs)


class R1GRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with the changes in the module docstring: dynamic sampling, an
    MLflow completions table in :meth:`log`, and metrics committed with checkpoints.

    Args:
        completions_log_steps: log the table every this many optimizer steps (``0``: never).
        dynamic_sampling_rounds: extra generation rounds allowed per step to replace
            zero-advantage groups (``0``: dynamic sampling off).
        stop_strings: end each completion after the first of these strings (with EOS).
        *args, **kwargs: as for ``trl.GRPOTrainer``.
    """

    _SUPPORTED_KEYS = {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
                       "num_items_in_batch", "old_per_token_logps", "ref_per_token_logps",
                       "importance_sampling_ratio", "sampling_per_token_logps"}

    def __init__(self, *args, completions_log_steps: int = 1, dynamic_sampling_rounds: int = 0,
                 stop_strings: list[str] | None = None, generation_engine: str = "r1",
                 reflection_markers: list[str] | None = None, language: str = "en", **kwargs):
        from r1core.signals import ReflectionRate

        if generation_engine not in ("r1", "hf"):
            raise ValueError(f"generation_engine must be 'r1' or 'hf', got {generation_engine!r}.")
        self._reflection, self._signal_language = ReflectionRate(reflection_markers), language
        super().__init__(*args, **kwargs)
        self.generation_engine = generation_engine
        self._generation_calls = 0
        for model in (self.model, self.ref_model):  # the reference model's log-probabilities too (beta > 0)
            if model is not None:
                install_cpu_logprob_head(model, self.temperature)
        self.stop_strings = list(stop_strings or [])
        self.completions_log_steps = completions_log_steps
        self.dynamic_sampling_rounds = dynamic_sampling_rounds
        self._extra_prompts = None
        self._mlflow_callback = None
        if self.pop_callback(MLflowCallback) is not None:
            self._mlflow_callback = CheckpointAlignedMLflowCallback()
            self.add_callback(self._mlflow_callback)

    # ------------------------------------------------------------ self-evolution signals (R1 2.2.4)
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        from r1core.prompts import response_text
        from r1core.rewards import _texts
        from r1core.signals import self_evolution_signals

        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        texts = [response_text(p if isinstance(p, str) else "", t) for p, t in zip(prompts, _texts(completions))]
        mode = "train" if self.model.training else "eval"
        for key, value in self_evolution_signals(texts, self._reflection, self._signal_language).items():
            self._metrics[mode][key].append(value)
        return rewards

    # ------------------------------------------------------------ stop strings
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self._uses_r1_engine(images, multimodal_fields):
            completion_ids, logprobs = self._r1_generate(prompt_ids), None
        else:
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        if not self.stop_strings or logprobs is not None:  # vLLM: use its own `stop` sampling parameter
            return completion_ids, logprobs
        return [self._cut_at_stop(ids) for ids in completion_ids], logprobs

    def _uses_r1_engine(self, images, multimodal_fields) -> bool:
        return (self.generation_engine == "r1" and not self.use_vllm
                and not getattr(self, "use_transformers_continuous_batching", False)
                and not images and not multimodal_fields)

    def _r1_generate(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """Rollouts from :func:`r1core.generation.sample_token_ids` with the trainer's sampling
        settings; completions end with EOS when they stopped (TRL's convention). Seeded by
        ``(args.seed, process, global_step, call)``, so a resumed run samples what it would have."""
        import torch
        from trl.models import unwrap_model_for_generation

        from r1core.generation import SamplingParams, sample_token_ids

        step = self.state.global_step
        if getattr(self, "_generation_step", None) != step:
            self._generation_step, self._generation_calls = step, 0
        self._generation_calls += 1
        seed = hash((self.args.seed, self.accelerator.process_index, step, self._generation_calls)) % (2**31)
        params = SamplingParams(max_new_tokens=self.max_completion_length, temperature=self.temperature,
                                top_p=self.top_p, seed=seed, top_k=self.top_k or 0, min_p=self.min_p or 0.0,
                                repetition_penalty=self.repetition_penalty)
        with (
            unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                        gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                                        gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs)
            as unwrapped_model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
            # One autocast region around the whole rollout (CUDA): the forward's own (accelerate's, same settings)
            # nests inside it, so autocast's weight-cast cache lives for the rollout and fp32 weights are cast to
            # bf16 once instead of in every decode step (211 casts a step for SmolLM2-135M, ~13% of its kernel
            # launches; the same bf16 weights, so the same forward). Without mixed precision: no autocast.
            self.accelerator.autocast() if self.accelerator.device.type == "cuda" else contextlib.nullcontext(),
        ):
            completions = sample_token_ids(unwrapped_model, prompt_ids, params, eos_ids=self.eos_token_ids,
                                           pad_id=self._tokenizer.pad_token_id, batch_size=max(len(prompt_ids), 1),
                                           stop_strings=self.stop_strings, tokenizer=self._tokenizer)
        return [c.ids for c in completions]

    def _cut_at_stop(self, ids: list[int]) -> list[int]:
        """``ids`` ending exactly at the first stop string, then EOS; unchanged if none occurs.

        When the token that completes the stop string also carries text beyond it (a merged token
        such as ``"></"``), the text up to the stop string is re-tokenized, so the completion the
        rewards see ends exactly there. TRL recomputes the log-probabilities of these ids with the
        policy on this path, so the loss stays consistent.
        """
        tok = self.processing_class
        text = tok.decode(ids, skip_special_tokens=False)
        hits = [(text.find(s), s) for s in self.stop_strings if s in text]
        if not hits:
            return ids
        start, stop = min(hits)
        end = start + len(stop)
        eos = self.eos_token_ids[0] if getattr(self, "eos_token_ids", None) else tok.eos_token_id
        for k in range(1, len(ids) + 1):
            prefix = tok.decode(ids[:k], skip_special_tokens=False)
            if len(prefix) >= end:
                if len(prefix) > end:  # the last token runs past the stop string
                    return tok(text[:end], add_special_tokens=False)["input_ids"] + [eos]
                return ids[:k] + [eos]
        return ids

    # ------------------------------------------------------------ dynamic sampling (DAPO 3.2)
    def _generate_and_score_completions(self, inputs):
        batch = super()._generate_and_score_completions(inputs)
        if not self.dynamic_sampling_rounds or not self.model.training:
            return batch
        unsupported = set(batch) - self._SUPPORTED_KEYS
        if unsupported:
            raise ValueError(f"dynamic sampling supports text-only GRPO; this batch has {sorted(unsupported)}. "
                             "Set grpo.dynamic_sampling=false for multimodal or tool-calling runs.")
        G = self.num_generations
        n_groups = len(batch["advantages"]) // G
        parts = [batch]
        informative = [self._informative(batch)]  # per part: indices of groups with signal
        dropped = n_groups - len(informative[0])
        rounds = 0
        while rounds < self.dynamic_sampling_rounds and self._any_process_short(
                sum(len(i) for i in informative) < n_groups):
            extra = super()._generate_and_score_completions(self._draw_prompts(n_groups))
            parts.append(extra)
            informative.append(self._informative(extra))
            dropped += n_groups - len(informative[-1])
            rounds += 1
        chosen = [(p, g) for p, groups in enumerate(informative) for g in groups][:n_groups]
        if len(chosen) < n_groups:  # cap reached: fill with zero-advantage groups of the first batch
            used = {g for p, g in chosen if p == 0}
            chosen += [(0, g) for g in range(n_groups) if g not in used][: n_groups - len(chosen)]
        mode = "train"
        self._metrics[mode]["dynamic_sampling/dropped_groups"].append(float(dropped))
        self._metrics[mode]["dynamic_sampling/extra_rounds"].append(float(rounds))
        return self._assemble(parts, chosen)

    def _informative(self, batch) -> list[int]:
        """Indices of groups with at least one non-zero advantage."""
        adv = batch["advantages"].view(-1, self.num_generations)  # (groups, G)
        return (adv.abs() > 1e-8).any(dim=1).nonzero(as_tuple=True)[0].tolist()

    def _any_process_short(self, short: bool) -> bool:
        """Whether any process still lacks informative groups (generation is collective)."""
        import torch

        flag = torch.tensor([1.0 if short else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.gather(flag).max().item() > 0)

    def _draw_prompts(self, n_groups: int) -> list[dict]:
        """``n_groups`` fresh training rows, each repeated ``num_generations`` times (a seeded
        shuffle of the training set, distinct per process)."""
        import random

        if self._extra_prompts is None:
            rng = random.Random(self.args.seed + 1000 * self.accelerator.process_index)

            def forever():
                while True:
                    order = list(range(len(self.train_dataset)))
                    rng.shuffle(order)
                    yield from order

            self._extra_prompts = forever()
        rows = [self.train_dataset[next(self._extra_prompts)] for _ in range(n_groups)]
        return [row for row in rows for _ in range(self.num_generations)]

    def _assemble(self, parts: list[dict], chosen: list[tuple[int, int]]) -> dict:
        """Concatenate the chosen groups' rows; prompts re-padded on the left, completions on the right."""
        import torch

        G = self.num_generations
        rows = [(p, g * G + j) for p, g in chosen for j in range(G)]
        pad_id = self.processing_class.pad_token_id if hasattr(self.processing_class, "pad_token_id") else 0
        out = {}
        for key in parts[0]:
            if key == "num_items_in_batch":
                continue
            width = max(part[key].shape[1] for part in parts) if parts[0][key].dim() > 1 else None
            pieces = []
            for p, r in rows:
                t = parts[p][key][r]
                if width is not None and t.shape[0] < width:
                    fill = pad_id if key == "prompt_ids" or key == "completion_ids" else 0
                    pad = torch.full((width - t.shape[0],), fill, dtype=t.dtype, device=t.device)
                    t = torch.cat([pad, t]) if key.startswith("prompt") else torch.cat([t, pad])
                pieces.append(t)
            out[key] = torch.stack(pieces)  # (B, T) or (B,)
        out["num_items_in_batch"] = self.accelerator.gather(out["completion_mask"].sum()).sum()
        return out

    def _save_checkpoint(self, model, trial):
        if self._mlflow_callback is not None and self.state.is_world_process_zero:
            self._mlflow_callback.commit(self.args, self.state, self.control, model)
        super()._save_checkpoint(model, trial)

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


def install_cpu_logprob_head(model, temperature: float, chunk_tokens: int = 1024) -> bool:
    """Replace TRL's fused LM head on ``model`` (see :func:`trl.trainer.utils.add_fused_lm_head`)
    with :func:`_completion_logprobs` when the model runs without Triton (CPU). Models whose
    head scales or soft-caps logits, MoE router losses and pre-shifted labels keep TRL's head.

    Returns:
        Whether the head was installed.
    """
    import types

    from trl.kernels.chunked_logprob import _use_triton

    cfg = model.config.get_text_config()
    scaled = [a for a in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                          "logits_scaling") if getattr(cfg, a, None) not in (None, 1.0)]
    trl_forward = model.forward
    code = getattr(getattr(trl_forward, "__func__", None), "__code__", None)
    if scaled or getattr(cfg, "output_router_logits", False) or getattr(code, "co_name", "") != "_fused_forward":
        return False

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        head = self.get_output_embeddings()
        if not fused_lm_head or shift_labels is not None or _use_triton(head.weight.device):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        return _completion_logprobs(self, head, args, kwargs, labels, num_items_in_batch, temperature, chunk_tokens)

    model.forward = types.MethodType(forward, model)
    return True


def _completion_logprobs(model, head, args, kwargs, labels, num_items_in_batch, temperature: float,
                         chunk_tokens: int):
    """TRL's ``FusedCausalLMOutput`` (``log_probs``, ``entropy``: ``(B, T - 1)``, zero where the
    next-token label is ``-100``) from the backbone's hidden states at the scored positions only."""
    import torch
    from torch.utils.checkpoint import checkpoint
    from trl.trainer.utils import FusedCausalLMOutput

    kwargs["use_cache"] = False
    hidden, first = _shared_prefix_hidden(model.base_model, args, kwargs, labels)
    if hidden is None:
        hidden, first = model.base_model(*args, **kwargs).last_hidden_state[:, :-1], 0  # (B, T - 1, H)
    labels = labels[:, 1:].to(hidden.device)
    mask = labels != -100  # (B, T - 1)
    h, targets = hidden[mask[:, first:]], labels[mask]  # (N, H), (N,)
    parts = [checkpoint(_logprob_entropy, h[i : i + chunk_tokens], head.weight, head.bias, targets[i : i + chunk_tokens],
                        temperature, use_reentrant=False) for i in range(0, len(targets), chunk_tokens)]
    if parts:
        values = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    else:  # nothing scored: a zero still connected to the graph, as TRL's head returns
        values = (h.sum(-1), h.sum(-1))
    log_probs, entropy = (hidden.new_zeros(mask.shape, dtype=v.dtype).masked_scatter(mask, v) for v in values)
    loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, label_mask=mask)


def _shared_prefix_hidden(backbone, args, kwargs, labels, max_padding: float = 0.25):
    """The backbone's hidden states for the scored positions, each group's shared prompt run once
    and each completion only as far as it is scored.

    In GRPO a batch holds ``num_generations`` completions of each prompt, and the prompt columns
    are never scored. Rows whose unscored leading columns (ids and mask) are equal are run
    through the backbone once; their KV cache is copied to each row (gradients from every row sum
    back through the copy). The completions then run against it, sorted by length in batches
    padded to at most ``1 + max_padding`` times their real tokens, so the padding after a short
    completion is not computed. Under causal attention this is the same computation as the full
    batch (same positions, same masks), with the prompt's forward and backward done once per group
    instead of once per completion.

    Args:
        backbone: the model's base model (``model.base_model``).
        args, kwargs: the inputs TRL passes to the model (``input_ids``, ``attention_mask``).
        labels: ``(B, T)``, ``-100`` where a position is not scored.

    Returns:
        ``(hidden, first)``: ``hidden`` ``(B, T - 1 - first, H)`` are the hidden states at
        positions ``first .. T - 2`` (each predicts the next token; zeros after a row's last
        scored label), ``first`` is the last prompt position. ``(None, 0)`` when sharing does
        not apply: no repeated prompts, inputs other than ids and mask, gradient checkpointing
        (it drops the cache), or cache layers other than full attention (sliding windows,
        linear attention).
    """
    import torch
    from transformers.cache_utils import DynamicCache, DynamicLayer

    input_ids, attention_mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    if args or input_ids is None or set(kwargs) - {"input_ids", "attention_mask", "use_cache"}:
        return None, 0
    if getattr(backbone, "is_activation_checkpointing", False):  # checkpointed layers drop the cache
        return None, 0
    scored = labels != -100  # (B, T)
    columns = scored.any(0).nonzero()
    start = int(columns[0]) if len(columns) else 0  # prompt columns: [0, start)
    if start == 0:
        return None, 0
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    prompts, rows = torch.unique(torch.cat([input_ids[:, :start], attention_mask[:, :start].to(input_ids.dtype)], 1),
                                 dim=0, return_inverse=True)  # (U, 2 * start), (B,)
    cache = DynamicCache(config=backbone.config)
    if len(prompts) == len(input_ids) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None, 0
    prompt_out = backbone(input_ids=prompts[:, :start], attention_mask=prompts[:, start:].to(attention_mask.dtype),
                          past_key_values=cache, use_cache=True)
    prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]  # each (U, heads, start, d)
    # a row's hidden states are needed up to the column before its last scored label
    ends = torch.where(scored.any(1), scored.shape[1] - scored.flip(1).int().argmax(1) - 1, start).tolist()
    width = input_ids.shape[1] - start  # hidden states kept per row: positions start - 1 .. T - 2
    order = sorted(range(len(ends)), key=lambda i: -ends[i])
    pieces, done = [], 0
    while done < len(order):
        longest = ends[order[done]] - start
        batch = [i for i in order[done:] if (ends[i] - start) * (1 + max_padding) >= longest] if longest \
            else order[done:]
        done += len(batch)
        index = torch.tensor(batch, device=input_ids.device)
        parts = [prompt_out.last_hidden_state[rows[index], -1:]]  # (b, 1, H): predicts the first completion token
        if longest:
            batch_cache = DynamicCache(ddp_cache_data=[(k[rows[index]], v[rows[index]]) for k, v in prompt_kv],
                                       config=backbone.config)  # backward sums the copies into the prompt's KV
            parts.append(backbone(input_ids=input_ids[index, start:start + longest],
                                  attention_mask=attention_mask[index, :start + longest],
                                  past_key_values=batch_cache, use_cache=True).last_hidden_state)
        pieces.append(torch.nn.functional.pad(torch.cat(parts, 1), (0, 0, 0, width - 1 - longest)))  # (b, width, H)
    return torch.cat(pieces)[torch.tensor(order, device=input_ids.device).argsort()], start - 1


def _logprob_entropy(h, weight, bias, targets, temperature: float):
    """Log-probability of ``targets`` ``(n,)`` and entropy ``(n,)`` under ``softmax(h W^T / T)``."""
    import torch

    logp = (torch.nn.functional.linear(h, weight, bias).float() / temperature).log_softmax(-1)  # (n, V)
    return logp.gather(1, targets[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


def build_prompt_dataset(rows: pd.DataFrame, tokenizer, template: str, prefill: str | None) -> Dataset:
    """Rows ``{id, problem, answer, ...}`` -> TRL prompt dataset ``{prompt, answer, id, answer_type,
    metadata}`` (prompts as text; the last two tell the verifier how each answer is checked)."""
    from r1core.verify import checks_of

    prompts = [render(tokenizer, p, template, prefill) for p in rows["problem"]]
    checks = checks_of(rows)
    return Dataset.from_dict({"prompt": prompts, "answer": [str(a) for a in rows["answer"]],
                              "id": [str(i) for i in rows["id"]], "answer_type": checks["answer_types"],
                              "metadata": checks["metadata"]})


def grpo_args(cfg, output_dir: str, seed: int, use_cpu: bool) -> GRPOConfig:
    """The ``GRPOConfig`` for a recipe's ``grpo`` section (``cfg.args`` override the defaults here).

    Defaults chosen for a small CPU run: one group of ``num_generations`` per prompt, two
    prompts per step, no reference model (``beta=0``), logging every step to MLflow. On a CUDA
    machine with vLLM installed, generation uses TRL's vLLM integration (``vllm_mode="colocate"``);
    ``grpo.args`` can turn it off (``use_vllm: false``).

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
    if cfg.save_steps:
        defaults.update(save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1)
    if vllm_available():  # on a GPU with vLLM installed, TRL generates with vLLM inside the trainer
        defaults.update(use_vllm=True, vllm_mode="colocate")
    return trl_config(GRPOConfig, "grpo", defaults, cfg.args, output_dir=output_dir, seed=seed, use_cpu=use_cpu)


def vllm_available() -> bool:
    """Whether TRL's vLLM generation can be used: a CUDA device and the ``vllm`` package."""
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def in_training_evaluation(cfg, tokenizer, eval_sets, seed: int):
    """The :class:`r1core.training_eval.InTrainingEvaluation` callback for ``cfg.eval`` (``None`` when unset)."""
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
                                stop_strings=cfg.stop_strings)


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
                            dynamic_sampling_rounds=cfg.dynamic_sampling_rounds if cfg.dynamic_sampling else 0,
                            completions_log_steps=cfg.completions_log_steps, stop_strings=cfg.stop_strings,
                            generation_engine=cfg.generation_engine,
                            reflection_markers=cfg.reflection_markers, language=cfg.language,
                            callbacks=trim_heap_callbacks(args) + ([evaluation] if evaluation else []))
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
