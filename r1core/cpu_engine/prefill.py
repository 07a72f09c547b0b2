"""Pre-fill: prompts into one left-padded cache, the shared prefix once, in passes of a token budget."""

from __future__ import annotations

import torch

from r1core.cpu_engine import threads
from r1core.cpu_engine.cache import PreallocatedLayer, cache_keyword, new_cache


def prefill(model, prompts: list[list[int]], pad_id: int, capacity: int, chunk_tokens: int,
            min_shared: int = 8):
    """Pre-fill ``prompts`` (sorted by length) into one cache left-padded to the longest prompt.

    The prefix all prompts share (a chat template's system prompt: 24 tokens for SmolLM2, ~70 for
    R1-Zero's instruction) is pre-filled once when it is at least ``min_shared`` tokens, and its
    cache copied to every row. The rest goes in passes of at most ``chunk_tokens`` padded tokens,
    each padded only to its own longest prompt (fixed chunks of 16 rows padded MATH-500's 64
    prompts to 12,096 tokens for 7,508 real ones; the token budget pads them to ~8,100).

    Returns ``(cache, logits (U, V) at each prompt's last token, mask (U, P), positions (U,))``.
    """
    device = next(model.parameters()).device
    keyword = cache_keyword(model)
    width = max(len(p) for p in prompts)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)  # (U, P), left padded
    for r, p in enumerate(prompts):
        mask[r, width - len(p):] = 1
    cache, logits = new_cache(model), []
    chunked = all(isinstance(layer, PreallocatedLayer) for layer in cache.layers)
    shared = _shared_prefix(prompts) if chunked and len(prompts) > 1 else 0  # < every prompt's length
    shared, prefix = (shared, new_cache(model)) if shared >= min_shared else (0, None)
    if prefix is not None:
        model(input_ids=torch.tensor([prompts[0][:shared]], device=device), use_cache=True,
              position_ids=torch.arange(shared, device=device)[None], logits_to_keep=1, **{keyword: prefix})
    rests = [p[shared:] for p in prompts]
    bounds = _prefill_chunks([len(p) for p in rests], chunk_tokens) if chunked else [(0, len(prompts))]
    for start, end in bounds:  # other layer kinds (sliding windows): one pass
        if device.type == "cpu":
            threads.adapt()  # each pass: the cores other processes leave free (r1core.cpu_engine.threads)
        part = rests[start:end]
        w = max(len(p) for p in part)
        ids = torch.full((len(part), w), pad_id, dtype=torch.long, device=device)
        part_mask = torch.zeros((len(part), w), dtype=torch.long, device=device)  # (n, w): each rest, left padded
        for r, p in enumerate(part):
            ids[r, w - len(p):] = torch.tensor(p, dtype=torch.long)
            part_mask[r, w - len(p):] = 1
        part_cache = new_cache(model) if chunked else cache
        if prefix is not None:  # the chunk's cache starts with the shared prefix: [prefix][pad][rest]
            part_mask = torch.cat([part_mask.new_ones((len(part), shared)), part_mask], dim=1)
            for layer, pre in zip(part_cache.layers, prefix.layers, strict=True):
                layer.place(pre, rows=(0, len(part)), total_rows=len(part), width=shared, capacity=shared + w)
        positions = (part_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        logits.append(model(input_ids=ids, attention_mask=part_mask, position_ids=positions, use_cache=True,
                            logits_to_keep=1, **{keyword: part_cache}).logits[:, -1, :])
        if chunked:
            for layer, part_layer in zip(cache.layers, part_cache.layers, strict=True):
                layer.place(part_layer, rows=(start, end), total_rows=len(prompts), width=width, capacity=capacity)
                if prefix is not None:  # rows shorter than the chunk's longest: prefix next to the rest
                    for row in range(start, end):
                        at = width - len(prompts[row])
                        if at != width - shared - w:
                            layer.place_row(part_layer, row=row, source_row=row - start, columns=(at, at + shared))
    return cache, torch.cat(logits).float(), mask, mask.sum(-1) - 1


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, less than the shortest prompt (each keeps a token to pre-fill)."""
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return n


def _prefill_chunks(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Split rows into consecutive ``(start, end)`` passes whose rows times longest length stays
    within ``budget`` tokens (at least one row per pass)."""
    bounds, start, longest = [], 0, 0
    for r, n in enumerate(lengths):
        if r > start and (r - start + 1) * max(longest, n) > budget:
            bounds.append((start, r))
            start, longest = r, 0
        longest = max(longest, n)
    return bounds + [(start, len(lengths))]
