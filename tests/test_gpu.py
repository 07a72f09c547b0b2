"""The ``"r1"`` engine and the GRPO trainer on a CUDA device (marker ``gpu``; deselected by default,
run with ``pytest -m gpu`` on a machine with a GPU)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from r1core import generation
from r1core.cpu_engine.next_token import next_tokens
from r1core.generation import SamplingParams, generate
from r1core.models import load_model_and_tokenizer
from tests.tiny import length_reward

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

PROMPTS = ["What is 1+1?", "Compute the sum of the first ten odd numbers, please.", "What is 1+1?", "Hi",
           "A much longer prompt that makes the left padding matter: " * 3]


@pytest.fixture(scope="module")
def tiny_cuda(tiny_model_dir):
    model, tok = load_model_and_tokenizer(str(tiny_model_dir), device="cuda")
    return model, tok


def test_greedy_matches_transformers_generate_on_cuda(tiny_cuda):
    model, tok = tiny_cuda
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    ours = generate(model, tok, PROMPTS, params, batch_size=4, engine="r1")
    theirs = generate(model, tok, PROMPTS, params, batch_size=4, engine="hf")
    assert [o.text for o in ours] == [t.text for t in theirs]


def test_sampling_on_cuda_keeps_every_tensor_on_the_device(tiny_cuda):
    """top-p with the full-sort fallback rows, min-p and top-k on CUDA logits and a CUDA generator;
    seeded runs repeat exactly."""
    model, tok = tiny_cuda
    for kwargs in (dict(top_p=0.95), dict(top_p=0.9, top_k=20), dict(top_p=1.0, min_p=0.1)):
        params = SamplingParams(max_new_tokens=16, temperature=0.6, seed=3, **kwargs)
        a = generate(model, tok, PROMPTS, params, batch_size=8)
        b = generate(model, tok, PROMPTS, params, batch_size=8)
        assert [s.text for s in a] == [s.text for s in b]
        assert all(0 < s.num_tokens <= 16 for s in a)
    logits = torch.randn(4, 300, device="cuda") * 0.05  # flat: the 8 candidates miss top_p, full sort
    tokens = next_tokens(logits, SamplingParams(temperature=0.7, top_p=0.9),
                         torch.Generator("cuda").manual_seed(0), None, candidates=8)
    assert tokens.device.type == "cuda" and tokens.shape == (4,)


def test_grpo_step_on_cuda_with_the_r1_engine(tiny_model_dir, tmp_path, monkeypatch):
    """One GRPO step on the GPU in TRL's bf16 default, rollouts from the r1 engine."""
    from r1core.config import GRPOStageConfig
    from r1core.grpo import R1GRPOTrainer, build_prompt_dataset, grpo_args

    calls = []
    real = generation.sample_token_ids
    monkeypatch.setattr(generation, "sample_token_ids",
                        lambda m, p, params, **kw: calls.append(next(m.parameters()).device.type)
                        or real(m, p, params, **kw))
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    rows = pd.DataFrame({"id": ["a", "b"], "problem": ["1+1?", "2+2?"], "answer": ["2", "4"]})
    cfg = GRPOStageConfig(rewards={"accuracy": 1.0}, num_generations=2, max_completion_length=8, max_steps=1,
                          args={"per_device_train_batch_size": 4, "bf16": True})
    trainer = R1GRPOTrainer(model=model, reward_funcs=[length_reward],
                            args=grpo_args(cfg, str(tmp_path), seed=0, use_cpu=False),
                            train_dataset=build_prompt_dataset(rows, tok, "r1_zero", "<think>\n"),
                            processing_class=tok)
    trainer.train()
    assert calls == ["cuda"]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
