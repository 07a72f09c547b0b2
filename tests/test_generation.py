"""The ``"r1"`` generation engine: same tokens as transformers ``generate`` when greedy, HF's
sampling distribution when sampling, stop strings, and GRPO rollouts through it."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from r1core import generation
from r1core.cpu_engine import attention, next_token
from r1core.cpu_engine.cache import PreallocatedLayer, _row_moves
from r1core.cpu_engine.decoder import CpuDecoder
from r1core.cpu_engine.prefill import _prefill_chunks, _shared_prefix, prefill
from r1core.generation import SamplingParams, generate, sample_token_ids
from r1core.models import load_model_and_tokenizer
from tests.tiny import length_reward

PROMPTS = ["What is 1+1?", "Compute the sum of the first ten odd numbers, please.", "What is 1+1?", "Hi",
           "A much longer prompt that makes the left padding matter: " * 3, "What is 1+1?"]


@pytest.mark.parametrize("repetition_penalty", [1.0, 1.3])
def test_greedy_matches_transformers_generate(tiny, repetition_penalty):
    """Left padding, chunked pre-fill, shared prompts and dropped rows change nothing: greedy
    completions equal transformers' token for token (also with a repetition penalty)."""
    model, tok = tiny
    params = SamplingParams(max_new_tokens=12, temperature=0.0, repetition_penalty=repetition_penalty)
    ours = generate(model, tok, PROMPTS, params, batch_size=4, engine="r1")
    theirs = generate(model, tok, PROMPTS, params, batch_size=4, engine="hf")
    assert [o.text for o in ours] == [t.text for t in theirs]
    assert [o.num_tokens for o in ours] == [t.num_tokens for t in theirs]


def test_chunked_prefill_and_dropping_rows_match_one_pass(tiny, monkeypatch):
    """Pre-filling one prompt per pass (each padded to its own length) and a batch whose rows
    finish at different steps give the same greedy tokens as one unchunked batch of each."""
    model, tok = tiny
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    eos = [tok.eos_token_id]
    one_pass = sample_token_ids(model, ids, params, eos_ids=eos, pad_id=tok.pad_token_id, batch_size=6,
                                prefill_tokens=10_000)
    chunked = sample_token_ids(model, ids, params, eos_ids=eos, pad_id=tok.pad_token_id, batch_size=6,
                               prefill_tokens=1)
    assert [c.ids for c in chunked] == [c.ids for c in one_pass]
    # Make every row's 3rd token end it: rows leave the batch, the rest continue unchanged.
    stop_at = {c.ids[2] for c in one_pass}
    cut = sample_token_ids(model, ids, params, eos_ids=sorted(stop_at), pad_id=tok.pad_token_id, batch_size=6)
    for full, short in zip(one_pass, cut, strict=True):
        first = next(i for i, t in enumerate(full.ids) if t in stop_at)
        assert short.ids == full.ids[: first + 1] and short.stopped


def test_prefill_passes_keep_to_the_token_budget():
    assert _prefill_chunks([2, 2, 3, 9], budget=8) == [(0, 2), (2, 3), (3, 4)]
    assert _prefill_chunks([5, 5, 5], budget=1) == [(0, 1), (1, 2), (2, 3)]  # one row at least
    assert _prefill_chunks([5, 5, 5], budget=100) == [(0, 3)]


def test_shared_prefix_is_prefilled_once_and_changes_nothing(tiny):
    """Prompts sharing a system prompt: the prefix is pre-filled once and copied next to each
    row's rest; logits and every row's cache columns equal a pre-fill without sharing, and greedy
    completions equal transformers'."""
    model, tok = tiny
    system = "You are a careful assistant. Reason step by step, then answer in one line. "
    prompts = [system + q for q in ("What is 1+1?", "Name a prime larger than ten, please.", "Hi",
                                    "Sum the first ten odd numbers and explain the pattern you see.")]
    ids = sorted((tok(p, add_special_tokens=False)["input_ids"] for p in prompts), key=len)
    assert _shared_prefix(ids) >= 8
    with torch.no_grad():
        shared = prefill(model, ids, tok.pad_token_id, 64, chunk_tokens=40)
        plain = prefill(model, ids, tok.pad_token_id, 64, chunk_tokens=40, min_shared=10**6)
    torch.testing.assert_close(shared[1], plain[1], atol=1e-4, rtol=1e-4)
    width = shared[2].shape[1]
    for row, p in enumerate(ids):  # the valid columns of every layer's cache
        for a, b in zip(shared[0].layers, plain[0].layers, strict=True):
            torch.testing.assert_close(a.keys[row, :, width - len(p):], b.keys[row, :, width - len(p):], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(a.values[row, :, width - len(p):], b.values[row, :, width - len(p):], atol=1e-4, rtol=1e-4)
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    ours = generate(model, tok, prompts, params, batch_size=4, engine="r1")
    theirs = generate(model, tok, prompts, params, batch_size=4, engine="hf")
    assert [o.text for o in ours] == [t.text for t in theirs]


def test_cache_rows_leave_in_place_and_repeat_by_copy():
    """Rows leaving the preallocated cache are compacted inside its buffers (no new allocation),
    every kept row's filled columns intact; repeating rows (k samples per prompt) copies; decoding
    goes on writing after the kept rows."""
    torch.manual_seed(0)
    layer = PreallocatedLayer()
    keys, values = torch.randn(7, 2, 5, 4), torch.randn(7, 2, 5, 4)
    layer.update(keys, values)
    buffer = layer._keys.data_ptr()
    keep = [1, 2, 4, 5, 6]
    layer.batch_select_indices(torch.tensor(keep))
    assert layer._keys.data_ptr() == buffer and layer.keys.shape == (5, 2, 5, 4)
    assert torch.equal(layer.keys, keys[keep]) and torch.equal(layer.values, values[keep])
    step_k, step_v = torch.randn(5, 2, 1, 4), torch.randn(5, 2, 1, 4)
    k, v = layer.update(step_k, step_v)
    assert torch.equal(k, torch.cat([keys[keep], step_k], 2)) and torch.equal(v, torch.cat([values[keep], step_v], 2))
    layer.batch_select_indices(torch.tensor([0, 0, 3]))
    assert torch.equal(layer.keys, torch.cat([keys[keep], step_k], 2)[[0, 0, 3]])
    moves = _row_moves([0, 1, 3, 4, 5, 9])
    assert moves == [(2, 3, 1), (3, 4, 1), (4, 5, 1), (5, 9, 1)]


def test_row_buckets_split_where_padding_costs_more_than_a_call(monkeypatch):
    cpu = torch.device("cpu")
    assert attention.row_buckets([7, 7, 7], cpu) is None  # nothing to skip
    monkeypatch.setattr(attention, "_BUCKET_OVERHEAD", 0)
    assert attention.row_buckets([400, 400, 0], cpu) == [(0, 2, 400), (2, 3, 0)]
    assert attention.row_buckets([400, 400, 0], torch.device("meta")) is None  # CPU only
    monkeypatch.setattr(attention, "_BUCKET_OVERHEAD", 1000)  # saving 800 columns is not worth a call
    assert attention.row_buckets([400, 400, 0], cpu) is None


def test_bucketed_attention_reads_only_each_buckets_columns(tiny, monkeypatch):
    """Decode attention split into row buckets (one per distinct prompt length here) reads fewer
    cache columns than the padded batch has, and greedy tokens still equal transformers'. (The
    transformers-forward decode path: models the CPU decoder does not take.)"""
    model, tok = tiny
    assert model.config._attn_implementation == "sdpa"
    monkeypatch.setattr(CpuDecoder, "for_model", classmethod(lambda cls, model: None))
    monkeypatch.setattr(attention, "_BUCKET_OVERHEAD", 0)
    widths = []
    real = attention.sdpa_attention_forward

    def spy(module, query, key, *args, **kwargs):
        widths.append((query.shape[0], key.shape[2]))
        return real(module, query, key, *args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    ours = generate(model, tok, PROMPTS, params, batch_size=6, engine="r1")
    assert model.config._attn_implementation == "sdpa"  # restored after every step
    full = max(w for _, w in widths)
    assert any(rows < len(PROMPTS) and w < full for rows, w in widths), widths
    theirs = generate(model, tok, PROMPTS, params, batch_size=6, engine="hf")
    assert [o.text for o in ours] == [t.text for t in theirs]


@pytest.mark.parametrize("kwargs", [dict(top_p=0.9), dict(top_p=0.5, top_k=5), dict(top_p=1.0, min_p=0.2),
                                    dict(top_p=0.97), dict()])
def test_sampler_draws_from_transformers_warped_distribution(kwargs):
    """Empirical frequencies of ``next_tokens`` match the probabilities transformers' warpers give
    (temperature, top-k, top-p, min-p), including rows whose candidates miss top_p (full sort)."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    torch.manual_seed(0)
    vocab = 40
    logits = torch.randn(3, vocab) * 2
    logits[2] = torch.randn(vocab) * 0.05  # nearly flat: 8 candidates hold ~20% of the mass, top-p needs the full sort
    params = SamplingParams(temperature=0.7, **{"top_p": 1.0, **kwargs})
    warped = TemperatureLogitsWarper(params.temperature)(None, logits.clone())
    if params.top_k:
        warped = TopKLogitsWarper(params.top_k)(None, warped)
    if params.top_p < 1:
        warped = TopPLogitsWarper(params.top_p)(None, warped)
    if params.min_p:
        warped = MinPLogitsWarper(params.min_p)(None, warped)
    expected = torch.softmax(warped, dim=-1)  # (3, V)
    gen = torch.Generator().manual_seed(1)
    draws = 4000
    counts = torch.zeros(3, vocab)
    for _ in range(draws):
        tokens = next_token.next_tokens(logits.clone(), params, gen, None, candidates=8)
        counts[torch.arange(3), tokens] += 1
    freq = counts / draws
    assert bool((counts[expected == 0] == 0).all()), "sampled a token transformers' warpers remove"
    assert float((freq - expected).abs().max()) < 0.035


def _tiled_rows() -> torch.Tensor:
    """Logits ``(3, 7680)`` (120 tiles of 64) for the CPU sampler's tiled candidates: row 0 peaked (its
    trusted candidates settle top-p 0.9), row 1 with 100 near-equal leaders in 100 tiles (past any 64
    candidates: full sort), row 2 with one leader and 60 runners-up in 60 tiles (the 32 tiles' bound
    cuts the candidates short, the exact top 64 settle it)."""
    torch.manual_seed(0)
    vocab, tile = 7680, 64
    logits = torch.randn(3, vocab) * 0.5
    logits[0, 123] = 12.0
    logits[1, torch.arange(100) * tile + torch.randint(0, tile, (100,))] = 8.0 + torch.randn(100) * 0.3
    logits[2, 77] = 10.0
    logits[2, torch.arange(1, 61) * tile + 5] = 7.5 + torch.randn(60) * 0.3
    return logits


def test_tiled_candidates_trust_only_the_true_top():
    """``_top_logits`` on CPU takes candidates from the 32 tiles with the largest maxima; the ones it
    trusts equal ``topk``'s, and rows whose trusted candidates cannot settle top-p are found."""
    logits = _tiled_rows()
    params = SamplingParams(temperature=0.7, top_p=0.9)
    values, index, trusted = next_token._top_logits(logits, 64)
    exact_values, exact_index = logits.topk(64, dim=-1)
    assert (trusted < 64).all() and (trusted > 0).all()
    for row in range(3):
        n = int(trusted[row])
        assert torch.equal(values[row, :n], exact_values[row, :n])
        assert torch.equal(index[row, :n], exact_index[row, :n])
    log_norm = torch.logsumexp(logits / 0.7, dim=-1, keepdim=True)
    tiled = next_token._may_extend(torch.exp(values / 0.7 - log_norm), trusted, logits.shape[1], params)
    exact = next_token._may_extend(torch.exp(exact_values / 0.7 - log_norm), torch.full((3,), 64), logits.shape[1],
                                   params)
    assert tiled.tolist() == [False, True, True] and exact.tolist() == [False, True, False]
    log_norm_ours = next_token._scaled_logsumexp(logits, exact_values[:, :1], 0.7, torch.empty(4, logits.shape[1]))
    assert torch.allclose(log_norm_ours, log_norm, rtol=1e-6)


def test_sampler_with_tiled_candidates_draws_from_transformers_distribution():
    """Through all three tiled-candidate paths (trusted, exact top-k retry, full sort), the draws
    follow transformers' temperature + top-p warpers."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    logits = _tiled_rows()
    params = SamplingParams(temperature=0.7, top_p=0.9)
    expected = torch.softmax(TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(0.7)(None, logits.clone())), dim=-1)
    gen, draws = torch.Generator().manual_seed(1), 4000
    scratch = torch.empty_like(logits)
    counts = torch.zeros_like(logits)
    for _ in range(draws):
        tokens = next_token.next_tokens(logits.clone(), params, gen, None, candidates=64, scratch=scratch)
        counts[torch.arange(3), tokens] += 1
    assert bool((counts[expected == 0] == 0).all()), "sampled a token transformers' warpers remove"
    assert float((counts / draws - expected).abs().max()) < 0.035


def test_categorical_draws_by_tile_then_token():
    """Over a vocabulary-sized row, ``_categorical`` (a tile by its mass, then a token inside it)
    draws each token with its weight's share and never a zero weight, also at the top end of the
    cumulative sum."""
    torch.manual_seed(0)
    weights = torch.zeros(3, 49152)
    weights[0, [5, 700, 20000, 49151]] = torch.tensor([0.5, 0.25, 0.15, 0.1])  # one token in each of 4 tiles
    weights[1, 64 * 10 : 64 * 12] = 1.0  # uniform over two whole tiles ...
    weights[1, 64 * 11 + 3] = 128.0  # ... and half the mass on one token
    weights[2] = torch.rand(49152) ** 8  # dense, skewed
    expected = weights / weights.sum(-1, keepdim=True)
    gen, draws = torch.Generator().manual_seed(2), 20000
    counts = torch.zeros_like(weights)
    for _ in range(draws // 100):
        tokens = next_token._categorical(weights.repeat(100, 1), gen).view(100, 3)
        counts.scatter_add_(1, tokens.T, torch.ones(3, 100))
    assert bool((counts[weights == 0] == 0).all()), "drew a zero-weight token"
    freq = counts / draws
    assert float((freq[:2] - expected[:2]).abs().max()) < 0.015
    # row 2 over its 768 tiles: each tile's share of the draws
    tile_freq, tile_expected = freq[2].view(768, 64).sum(-1), expected[2].view(768, 64).sum(-1)
    assert float((tile_freq - tile_expected).abs().max()) < 0.006
    cdf = torch.tensor([[0.0, 0.2, 0.2, 1.0, 1.0, 1.0]], dtype=torch.float64)  # trailing zero weights
    assert next_token._inverse_cdf(cdf, torch.tensor([[1.0]], dtype=torch.float64)).item() == 3
    assert next_token._inverse_cdf(cdf, torch.tensor([[0.2]], dtype=torch.float64)).item() == 3  # skips index 2
    assert next_token._inverse_cdf(cdf, torch.tensor([[0.0]], dtype=torch.float64)).item() == 1  # skips index 0


def test_stop_strings_end_the_completion(tiny):
    model, tok = tiny
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    full = generate(model, tok, PROMPTS[:2], params)
    ids = sample_token_ids(model, [tok(PROMPTS[0], add_special_tokens=False)["input_ids"]], params,
                           eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)[0].ids
    stop = tok.decode(ids[3:5])
    assert stop.strip(), "the tiny model's greedy text has no usable stop string"
    out = generate(model, tok, PROMPTS[:1], params, stop_strings=[stop])[0]
    assert out.text.endswith(stop) or stop in out.text
    assert out.num_tokens < full[0].num_tokens and not out.truncated
    with pytest.raises(ValueError, match="tokenizer"):
        sample_token_ids(model, [ids], params, eos_ids=[0], pad_id=0, stop_strings=["x"])
    with pytest.raises(ValueError, match="engine"):
        generate(model, tok, PROMPTS[:1], params, engine="vllm-cpu")


def test_grpo_rollouts_come_from_the_r1_engine(tiny_model_dir, tmp_path, monkeypatch):
    """R1GRPOTrainer samples its groups with sample_token_ids (each group's prompt pre-filled once);
    engine 'hf' (generation_engine='hf') keeps TRL's transformers path."""
    from r1core.config import GRPOStageConfig
    from r1core.grpo import R1GRPOConfig, R1GRPOTrainer, build_prompt_dataset, grpo_args

    calls = []
    real = generation.sample_token_ids

    def spy(model, prompt_ids, params, **kw):
        calls.append((len(prompt_ids), len({tuple(p) for p in prompt_ids}), params))
        return real(model, prompt_ids, params, **kw)

    monkeypatch.setattr(generation, "sample_token_ids", spy)
    rows = pd.DataFrame({"id": ["a", "b"], "problem": ["1+1?", "2+2?"], "answer": ["2", "4"]})
    for engine, expected_calls in (("cpu", 1), ("hf", 0)):
        calls.clear()
        model, tok = load_model_and_tokenizer(str(tiny_model_dir))
        cfg = GRPOStageConfig(rewards={"accuracy": 1.0}, num_generations=2, max_completion_length=6, max_steps=1,
                              engine=engine, args={"per_device_train_batch_size": 4, "top_p": 0.9})
        trainer = R1GRPOTrainer(model=model, reward_funcs=[length_reward],
                                args=grpo_args(cfg, str(tmp_path / engine), seed=0, use_cpu=True),
                                train_dataset=build_prompt_dataset(rows, tok, "r1_zero", "<think>\n"),
                                processing_class=tok)
        trainer.train()
        assert len(calls) == expected_calls
    n, distinct, params = calls[0] if calls else (None, None, None)
    assert (n, distinct) == (4, 2) or not calls
    with pytest.raises(ValueError, match="generation_engine"):
        R1GRPOConfig(output_dir=str(tmp_path), generation_engine="fast")


def test_r1_grpo_rollouts_use_the_trainer_sampling_settings(tiny_model_dir, tmp_path, monkeypatch):
    from r1core.config import GRPOStageConfig
    from r1core.grpo import R1GRPOTrainer, build_prompt_dataset, grpo_args

    seen = []
    real = generation.sample_token_ids
    monkeypatch.setattr(generation, "sample_token_ids",
                        lambda m, p, params, **kw: seen.append(params) or real(m, p, params, **kw))
    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    rows = pd.DataFrame({"id": ["a"], "problem": ["1+1?"], "answer": ["2"]})
    cfg = GRPOStageConfig(rewards={"accuracy": 1.0}, num_generations=2, max_completion_length=5, max_steps=1,
                          args={"per_device_train_batch_size": 2, "top_p": 0.8, "temperature": 0.7,
                                "repetition_penalty": 1.1})
    R1GRPOTrainer(model=model, reward_funcs=[length_reward],
                  args=grpo_args(cfg, str(tmp_path), seed=0, use_cpu=True),
                  train_dataset=build_prompt_dataset(rows, tok, "r1_zero", None), processing_class=tok).train()
    assert (seen[0].max_new_tokens, seen[0].temperature, seen[0].top_p, seen[0].repetition_penalty) == (5, 0.7, 0.8, 1.1)
