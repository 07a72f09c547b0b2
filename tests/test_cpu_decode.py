"""The CPU decode step (:mod:`r1core.cpu_engine.decoder`, its kernel :mod:`r1core.cpu_engine.kernel`):
the same logits and KV cache as transformers' forward for each supported layout (grouped-query
attention, q/k/v biases, Qwen3's q/k norms), clear refusals for what it does not take, and the
kernel's input checks."""

from __future__ import annotations

import pytest
import torch

from r1core.cpu_engine import kernel
from r1core.cpu_engine.cache import cache_keyword
from r1core.cpu_engine.decoder import CpuDecoder, unsupported
from r1core.cpu_engine.prefill import prefill
from r1core.generation import SamplingParams, generate
from tests.tiny import length_reward


def _random_model(kind: str):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(vocab_size=300, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=512)
    torch.manual_seed(0)
    if kind == "llama":  # 6 query heads over 2 key/value heads of 16: groups of 3, as SmolLM2
        return LlamaForCausalLM(LlamaConfig(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, **common))
    if kind == "qwen2":  # q/k/v biases, head_dim 32
        return Qwen2ForCausalLM(Qwen2Config(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, **common))
    return Qwen3ForCausalLM(Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                        **common))  # q_norm / k_norm, head_dim 64 (not hidden / heads)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_decode_steps_equal_transformers_forward(kind):
    """Left-padded rows of different lengths, several steps: each step's logits and the cache
    columns it writes equal transformers' forward over an identical cache (fp32 rounding)."""
    model = _random_model(kind).eval()
    decoder = CpuDecoder.for_model(model)
    assert decoder is not None
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    caches = []
    for _ in range(2):
        cache, logits, mask, position = prefill(model, prompts, 0, capacity=20, chunk_tokens=64)
        caches.append(cache)
    starts = (mask.shape[1] - mask.sum(-1)).to(torch.long)  # (B,) first real column per row
    ids = logits.argmax(-1)
    for _ in range(4):
        mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
        position = position + 1
        ours = decoder.step(ids, position, caches[0].layers, starts)
        with torch.no_grad():
            theirs = model(input_ids=ids[:, None], attention_mask=mask, position_ids=position[:, None],
                           use_cache=True, **{cache_keyword(model): caches[1]}).logits[:, -1].float()
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        for a, b in zip(caches[0].layers, caches[1].layers, strict=True):
            assert a.keys.shape == b.keys.shape
            for row, first in enumerate(starts.tolist()):  # padding columns are never written or read
                torch.testing.assert_close(a.keys[row, :, first:], b.keys[row, :, first:], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(a.values[row, :, first:], b.values[row, :, first:])
        ids = theirs.argmax(-1)


def test_engine_decodes_through_the_kernel_and_matches_transformers(tiny, monkeypatch):
    """The engine takes the CPU decoder for the tiny Llama (one step per new token after the
    first), and greedy completions equal transformers' ``generate`` token for token."""
    model, tok = tiny
    steps = []
    real = CpuDecoder.step
    monkeypatch.setattr(CpuDecoder, "step", lambda self, *a: steps.append(len(a[0])) or real(self, *a))
    prompts = ["What is 1+1?", "Compute the sum of the first ten odd numbers, please.", "Hi"]
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    ours = generate(model, tok, prompts, params, batch_size=3, engine="r1")
    theirs = generate(model, tok, prompts, params, batch_size=3, engine="hf")
    assert [o.text for o in ours] == [t.text for t in theirs]
    assert steps and steps[0] == 3 and len(steps) <= params.max_new_tokens - 1


def test_unsupported_models_keep_transformers_forward():
    """bf16 weights, a non-SiLU MLP, a hooked or wrapped linear layer: refused with the reason."""
    model = _random_model("llama")
    assert unsupported(model) is None
    assert "bfloat16" in unsupported(_random_model("llama").to(torch.bfloat16))
    model.config.hidden_act = "gelu"
    assert "hidden_act" in unsupported(model)
    model.config.hidden_act = "silu"
    handle = model.model.layers[1].mlp.up_proj.register_forward_hook(lambda *a: None)
    assert "hooks" in unsupported(model)
    handle.remove()
    model.model.layers[0].self_attn.q_proj = torch.nn.Sequential(model.model.layers[0].self_attn.q_proj)
    assert "Sequential" in unsupported(model)
    from transformers import GPT2Config, GPT2LMHeadModel

    assert "GPT2LMHeadModel" in unsupported(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2)))


def test_kernel_rejects_bad_inputs_with_the_reason():
    ops = kernel.kernels()
    assert ops is not None, "the kernel must build on the test machine (g++, ninja, AVX2)"
    q, kv = torch.zeros(2, 2 * 16), torch.zeros(2, 16)
    rot = torch.zeros(2, 16)
    cache = torch.zeros(2, 1, 8, 16)
    starts = torch.zeros(2, dtype=torch.long)
    out = ops.rope_attend(q, kv, kv, rot, rot, cache, cache.clone(), starts, 3, 0.25)
    assert out.shape == (2, 32)
    with pytest.raises(RuntimeError, match="column 8"):  # past the cache's capacity
        ops.rope_attend(q, kv, kv, rot, rot, cache, cache.clone(), starts, 8, 0.25)
    with pytest.raises(RuntimeError, match="starts\\[1\\] = 5"):
        ops.rope_attend(q, kv, kv, rot, rot, cache, cache.clone(), torch.tensor([0, 5]), 3, 0.25)
    with pytest.raises(RuntimeError, match="q must be a contiguous CPU float32"):
        ops.rope_attend(q.double(), kv, kv, rot, rot, cache, cache.clone(), starts, 3, 0.25)
    with pytest.raises(RuntimeError, match="head_dim 24"):
        c24 = torch.zeros(2, 1, 8, 24)
        ops.rope_attend(torch.zeros(2, 48), torch.zeros(2, 24), torch.zeros(2, 24), torch.zeros(2, 24),
                        torch.zeros(2, 24), c24, c24.clone(), starts, 3, 0.25)


def test_add_rms_norm_adds_the_residual_in_place_and_normalises_like_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ops = kernel.kernels()
    torch.manual_seed(0)
    norm = LlamaRMSNorm(44, eps=1e-5)  # 44: a tail past the 8-lane loop
    norm.weight.data.normal_()
    h, delta = torch.randn(5, 44), torch.randn(5, 44)
    expected_h = h + delta
    with torch.no_grad():
        expected = norm(expected_h)
        out = ops.add_rms_norm(h, delta, norm.weight, norm.variance_epsilon)
    torch.testing.assert_close(h, expected_h)  # the residual stream, updated in place
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(ops.add_rms_norm(h.clone(), None, norm.weight.detach(), 1e-5), expected)
    with pytest.raises(RuntimeError, match="delta must have h's shape"):
        ops.add_rms_norm(h, torch.zeros(5, 8), norm.weight.detach(), 1e-5)
    with pytest.raises(RuntimeError, match="weight must be a contiguous float32 vector of 44"):
        ops.add_rms_norm(h, None, torch.ones(8), 1e-5)


def test_grpo_with_bf16_mixed_precision_on_cpu_keeps_the_trainers_forward(tiny_model_dir, tmp_path, monkeypatch):
    """``bf16: true`` on CPU: accelerate runs the forward under autocast. Rollouts then go through
    that forward (the packed oneDNN kernel steps aside for ``F.linear`` under autocast, and the
    fp32 CPU decoder is not used), and the step trains."""
    import pandas as pd

    from r1core.config import GRPOStageConfig
    from r1core.grpo import R1GRPOTrainer, build_prompt_dataset, grpo_args
    from r1core.models import load_model_and_tokenizer

    steps = []
    monkeypatch.setattr(CpuDecoder, "step", lambda self, *a: steps.append(1))
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    rows = pd.DataFrame({"id": ["a"], "problem": ["1+1?"], "answer": ["2"]})
    cfg = GRPOStageConfig(rewards={"accuracy": 1.0}, num_generations=2, max_completion_length=6, max_steps=1,
                          args={"per_device_train_batch_size": 2, "bf16": True})
    trainer = R1GRPOTrainer(model=model, reward_funcs=[length_reward],
                            args=grpo_args(cfg, str(tmp_path), seed=0, use_cpu=True),
                            train_dataset=build_prompt_dataset(rows, tok, "r1_zero", None), processing_class=tok)
    trainer.train()
    assert "autocast" in unsupported(trainer.model)
    assert not steps
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


@pytest.mark.timeout(300)
def test_a_build_lock_left_by_a_killed_process_does_not_block_loading(monkeypatch):
    """torch's build lock is a plain file: a process killed mid-build leaves it, and torch then
    waits for it forever. The loader holds an OS lock around the build and clears such a file."""
    assert kernel.kernels() is not None
    build = kernel.build_directory()
    (build / "lock").touch()  # what a SIGKILL during the build leaves
    monkeypatch.setattr(kernel, "_kernels", None)  # a fresh process
    assert kernel.kernels() is not None
    assert not (build / "lock").exists()
