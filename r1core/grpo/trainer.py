"""``R1GRPOTrainer``: TRL's ``GRPOTrainer`` with the R1 recipe's changes, listed (once) in its docstring."""

from __future__ import annotations

import contextlib

import mlflow
import pandas as pd
from transformers.integrations import MLflowCallback
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

from r1core.grpo.callbacks import CheckpointAlignedMLflowCallback
from r1core.grpo.config import R1GRPOConfig
from r1core.grpo.cpu_loss import install_cpu_logprob_head
from r1core.judge import route_by_domain, row_domains


class R1GRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with eight changes, each in the narrowest hook TRL offers; their
    settings are fields of :class:`r1core.grpo.R1GRPOConfig`, read as ``self.args.<field>`` (change 8's
    come with the reward functions):

    1. **Dynamic sampling** (DAPO, arXiv:2503.14476, section 3.2), which TRL lacks, in
       ``_generate_and_score_completions``: groups whose rewards are all equal have zero advantage
       and waste the step; they are dropped and more prompts are sampled (up to
       ``args.dynamic_sampling_rounds`` extra generation rounds; ``0``: off) until the batch is full
       of informative groups. If the cap is reached, dropped groups fill the rest, so the batch size
       never changes. Logged as ``dynamic_sampling/dropped_groups`` and
       ``dynamic_sampling/extra_rounds``; TRL's other metrics of the step average over every round
       generated.
    2. **An MLflow completions table** in ``log``: the sampled completions, each reward's score and
       the advantage, every ``args.completions_log_steps`` steps, as
       ``completions/step_<step>.json`` (TRL's own table reaches only wandb/trackio).
    3. **Fast rollouts** in ``_generate_single_turn``: without vLLM, completions come from the
       project's decoding loop (:func:`r1core.generation.sample_token_ids`: each group's prompt
       pre-filled once, top-p without a full-vocabulary sort, finished completions leave the batch)
       instead of transformers ``generate``; same weights and forward, so TRL's recomputed
       log-probabilities are the sampler's and no importance-sampling correction is needed.
       ``args.generation_engine="hf"`` keeps TRL's path.
    4. **Stop strings** (``args.stop_strings``, e.g. ``["</answer>"]``), in
       ``_generate_single_turn``: each completion is cut after the first stop string and ended with
       EOS, as a stop string would end generation (TRL's transformers path cannot pass a tokenizer
       to ``generate``, which stop strings need). Without it, a small policy keeps writing after
       ``</answer>`` and the strict format reward stays 0.
    5. **A CPU LM head for the loss** (:mod:`r1core.grpo.cpu_loss`), installed on the policy and the
       reference model: where Triton is missing, only the completion positions are scored, one
       ``(chunk, V)`` matmul + ``log_softmax`` per chunk of tokens recomputed in the backward pass,
       each group's prompt run through the backbone once. Same log-probabilities, entropies and
       gradients as TRL's fused head.
    6. **Resumable MLflow metrics**: TRL's MLflow callback is replaced by
       :class:`r1core.grpo.CheckpointAlignedMLflowCallback` and committed in ``_save_checkpoint``,
       so a run killed and resumed from its last checkpoint continues its metric history with no
       duplicated steps.
    7. **R1's self-evolution signals** per step (DeepSeek-R1, arXiv:2501.12948, section 2.2.4), in
       ``_calculate_rewards`` (where the step's completions are text): ``signals/reflection_rate``
       (phrases ``args.reflection_markers``) and ``signals/language_consistency`` (target
       ``args.language``), from :mod:`r1core.signals`, beside TRL's ``completions/mean_length``.
    8. **Rewards by the row's domain** (R1 section 2.3.4: rule-based rewards where an answer can be
       checked, model-based ones for general prompts; :mod:`r1core.judge`), in ``__init__`` and
       ``_calculate_rewards``: rewards that need the gold answer return ``None`` on general rows
       (:func:`r1core.judge.route_by_domain`); a :class:`r1core.judge.RewardModelReward` is handed to
       TRL as its path (TRL loads and scores the model), logged under its recipe name
       (``rewards/reward_model/mean``, not the checkpoint's folder name), and its scores are set to
       NaN (TRL's ``None``) on rows outside its ``domains``, since TRL scores every row with a model.

    Everything else (the loss, ``loss_type``, ``beta``, clipping, vLLM generation) is TRL's. The
    hooks are TRL's underscore methods (and its ``_metrics``/``_logs`` buffers), so ``pyproject.toml``
    pins ``trl>=1.16,<1.17``; the LM head's reliance on internals is listed in :mod:`r1core.grpo.cpu_loss`.

    Args:
        model, reward_funcs, **kwargs: as for ``trl.GRPOTrainer``.
        args: the configuration; ``None``: :class:`r1core.grpo.R1GRPOConfig` defaults (output
            directory ``<model name>-R1GRPO``), as TRL's trainers do.

    Raises:
        TypeError: ``args`` is a plain ``trl.GRPOConfig`` (it lacks the fields above).
    """

    _SUPPORTED_KEYS = {"prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
                       "num_items_in_batch", "old_per_token_logps", "ref_per_token_logps",
                       "importance_sampling_ratio", "sampling_per_token_logps"}

    def __init__(self, model, reward_funcs, args: R1GRPOConfig | None = None, **kwargs):
        from r1core.signals import ReflectionRate

        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = R1GRPOConfig(f"{model_name.split('/')[-1]}-R1GRPO")
        elif not isinstance(args, R1GRPOConfig):
            raise TypeError(f"R1GRPOTrainer needs args=R1GRPOConfig(...), got {type(args).__name__}: its settings "
                            "(dynamic_sampling_rounds, stop_strings, ...) are R1GRPOConfig fields. Build the config "
                            "with r1core.grpo.grpo_args or r1core.grpo.R1GRPOConfig instead of trl.GRPOConfig.")
        self._reflection = ReflectionRate(args.reflection_markers)
        reward_funcs, self._reward_models = route_by_domain(reward_funcs)  # change 8
        super().__init__(model, reward_funcs, args=args, **kwargs)
        for i, spec in self._reward_models.items():
            self.reward_func_names[i] = spec.__name__
        self._generation_calls = 0
        for m in (self.model, self.ref_model):  # the reference model's log-probabilities too (beta > 0)
            if m is not None:
                install_cpu_logprob_head(m, self.temperature)
        self._extra_prompts = None
        self._mlflow_callback = None
        if self.pop_callback(MLflowCallback) is not None:
            self._mlflow_callback = CheckpointAlignedMLflowCallback()
            self.add_callback(self._mlflow_callback)

    # ------------------------------------------------------------ change 7: self-evolution signals (R1 2.2.4)
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        from r1core.prompts import response_text
        from r1core.rewards import _texts
        from r1core.signals import self_evolution_signals

        rewards = self._mask_by_domain(inputs, super()._calculate_rewards(inputs, prompts, completions,
                                                                          completion_ids_list))
        texts = [response_text(p if isinstance(p, str) else "", t) for p, t in zip(prompts, _texts(completions))]
        mode = "train" if self.model.training else "eval"
        for key, value in self_evolution_signals(texts, self._reflection, self.args.language).items():
            self._metrics[mode][key].append(value)
        return rewards

    # ------------------------------------------------------------ change 8: reward models by the row's domain
    def _mask_by_domain(self, inputs, rewards_per_func):
        """``rewards_per_func`` (all processes' rows, as TRL gathers them) with NaN where a reward
        model's domains exclude the row."""
        if not self._reward_models:
            return rewards_per_func
        import torch

        domains = row_domains(len(inputs), [x.get("domain") for x in inputs], [x.get("answer_type") for x in inputs])
        for i, spec in self._reward_models.items():
            keep = torch.tensor([float(d in spec.domains) for d in domains], device=rewards_per_func.device)  # (B,)
            keep = self.accelerator.gather(keep).bool()  # (P*B,): every process's rows, in TRL's gather order
            rewards_per_func[~keep, i] = torch.nan
        return rewards_per_func

    # ------------------------------------------------------------ changes 3 and 4: rollouts, stop strings
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if self._uses_r1_engine(images, multimodal_fields):
            completion_ids, logprobs = self._r1_generate(prompt_ids), None
        else:
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
        if not self.args.stop_strings or logprobs is not None:  # vLLM: use its own `stop` sampling parameter
            return completion_ids, logprobs
        return [self._cut_at_stop(ids) for ids in completion_ids], logprobs

    def _uses_r1_engine(self, images, multimodal_fields) -> bool:
        return (self.args.generation_engine == "r1" and not self.use_vllm
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
                                           stop_strings=self.args.stop_strings, tokenizer=self._tokenizer)
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
        hits = [(text.find(s), s) for s in self.args.stop_strings if s in text]
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

    # ------------------------------------------------------------ change 1: dynamic sampling (DAPO 3.2)
    def _generate_and_score_completions(self, inputs):
        batch = super()._generate_and_score_completions(inputs)
        if not self.args.dynamic_sampling_rounds or not self.model.training:
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
        while rounds < self.args.dynamic_sampling_rounds and self._any_process_short(
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

    # ------------------------------------------------------------ change 6: metrics committed with checkpoints
    def _save_checkpoint(self, model, trial):
        if self._mlflow_callback is not None and self.state.is_world_process_zero:
            self._mlflow_callback.commit(self.args, self.state, self.control, model)
        super()._save_checkpoint(model, trial)

    # ------------------------------------------------------------ change 2: the MLflow completions table
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        step = self.state.global_step
        if (
            self.args.completions_log_steps
            and step % self.args.completions_log_steps == 0
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
