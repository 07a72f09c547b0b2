"""Batched sampling for every stage that generates: GRPO rollouts, rejection sampling, curation's
pass rates, evaluation and budget forcing (the CPU path; vLLM is the GPU path).

Two engines behind one call, :func:`generate` (texts) or :func:`sample_token_ids` (token ids):

- ``"r1"`` (the default): the project's decoding loop over the model's own forward, in the
  subpackage :mod:`r1core.cpu_engine` (imported the first time it is used; see its docstring for
  what it does differently from transformers ``generate``, each change measured). Same weights,
  same forward up to fp32 summation order, so the completions' log-probabilities under the
  training model equal the sampler's (no importance-sampling correction is needed).
- ``"hf"``: transformers ``generate`` (the baseline ``make bench`` compares against).

Both apply TIP, the thought switching penalty, when ``SamplingParams.tip_alpha > 0``
(:mod:`r1core.tip`: the same adjusted logits in both, after the repetition penalty).

Prompts are sorted by length and generated in batches of ``batch_size`` with left padding, so
padding waste is small; results come back in the input order. Each sample carries its token
count and whether it hit ``max_new_tokens`` (truncated).

Importing this module imports neither the engine nor torch, and changes nothing in transformers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

ENGINES = ("r1", "hf")
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. R1's evaluation protocol: ``temperature=0.6, top_p=0.95``.

    Attributes:
        max_new_tokens: cap on completion length, in tokens.
        temperature: sampling temperature (``0`` means greedy).
        top_p: nucleus sampling mass.
        seed: seeds the sampler before each batch (batch ``i`` uses ``seed + i``).
        top_k: keep only the ``top_k`` most likely tokens (``0``: no limit).
        min_p: drop tokens less likely than ``min_p`` times the most likely one (``0``: off).
        repetition_penalty: CTRL's penalty on tokens already in the prompt or completion (``1``: off).
        tip_alpha: TIP's penalty strength, in logit units, subtracted from the thought-switch
            tokens' logits (Wang et al. 2025, arXiv:2501.18585, section 3.1; the paper uses ``3``;
            ``0``: off). See :mod:`r1core.tip`.
        tip_beta: TIP's penalty duration: the penalty is on for the first ``tip_beta`` tokens of
            each thought (a thought starts at the completion's start and at each switch token;
            the paper uses ``600``; ``0``: off).
        tip_words: the switch words whose tokens TIP penalises (:func:`r1core.tip.switch_token_ids`).
        tip_token_ids: the switch token ids themselves (overrides ``tip_words``).

    Raises:
        ValueError: a negative ``tip_alpha`` or ``tip_beta``.
    """

    max_new_tokens: int = 256
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    tip_alpha: float = 0.0
    tip_beta: int = 600
    tip_words: tuple[str, ...] = ("alternatively",)
    tip_token_ids: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.tip_alpha < 0 or self.tip_beta < 0:
            raise ValueError(f"TIP needs tip_alpha >= 0 and tip_beta >= 0 (0 switches it off); got "
                             f"tip_alpha={self.tip_alpha}, tip_beta={self.tip_beta}.")


@dataclass(frozen=True)
class Sample:
    """One completion: ``text`` (special tokens removed), ``num_tokens`` (completion tokens,
    EOS included), ``truncated`` (hit ``max_new_tokens`` without EOS)."""

    text: str
    num_tokens: int
    truncated: bool


@dataclass(frozen=True)
class TokenCompletion:
    """One completion as token ids: ``ids`` (EOS included when it ended on EOS), ``stopped``
    (ended by EOS or a stop string rather than by ``max_new_tokens``)."""

    ids: list[int]
    stopped: bool


def generate(
    model,
    tokenizer,
    prompts: list[str],
    params: SamplingParams,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int, int, float], None] | None = None,
    stop_strings: list[str] | None = None,
    engine: str = "r1",
) -> list[Sample]:
    """Sample one completion per prompt (repeat a prompt ``k`` times for ``k`` samples).

    Args:
        model: a causal LM (eval mode is set here).
        tokenizer: its tokenizer; must have a pad token.
        prompts: rendered prompt texts (see :mod:`r1core.prompts`); special tokens already in.
        params: sampling settings.
        batch_size: sequences decoded together (``"r1"``) or per ``generate`` call (``"hf"``).
        on_batch: called after each batch with ``(done, total, tokens_per_s)`` for progress.
        stop_strings: also stop a sequence when it produces one of these strings (kept in the text;
            such a sequence is not truncated).
        engine: ``"r1"`` (the project's decoding loop) or ``"hf"`` (transformers ``generate``).

    Returns:
        One :class:`Sample` per prompt, in input order.

    Raises:
        ValueError: an unknown ``engine``.
    """
    if engine not in ENGINES:
        raise ValueError(f"Unknown generation engine {engine!r}; use one of {list(ENGINES)}.")
    if not prompts:
        return []
    model.eval()
    eos_ids = _eos_ids(model, tokenizer)
    if engine == "hf":
        completions = _hf_generate(model, tokenizer, prompts, params, eos_ids, batch_size, on_batch, stop_strings)
    else:
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        completions = sample_token_ids(model, prompt_ids, params, eos_ids=eos_ids, pad_id=tokenizer.pad_token_id,
                                       batch_size=batch_size, on_batch=on_batch,
                                       stop_strings=stop_strings, tokenizer=tokenizer)
    out = []
    for c in completions:
        text = tokenizer.decode(c.ids, skip_special_tokens=True)
        out.append(Sample(text=text, num_tokens=len(c.ids),
                          truncated=not c.stopped and len(c.ids) >= params.max_new_tokens))
    return out


def sample_token_ids(
    model,
    prompt_ids: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int, int, float], None] | None = None,
    stop_strings: list[str] | None = None,
    tokenizer=None,
    candidates: int = 256,
    prefill_tokens: int = 1024,
) -> list[TokenCompletion]:
    """The ``"r1"`` engine: one completion per prompt, as token ids, in input order.

    Args:
        model: a causal LM taking a KV cache (any transformers decoder: by ``cache``, or by
            ``past_key_values`` before transformers renamed it); its mode is left as it was, and
            no gradients are recorded.
        prompt_ids: token ids per prompt (no padding); identical prompts are pre-filled once.
        params: sampling settings.
        eos_ids: token ids that end a completion (kept as its last token).
        pad_id: the left-padding id for prompts.
        batch_size: sequences decoded together.
        on_batch: progress ``(done, total, tokens_per_s)`` after each batch.
        stop_strings: end a completion once its text contains one of these (needs ``tokenizer``).
        candidates: logits kept per row for top-p/top-k/min-p before the exact full-sort fallback.
        prefill_tokens: padded tokens per pre-fill forward pass (rows times the pass's longest
            prompt; a longer prompt gets a pass of its own). Each pass is padded only to its own
            longest prompt.

    Returns:
        One :class:`TokenCompletion` per prompt.

    Raises:
        ValueError: ``stop_strings`` without a ``tokenizer``; TIP on (``params.tip_alpha > 0``)
            with neither ``params.tip_token_ids`` nor a ``tokenizer``.
    """
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer to read the completion's text; pass tokenizer=.")
    from r1core import cpu_engine, tip  # the engine, on first use

    completions = cpu_engine.decode(model, prompt_ids, params, eos_ids=eos_ids, pad_id=pad_id, batch_size=batch_size,
                                    on_batch=on_batch, stop_strings=stop_strings or [], tokenizer=tokenizer,
                                    candidates=candidates, prefill_tokens=prefill_tokens,
                                    tip=tip.resolve(params, tokenizer))
    return [TokenCompletion(ids=ids, stopped=stopped) for ids, stopped in completions]


def _hf_generate(model, tokenizer, prompts: list[str], params: SamplingParams, eos_ids: list[int], batch_size: int,
                 on_batch, stop_strings) -> list[TokenCompletion]:
    """transformers ``generate`` in left-padded batches of ``batch_size`` (the ``"hf"`` engine)."""
    import torch
    from transformers import LogitsProcessorList

    from r1core.tip import TipLogitsProcessor, resolve

    tip = resolve(params, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[TokenCompletion | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    for b, start in enumerate(range(0, len(order), batch_size)):
        idx = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        padding_side="left", add_special_tokens=False).to(device)
        torch.manual_seed(params.seed + b)
        kwargs = dict(max_new_tokens=params.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=eos_ids, repetition_penalty=params.repetition_penalty)
        if stop_strings:
            kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
        if tip is not None:  # runs after the repetition penalty, before the warpers (as the "r1" engine)
            kwargs.update(logits_processor=LogitsProcessorList([TipLogitsProcessor(tip, enc["input_ids"].shape[1])]))
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                          min_p=params.min_p or None)
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
            if not stopped and stop_strings:
                stopped = any(s in tokenizer.decode(ids[:n], skip_special_tokens=True) for s in stop_strings)
            out[i] = TokenCompletion(ids=ids[:n], stopped=stopped)
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
