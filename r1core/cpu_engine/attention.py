"""Decode attention in row buckets, each over only its own cache columns (transformers' forward
path: models :class:`r1core.cpu_engine.decoder.CpuDecoder` does not take), and its registration
in transformers' attention and mask interfaces.

:func:`register` adds :func:`bucketed_sdpa` to ``transformers.AttentionInterface`` (and
transformers' SDPA mask to ``AttentionMaskInterface``) under :data:`BUCKETED_SDPA`; the engine
calls it the first time it decodes, never at import: importing :mod:`r1core.generation` or this
package changes nothing in transformers.
"""

from __future__ import annotations

import threading

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

BUCKETED_SDPA = "r1_bucketed_sdpa"
_BUCKET_OVERHEAD = 256  # one more SDPA call costs about as much as reading 256 rows x columns of K/V (CPU)


def row_buckets(starts: list[int], device: torch.device) -> list[tuple[int, int, int]] | None:
    """Split a left-padded decode batch into consecutive row buckets ``(first row, end row, first
    column)`` so that attention reads each bucket's cache only from its earliest first column.

    The split minimises rows x columns read plus :data:`_BUCKET_OVERHEAD` per bucket (dynamic
    programming over the ``B`` rows, ``O(B^2)``). The cache's total width adds the same to every
    split, so the choice holds for the whole decode until rows leave. Returns ``None`` when one
    bucket is best, or off the CPU (on a GPU, attention is cheap and each call costs launches).
    """
    if device.type != "cpu" or len(set(starts)) < 2:
        return None
    n = len(starts)
    best, cut = [0] + [float("inf")] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        first = starts[end - 1]
        for begin in range(end - 1, -1, -1):
            first = min(first, starts[begin])
            cost = best[begin] - (end - begin) * first + _BUCKET_OVERHEAD  # width * rows is the same for all
            if cost <= best[end]:  # ties: the larger bucket
                best[end], cut[end] = cost, begin
    buckets, end = [], n
    while end > 0:
        begin = cut[end]
        buckets.append((begin, end, min(starts[begin:end])))
        end = begin
    return buckets[::-1] if len(buckets) > 1 else None


class bucketed_attention:
    """Context manager: route the model's SDPA attention through :func:`bucketed_sdpa` for one
    forward pass. Yields the extra forward kwargs (``{}`` when there is nothing to split, or the
    model does not use transformers' SDPA attention)."""

    def __init__(self, model, buckets):
        config = model.config
        self.config = config if buckets and getattr(config, "_attn_implementation", None) == "sdpa" else None
        self.extra = {"r1_row_buckets": buckets} if self.config is not None else {}

    def __enter__(self) -> dict:
        if self.config is not None:
            register()
            self.config._attn_implementation = BUCKETED_SDPA
        return self.extra

    def __exit__(self, *exc) -> None:
        if self.config is not None:
            self.config._attn_implementation = "sdpa"


def bucketed_sdpa(module, query, key, value, attention_mask, *args, r1_row_buckets=None, **kwargs):
    """transformers' SDPA attention for one decode step, run once per row bucket over only that
    bucket's columns (query ``(B, H, 1, D)``, key/value ``(B, H_kv, T, D)``, mask ``(B, 1, 1, T)``;
    returns ``((B, 1, H, D), None)`` like ``sdpa_attention_forward``). Padding columns are masked
    out either way, so the output is the same; a batch padded to one long prompt (MATH-500: 449
    tokens, median 97) stops reading the padding of every shorter row."""
    if not r1_row_buckets or query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, *args, **kwargs)
    out = []
    for begin, end, first in r1_row_buckets:
        mask = attention_mask
        if mask is not None:
            mask = (mask if mask.shape[0] == 1 else mask[begin:end])[..., first:]
        out.append(sdpa_attention_forward(module, query[begin:end], key[begin:end, :, first:],
                                          value[begin:end, :, first:], mask, *args, **kwargs)[0])
    return torch.cat(out), None


_registered = False
_register_lock = threading.Lock()


def register() -> None:
    """Register :func:`bucketed_sdpa` and transformers' SDPA mask under :data:`BUCKETED_SDPA` in
    transformers' global attention and mask interfaces. Idempotent and thread-safe; the engine
    calls it before each decode (a flag check after the first)."""
    global _registered
    if _registered:
        return
    with _register_lock:
        if not _registered:
            AttentionInterface.register(BUCKETED_SDPA, bucketed_sdpa)
            AttentionMaskInterface.register(BUCKETED_SDPA, sdpa_mask)
            _registered = True
