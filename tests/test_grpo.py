"""The GRPO trainer subclass on a tiny model: it trains, and logs into the active MLflow run."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest
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
    cfg = GRPOStageConfig(args={"num_generation": 4})
    with pytest.raises(ValueError, match="num_generation"):
        grpo_args(cfg, str(tmp_path), seed=0, use_cpu=True)


def test_r1_grpo_config_fields_are_dataclass_fields_with_help(tmp_path):
    """The trainer's settings are R1GRPOConfig dataclass fields (TRL's pattern), each with help text;
    grpo_args fills them from the stage's keys, and a bad or misplaced args key fails with the fix."""
    import dataclasses

    from trl import GRPOConfig

    from r1core.grpo import R1GRPOConfig
    from r1core.grpo.config import R1_FIELDS

    assert set(R1_FIELDS) == {"dynamic_sampling_rounds", "completions_log_steps", "generation_engine", "stop_strings",
                              "reflection_markers", "language"}
    fields = {f.name: f for f in dataclasses.fields(R1GRPOConfig)}
    for name in R1_FIELDS:
        assert name not in GRPOConfig.__dataclass_fields__ and len(fields[name].metadata["help"]) > 20, name
    cfg = GRPOStageConfig(dynamic_sampling=True, dynamic_sampling_rounds=2, completions_log_steps=0,
                          stop_strings=["</answer>"], reflection_markers=["wait"], language="zh", engine="hf")
    args = grpo_args(cfg, str(tmp_path), seed=0, use_cpu=True)
    assert isinstance(args, R1GRPOConfig)
    assert ({n: getattr(args, n) for n in R1_FIELDS}
            == {"dynamic_sampling_rounds": 2, "completions_log_steps": 0, "generation_engine": "hf",
                "stop_strings": ["</answer>"], "reflection_markers": ["wait"], "language": "zh"})
    with pytest.raises(ValueError, match=r"grpo\.args .*R1GRPOConfig .*num_generation"):
        grpo_args(GRPOStageConfig(args={"num_generation": 4}), str(tmp_path), seed=0, use_cpu=True)
    with pytest.raises(ValueError, match="set grpo.stop_strings instead of grpo.args.stop_strings"):
        grpo_args(GRPOStageConfig(args={"stop_strings": ["x"]}), str(tmp_path), seed=0, use_cpu=True)
    with pytest.raises(ValueError, match="generation_engine must be 'r1' or 'hf'"):
        R1GRPOConfig(output_dir=str(tmp_path), generation_engine="fast")
    with pytest.raises(TypeError, match="R1GRPOConfig"):
        R1GRPOTrainer(model=None, reward_funcs=[], args=GRPOConfig(output_dir=str(tmp_path), use_cpu=True))


class _HalfConstantReward:
    """Test reward: constant for prompts whose id starts with 'c', length-dependent otherwise."""

    __name__ = "half_constant"

    def __call__(self, completions, id, **kwargs):
        return [0.5 if i.startswith("c") else len(c) / 100 for c, i in zip(completions, id)]


def _trainer(tiny_model_dir, tmp_path, reward, rounds, **args):
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    rows = pd.DataFrame({"id": ["c1", "c2", "v1", "v2", "c3", "v3"], "problem": [f"{i}+{i}?" for i in range(6)],
                         "answer": [str(2 * i) for i in range(6)]})
    cfg = GRPOStageConfig(rewards={"accuracy": 1.0}, num_generations=2, max_completion_length=6, max_steps=1,
                          dynamic_sampling=rounds > 0, dynamic_sampling_rounds=max(rounds, 1),
                          args={"per_device_train_batch_size": 4, **args})
    trainer = R1GRPOTrainer(model=model, reward_funcs=[reward], args=grpo_args(cfg, str(tmp_path), seed=0, use_cpu=True),
                            train_dataset=build_prompt_dataset(rows, tok, "r1_zero", "<think>\n"),
                            processing_class=tok)
    assert trainer.args.dynamic_sampling_rounds == rounds
    trainer.model.train()
    return trainer


def test_dynamic_sampling_replaces_zero_advantage_groups(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, _HalfConstantReward(), rounds=8)
    ds = trainer.train_dataset
    inputs = [ds[0], ds[0], ds[1], ds[1]]          # both groups constant-reward: no signal
    batch = trainer._generate_and_score_completions(inputs)
    adv = batch["advantages"].view(-1, 2)
    assert batch["completion_ids"].shape[0] == 4 and (adv.abs() > 0).any(dim=1).all()
    assert batch["num_items_in_batch"] == batch["completion_mask"].sum()
    m = trainer._metrics["train"]
    assert m["dynamic_sampling/dropped_groups"][-1] >= 2 and m["dynamic_sampling/extra_rounds"][-1] >= 1


def test_dynamic_sampling_cap_keeps_the_batch_size(tiny_model_dir, tmp_path):
    def constant(completions, **kwargs):
        return [1.0] * len(completions)

    trainer = _trainer(tiny_model_dir, tmp_path, constant, rounds=2)
    ds = trainer.train_dataset
    batch = trainer._generate_and_score_completions([ds[2], ds[2], ds[3], ds[3]])
    assert batch["completion_ids"].shape[0] == 4
    assert trainer._metrics["train"]["dynamic_sampling/extra_rounds"][-1] == 2
    assert trainer._metrics["train"]["dynamic_sampling/dropped_groups"][-1] == 2 * 3


def test_dynamic_sampling_trains_a_step(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, _HalfConstantReward(), rounds=3)
    trainer.train()
    assert trainer.state.global_step == 1


def test_vllm_colocate_is_chosen_on_cuda_with_vllm(tmp_path, monkeypatch):
    from r1core import sampling

    monkeypatch.setattr(sampling, "vllm_available", lambda: True)
    args = grpo_args(GRPOStageConfig(), str(tmp_path), seed=0, use_cpu=True)
    assert args.use_vllm is True and args.vllm_mode == "colocate"
    assert args.vllm_gpu_memory_utilization == GRPOStageConfig().vllm.gpu_memory_utilization
    off = grpo_args(GRPOStageConfig(args={"use_vllm": False}), str(tmp_path), seed=0, use_cpu=True)
    assert off.use_vllm is False
    assert grpo_args(GRPOStageConfig(engine="cpu"), str(tmp_path), seed=0, use_cpu=True).use_vllm is False
    monkeypatch.setattr(sampling, "vllm_available", lambda: False)
    args = grpo_args(GRPOStageConfig(), str(tmp_path), seed=0, use_cpu=True)
    assert args.use_vllm is False and args.generation_engine == "r1"
    assert grpo_args(GRPOStageConfig(engine="hf"), str(tmp_path), seed=0, use_cpu=True).generation_engine == "hf"


def test_stop_strings_cut_completions_after_the_answer(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, _HalfConstantReward(), rounds=0)
    trainer.args.stop_strings = ["</answer>"]
    tok = trainer.processing_class
    ids = tok("<think>x</think><answer>4</answer> and more text", add_special_tokens=False)["input_ids"]
    cut = trainer._cut_at_stop(ids)
    assert tok.decode(cut[:-1]) == "<think>x</think><answer>4</answer>" and cut[-1] == tok.eos_token_id
    other = tok("no stop here", add_special_tokens=False)["input_ids"]
    assert trainer._cut_at_stop(other) == other


def test_stop_strings_retokenize_a_token_that_runs_past_the_stop(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, _HalfConstantReward(), rounds=0)
    trainer.args.stop_strings = ["</answer>"]
    tok = trainer.processing_class
    ids = tok("<answer>25</answer></think>", add_special_tokens=False)["input_ids"]
    cut = trainer._cut_at_stop(ids)
    assert tok.decode(cut[:-1]) == "<answer>25</answer>" and cut[-1] == tok.eos_token_id


def _trl_head_and_ours(tiny_model_dir, chunk_tokens: int = 1024, checkpointing: bool = False):
    """The tiny model twice in training mode, both with TRL's fused LM head (T=0.7); the second with
    the CPU head installed over it."""
    import copy

    from trl.trainer.utils import add_fused_lm_head

    from r1core.grpo import install_cpu_logprob_head

    model, _ = load_model_and_tokenizer(str(tiny_model_dir))
    ours = copy.deepcopy(model)
    for m in (model, ours):
        add_fused_lm_head(m, temperature=0.7, outputs=("log_probs", "entropy"))
        m.train()
    if checkpointing:
        ours.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert install_cpu_logprob_head(ours, 0.7, chunk_tokens=chunk_tokens)
    return model, ours


def _assert_same_outputs_and_gradients(model, ours, outs) -> None:
    for field in ("log_probs", "entropy"):
        assert torch.allclose(getattr(outs[0], field), getattr(outs[1], field), atol=1e-5), field
    (outs[0].log_probs.sum() + outs[0].entropy.sum()).backward()
    (outs[1].log_probs.sum() + outs[1].entropy.sum()).backward()
    grads = dict(ours.named_parameters())
    for name, p in model.named_parameters():
        assert float((p.grad - grads[name].grad).abs().max()) <= 1e-4 * float(p.grad.abs().max()), name


def test_cpu_logprob_head_matches_trl_fused_head(tiny_model_dir):
    """The CPU LM head (completion positions only, chunked, recomputed in backward) gives TRL's
    log-probabilities, entropies, loss and gradients."""
    from r1core.grpo import install_cpu_logprob_head

    model, ours = _trl_head_and_ours(tiny_model_dir, chunk_tokens=5)  # several chunks
    assert not install_cpu_logprob_head(load_model_and_tokenizer(str(tiny_model_dir))[0], 0.7)  # no TRL head
    torch.manual_seed(0)
    ids = torch.randint(0, 500, (3, 12))
    labels = ids.clone()
    labels[:, :6] = -100  # the prompt is not scored
    labels[2, 9:] = -100  # padding after a short completion
    attention = torch.ones_like(ids)
    outs = [m(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True) for m in (model, ours)]
    assert torch.allclose(outs[0].loss, outs[1].loss, atol=1e-6)
    _assert_same_outputs_and_gradients(model, ours, outs)


def _grpo_batch():
    """Two groups of 3 completions: prompts left-padded to 6 columns (the second by 2), completions
    of 6, 3, 1 and 5, 6, 2 tokens right-padded to 6; labels as TRL builds them."""
    torch.manual_seed(0)
    prompts = [torch.randint(0, 500, (6,)), torch.randint(0, 500, (4,))]
    ids, attention = torch.zeros(6, 12, dtype=torch.long), torch.zeros(6, 12, dtype=torch.long)
    for row, length in enumerate((6, 3, 1, 5, 6, 2)):
        prompt = prompts[row // 3]
        ids[row, 6 - len(prompt):6], attention[row, 6 - len(prompt):6] = prompt, 1
        ids[row, 6:6 + length], attention[row, 6:6 + length] = torch.randint(0, 500, (length,)), 1
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :6] = -100
    return ids, attention, labels


@pytest.mark.parametrize("checkpointing", [False, True])
def test_cpu_logprob_head_shares_each_groups_prompt(tiny_model_dir, checkpointing):
    """Each group's prompt runs once (its KV copied to the group's completions) and completions
    run only as far as they are scored: TRL's log-probabilities, entropies and gradients all the
    same. With gradient checkpointing (which drops the cache) the full batch runs instead."""
    model, ours = _trl_head_and_ours(tiny_model_dir, checkpointing=checkpointing)
    batches = []
    ours.base_model.register_forward_hook(lambda module, args, kwargs, out: batches.append(
        tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    ids, attention, labels = _grpo_batch()
    outs = [m(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True) for m in (model, ours)]
    if checkpointing:
        assert batches == [(6, 12)]
    else:  # 2 prompts once; then completions by length, each run up to its last scored label: (6, 6, 5) in
        # one batch (padding at most 25%), (3), (2); the 1-token completion needs only the prompt's last state
        assert batches == [(2, 6), (3, 5), (1, 2), (1, 1)], batches
    _assert_same_outputs_and_gradients(model, ours, outs)


def test_reference_model_gets_the_cpu_head_and_a_step_trains(tiny_model_dir, tmp_path):
    """With a KL term (beta > 0) TRL scores the completions under a reference model too: it gets the
    CPU head (shared prompts) as well, and a step logs a finite KL."""
    trainer = _trainer(tiny_model_dir, tmp_path, _HalfConstantReward(), rounds=0, beta=0.04)
    for model in (trainer.model, trainer.ref_model):
        assert "install_cpu_logprob_head" in model.forward.__func__.__qualname__
    trainer.train()
    kl = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    assert kl and all(math.isfinite(k) for k in kl)
