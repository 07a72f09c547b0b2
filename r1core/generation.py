"""Batched sampling with transformers ``generate`` (the CPU path; vLLM is the GPU path).

Prompts are sorted by length and generated in batches of ``batch_size`` with left padding, so
padding waste is small; results come back in the input order. Each sample carries its token
count and whether it hit ``max_new_tokens`` (truncated).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. R1's evaluation protocol: ``temperature=0.6, top_p=0.95``.

    Attributes:
        max_new_tokens: cap on completion length, in tokens.
        temperature: sampling temperature (``0`` means greedy).
        top_p: nucleus sampling mass.
        seed: seeds torch's generator before each batch (batch ``i`` uses ``seed + i``).
    """

    max_new_tokens: int = 256
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0


@dataclass(frozen=True)
class Sample:
    """One completion: ``text`` (special tokens removed), ``num_tokens`` (completion tokens,
    EOS included), ``truncated`` (hit ``max_new_tokens`` without EOS)."""

    text: str
    num_tokens: int
    truncated: bool


def generate(
    model,
    tokenizer,
    prompts: list[str],
    params: SamplingParams,
    *,
    batch_size: int = 16,
    on_batch: Callable[[int, int, float], None] | None = None,
    stop_strings: list[str] | None = None,
) -> list[Sample]:
    """Sample one completion per prompt (repeat a prompt ``k`` times for ``k`` samples).

    Args:
        model: a causal LM (eval mode is set here).
        tokenizer: its tokenizer; must have a pad token.
        prompts: rendered prompt texts (see :mod:`r1core.prompts`); special tokens already in.
        params: sampling settings.
        batch_size: prompts per ``generate`` call.
        on_batch: called after each batch with ``(done, total, tokens_per_s)`` for progress.
        stop_strings: also stop a sequence when it produces one of these strings (kept in the text;
            such a sequence is not truncated).

    Returns:
        One :class:`Sample` per prompt, in input order.
    """
    if not prompts:
        return []
    model.eval()
    eos_ids = _eos_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[Sample | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    for b, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        padding_side="left", add_special_tokens=False).to(device)
        torch.manual_seed(params.seed + b)
        kwargs = dict(max_new_tokens=params.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=eos_ids)
        if stop_strings:
            kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            seqs = model.generate(**enc, **kwargs)  # (B, P + T)
        completion_ids = seqs[:, enc["input_ids"].shape[1] :]  # (B, T)
        new_tokens = 0
        for row, i in enumerate(idx):
            ids = completion_ids[row].tolist()
            n, stopped = len(ids), False
            for pos, tok in enumerate(ids):
                if tok in eos_ids:
                    n, stopped = pos + 1, True
                    break
            new_tokens += n
            text = tokenizer.decode(ids[:n], skip_special_tokens=True)
            if not stopped and stop_strings and any(s in text for s in stop_strings):
                stopped = True
            out[i] = Sample(text=text, num_tokens=n, truncated=not stopped and n >= params.max_new_tokens)
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)), len(order), new_tokens / max(time.perf_counter() - t0, 1e-9))
    return out  # type: ignore[return-value]


def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    cfg = getattr(model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None)
    for value in (eos if isinstance(eos, list) else [eos]):
        if value is not None:
            ids.add(int(value))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)
