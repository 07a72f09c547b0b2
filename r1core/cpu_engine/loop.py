"""The decode loop of the ``"r1"`` engine (:func:`decode`): batches of prompts pre-filled once each,
sampled token by token over the model's own forward or, on CPU, :class:`CpuDecoder`.

Registers the engine's attention in transformers (:func:`r1core.cpu_engine.attention.register`)
the first time it decodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from r1core.cpu_engine import attention, threads
from r1core.cpu_engine.attention import bucketed_attention, row_buckets
from r1core.cpu_engine.cache import PreallocatedLayer, cache_keyword, select_rows
from r1core.cpu_engine.decoder import CpuDecoder
from r1core.cpu_engine.linears import packed_linears
from r1core.cpu_engine.next_token import next_tokens
from r1core.cpu_engine.prefill import prefill

if TYPE_CHECKING:
    from r1core.generation import SamplingParams
    from r1core.tip import Tip


def decode(model, prompt_ids: Sequence[Sequence[int]], params: SamplingParams, *, eos_ids: Sequence[int],
           pad_id: int, batch_size: int, on_batch: Callable[[int, int, float], None] | None, stop_strings: list[str],
           tokenizer, candidates: int, prefill_tokens: int, tip: Tip | None = None) -> list[tuple[list[int], bool]]:
    """One completion per prompt, in input order, as ``(token ids, stopped)``: the ids end with the
    EOS token when the completion ended on one; ``stopped``: ended by EOS or a stop string rather
    than by ``params.max_new_tokens``. Arguments as :func:`r1core.generation.sample_token_ids`
    (which checks them); ``tip``: the thought switching penalty to apply (:mod:`r1core.tip`), or none.

    Prompts are sorted by length (tokens) and decoded in batches of ``batch_size``; batch ``b``
    samples from a generator seeded ``params.seed + b``. No gradients are recorded.
    """
    attention.register()
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list[tuple[list[int], bool] | None] = [None] * len(prompt_ids)
    device = next(model.parameters()).device
    with packed_linears(model):
        for b, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            t0 = time.perf_counter()
            results = _decode_batch(model, [list(prompt_ids[i]) for i in idx], params, torch.Generator(device).manual_seed(
                params.seed + b), set(int(e) for e in eos_ids), pad_id, stop_strings, tokenizer, candidates,
                prefill_tokens, tip)
            for i, r in zip(idx, results, strict=True):
                out[i] = r
            if on_batch is not None:
                tokens = sum(len(ids) for ids, _ in results)
                on_batch(min(start + batch_size, len(order)), len(order), tokens / max(time.perf_counter() - t0, 1e-9))
    return out  # type: ignore[return-value]


@torch.no_grad()
def _decode_batch(model, prompts: list[list[int]], params: SamplingParams, gen: torch.Generator, eos: set[int],
                  pad_id: int, stop_strings: list[str], tokenizer, candidates: int,
                  prefill_tokens: int, tip: Tip | None = None) -> list[tuple[list[int], bool]]:
    device = next(model.parameters()).device
    cpu = device.type == "cpu"
    if cpu:
        threads.adapt(fresh=True)
    unique: dict[tuple[int, ...], int] = {}
    rows = torch.tensor([unique.setdefault(tuple(p), len(unique)) for p in prompts], device=device)  # (B,)
    firsts = [list(p) for p in unique]
    cache, logits, mask, position = prefill(model, firsts, pad_id, max(map(len, firsts)) + params.max_new_tokens,
                                            prefill_tokens)
    if len(firsts) < len(prompts):  # copy each distinct prompt's cache to its samples
        select_rows(cache, rows)
    logits, mask, position = logits[rows], mask[rows], position[rows]  # (B, V), (B, P), (B,)
    history = None
    if params.repetition_penalty != 1.0:  # (B, P + t): prompt (left padded) + completion so far
        width = mask.shape[1]
        history = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)

    # Attention in row buckets, each over its own columns (full-attention caches only: sliding
    # windows keep their own layout), with a 4D additive mask kept across steps (SDPA would convert
    # a boolean mask in every layer and bucket).
    full_attention = all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)
    starts = (mask.shape[1] - mask.sum(-1)).tolist()  # each row's first cache column (left padding)
    # On CPU, Llama-family models decode through CpuDecoder (its own attention kernel, no masks).
    decoder = CpuDecoder.for_model(model) if full_attention and device.type == "cpu" else None
    buckets = row_buckets(starts, device) if full_attention and decoder is None else None
    additive = None  # (B, 1, 1, P + T): 0, or the dtype's minimum on padding; only where buckets are used
    if buckets is not None:  # (rows leaving cannot make equal starts unequal: no buckets now, none later)
        additive = torch.zeros((len(prompts), 1, 1, mask.shape[1] + params.max_new_tokens), dtype=model.dtype,
                               device=device)
        additive[:, 0, 0, : mask.shape[1]].masked_fill_(mask == 0, torch.finfo(model.dtype).min)
    keyword = cache_keyword(model)  # the forward's name for the cache: `cache` (past_key_values is deprecated)
    scratch = torch.empty_like(logits)  # (B, V): the sampler's normaliser, reused every step
    first_columns = torch.tensor(starts, dtype=torch.long) if decoder is not None else None  # (b,) for the decoder
    live = list(range(len(prompts)))  # batch row -> prompt index
    generated: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    finished = [False] * len(prompts)  # per batch row
    stop_window = max((len(s) for s in stop_strings), default=0) + 2  # tokens: every token is >= 1 character
    tip_state = None
    if tip is not None:
        from r1core.tip import TipState

        tip_state = TipState(tip, len(prompts), device)  # each row's thought start, (b,)
    for step in range(params.max_new_tokens):
        if cpu:
            threads.adapt()  # torch's thread count: the cores other processes leave free (reads /proc/stat at most every 0.5 s)
        tokens = next_tokens(logits, params, gen, history, candidates, scratch, tip=tip_state)  # (b,)
        if tip_state is not None:
            tip_state.observe(tokens)
        for row, tok in enumerate(tokens.tolist()):
            i = live[row]
            if finished[row]:
                continue
            generated[i].append(tok)
            if tok in eos:
                stopped[i] = True
            elif stop_strings and any(s in tokenizer.decode(generated[i][-stop_window:]) for s in stop_strings):
                stopped[i] = True
            if stopped[i]:
                finished[row] = True
        if all(finished) or step == params.max_new_tokens - 1:
            break
        done = sum(finished)
        if done and done * 8 >= len(live):  # drop finished rows once they are an eighth of the batch
            keep = torch.tensor([r for r, f in enumerate(finished) if not f], device=device)
            select_rows(cache, keep)
            live = [live[r] for r in keep.tolist()]
            tokens, mask, position = tokens[keep], mask[keep], position[keep]
            finished = [False] * len(live)
            history = history[keep] if history is not None else None
            if tip_state is not None:
                tip_state.keep(keep)
            starts = [starts[r] for r in keep.tolist()]
            additive = additive[keep] if additive is not None else None
            buckets = row_buckets(starts, device) if additive is not None else None
            first_columns = first_columns[keep] if first_columns is not None else None
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        position = position + 1
        step_ids = tokens.to(device)[:, None]  # (b, 1)
        if history is not None:
            history = torch.cat([history, step_ids], dim=1)
        if decoder is not None:
            logits = decoder.step(step_ids[:, 0], position, cache.layers, first_columns)  # (b, V)
        else:
            with bucketed_attention(model, buckets) as extra:
                step_mask = additive[..., : mask.shape[1]] if extra else mask
                logits = model(input_ids=step_ids, attention_mask=step_mask, position_ids=position[:, None],
                               use_cache=True, **{keyword: cache}, **extra).logits[:, -1, :].float()  # (b, V)
    return list(zip(generated, stopped, strict=True))
