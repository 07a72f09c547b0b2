"""Batched sampling for every stage that generates: GRPO rollouts, rejection sampling, curation's
pass rates, evaluation and budget forcing (the CPU path; vLLM is the GPU path).

Two engines behind one call, :func:`generate` (texts) or :func:`sample_token_ids` (token ids):

- ``"r1"`` (the default): the project's decoding loop over the model's own forward. Against
  transformers ``generate`` it (1) samples top-p/top-k/min-p from the top-``candidates`` logits
  instead of sorting the whole vocabulary every step (a full sort of ``(64, 49152)`` logits costs
  as much as half a SmolLM2 decode step on 2 cores; rows whose candidates hold less than ``top_p``
  of the mass fall back to the full sort, so the distribution is exactly HF's; on CPU the
  candidates come from the vocabulary tiles with the largest maxima, :func:`_top_logits`),
  (2) pre-fills each distinct prompt once and copies its KV cache to its ``k`` samples (GRPO
  groups, pass@k), and (3) drops finished sequences from the batch (their KV cache compacted in
  place), so the batch only computes live rows, (4) on CPU runs every linear layer through
  oneDNN on weights packed once per call (:class:`_packed_linears`), (5) splits decode attention
  into row buckets that each read only their own cache columns, not the padding up to the batch's
  longest prompt (:func:`_bucketed_sdpa`), and (6) pre-fills in passes of a token budget, the
  prompts' shared prefix (a system prompt) once, (7) draws each token by inverse CDF over
  vocabulary tiles (:func:`_categorical`) instead of ``torch.multinomial``'s exponential variate
  per vocabulary entry, and (8) on CPU decodes Llama-family models (Llama, Mistral, Qwen2/3) with
  :class:`r1core.cpu_decode.CpuDecoder`: the model's own modules and packed weights, with one C++
  kernel per layer for rotary + cache write + attention over each row's own columns (no masks,
  no transformers per-layer machinery); other models keep (5). Same weights, same forward up to
  fp32 summation order, so the completions' log-probabilities under the training model equal the
  sampler's (no importance-sampling correction is needed).
- ``"hf"``: transformers ``generate`` (the baseline ``make bench`` compares against).

Prompts are sorted by length and generated in batches of ``batch_size`` with left padding, so
padding waste is small; results come back in the input order. Each sample carries its token
count and whether it hit ``max_new_tokens`` (truncated).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from r1core.cpu_decode import CpuDecoder

logger = logging.getLogger(__name__)

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
    """

    max_new_tokens: int = 256
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0


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
        model: a causal LM taking ``past_key_values`` (any transformers decoder); its mode is
            left as it was, and no gradients are recorded.
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
        ValueError: ``stop_strings`` without a ``tokenizer``.
    """
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer to read the completion's text; pass tokenizer=.")
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list[TokenCompletion | None] = [None] * len(prompt_ids)
    device = next(model.parameters()).device
    with _packed_linears(model):
        for b, start in enumerate(range(0, len(order), batch_size)):
            idx = order[start : start + batch_size]
            t0 = time.perf_counter()
            results = _decode_batch(model, [list(prompt_ids[i]) for i in idx], params, torch.Generator(device).manual_seed(
                params.seed + b), set(int(e) for e in eos_ids), pad_id, stop_strings or [], tokenizer, candidates,
                prefill_tokens)
            for i, r in zip(idx, results, strict=True):
                out[i] = r
            if on_batch is not None:
                tokens = sum(len(r.ids) for r in results)
                on_batch(min(start + batch_size, len(order)), len(order), tokens / max(time.perf_counter() - t0, 1e-9))
    return out  # type: ignore[return-value]


@torch.no_grad()
def _decode_batch(model, prompts: list[list[int]], params: SamplingParams, gen: torch.Generator, eos: set[int],
                  pad_id: int, stop_strings: list[str], tokenizer, candidates: int,
                  prefill_tokens: int) -> list[TokenCompletion]:
    device = next(model.parameters()).device
    unique: dict[tuple[int, ...], int] = {}
    rows = torch.tensor([unique.setdefault(tuple(p), len(unique)) for p in prompts], device=device)  # (B,)
    firsts = [list(p) for p in unique]
    cache, logits, mask, position = _prefill(model, firsts, pad_id, max(map(len, firsts)) + params.max_new_tokens,
                                             prefill_tokens)
    if len(firsts) < len(prompts):  # copy each distinct prompt's cache to its samples
        _select_rows(cache, rows)
    logits, mask, position = logits[rows], mask[rows], position[rows]  # (B, V), (B, P), (B,)
    history = None
    if params.repetition_penalty != 1.0:  # (B, P + t): prompt (left padded) + completion so far
        width = mask.shape[1]
        history = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)

    # Attention in row buckets, each over its own columns (full-attention caches only: sliding
    # windows keep their own layout), with a 4D additive mask kept across steps (SDPA would convert
    # a boolean mask in every layer and bucket).
    full_attention = all(isinstance(layer, _PreallocatedLayer) for layer in cache.layers)
    starts = (mask.shape[1] - mask.sum(-1)).tolist()  # each row's first cache column (left padding)
    # On CPU, Llama-family models decode through CpuDecoder (its own attention kernel, no masks).
    decoder = CpuDecoder.for_model(model) if full_attention and device.type == "cpu" else None
    buckets = _row_buckets(starts, device) if full_attention and decoder is None else None
    additive = None  # (B, 1, 1, P + T): 0, or the dtype's minimum on padding; only where buckets are used
    if buckets is not None:  # (rows leaving cannot make equal starts unequal: no buckets now, none later)
        additive = torch.zeros((len(prompts), 1, 1, mask.shape[1] + params.max_new_tokens), dtype=model.dtype,
                               device=device)
        additive[:, 0, 0, : mask.shape[1]].masked_fill_(mask == 0, torch.finfo(model.dtype).min)
    scratch = torch.empty_like(logits)  # (B, V): the sampler's normaliser, reused every step
    first_columns = torch.tensor(starts, dtype=torch.long) if decoder is not None else None  # (b,) for the decoder
    live = list(range(len(prompts)))  # batch row -> prompt index
    generated: list[list[int]] = [[] for _ in prompts]
    stopped = [False] * len(prompts)
    finished = [False] * len(prompts)  # per batch row
    stop_window = max((len(s) for s in stop_strings), default=0) + 2  # tokens: every token is >= 1 character
    for step in range(params.max_new_tokens):
        tokens = _next_tokens(logits, params, gen, history, candidates, scratch)  # (b,)
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
            _select_rows(cache, keep)
            live = [live[r] for r in keep.tolist()]
            tokens, mask, position = tokens[keep], mask[keep], position[keep]
            finished = [False] * len(live)
            history = history[keep] if history is not None else None
            starts = [starts[r] for r in keep.tolist()]
            additive = additive[keep] if additive is not None else None
            buckets = _row_buckets(starts, device) if additive is not None else None
            first_columns = first_columns[keep] if first_columns is not None else None
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        position = position + 1
        step_ids = tokens.to(device)[:, None]  # (b, 1)
        if history is not None:
            history = torch.cat([history, step_ids], dim=1)
        if decoder is not None:
            logits = decoder.step(step_ids[:, 0], position, cache.layers, first_columns)  # (b, V)
        else:
            with _bucketed_attention(model, buckets) as extra:
                step_mask = additive[..., : mask.shape[1]] if extra else mask
                logits = model(input_ids=step_ids, attention_mask=step_mask, position_ids=position[:, None],
                               past_key_values=cache, use_cache=True, **extra).logits[:, -1, :].float()  # (b, V)
    return [TokenCompletion(ids=g, stopped=s) for g, s in zip(generated, stopped, strict=True)]


# ------------------------------------------------------------------ oneDNN matmuls with packed weights
class _packed_linears:
    """Context manager: on CPU, every fp32 ``nn.Linear`` of ``model`` runs through oneDNN with its
    weight reordered once into oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``
    and ``_linear_pointwise``, the ops torch.compile's CPU backend packs linears with), instead of
    MKL ``sgemm`` on the plain weight. On this 2-core AVX2 machine, at SmolLM2-135M's decode
    shapes: 117-130 GFLOP/s against 66-107 at 64 rows (the LM head: 125 against 66), 56-78 against
    21-46 at 8 rows; the same at pre-fill's ~1,000 rows. The outputs differ from ``F.linear`` by
    fp32 rounding only (another summation order).

    The packed copies (as large as the weights) live only inside the block, so the weights must
    not change inside it (the trainer updates them between generations, never during one). Modules
    with their own ``forward`` already set (hooks, adapters' wrappers), other dtypes, other devices
    and builds without oneDNN keep ``F.linear``.
    """

    def __init__(self, model):
        self.model, self.patched = model, []

    def __enter__(self):
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return self
        for module in self.model.modules():
            weight = getattr(module, "weight", None)
            if (type(module) is not torch.nn.Linear or "forward" in module.__dict__ or weight.device.type != "cpu"
                    or weight.dtype != torch.float32 or weight.dim() != 2 or not weight.numel()):
                continue
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
            bias = None if module.bias is None else module.bias.detach()
            module.forward = functools.partial(_packed_linear, packed, bias, weight)
            self.patched.append(module)
        return self

    def __exit__(self, *exc) -> None:
        for module in self.patched:
            del module.forward
        self.patched.clear()


def _packed_linear(packed: torch.Tensor, bias: torch.Tensor | None, weight: torch.Tensor, x: torch.Tensor
                   ) -> torch.Tensor:
    """``F.linear(x, W, b)`` on the oneDNN-packed ``W``: ``x (..., in)`` -> ``(..., out)`` (no autograd).
    Under CPU autocast (a trainer's ``bf16`` mixed precision) or for a non-fp32 input, plain
    ``F.linear`` on ``weight``, so autocast casts as it would in the model's own forward."""
    if x.dtype is not torch.float32 or torch.is_autocast_enabled("cpu"):
        return torch.nn.functional.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


# ------------------------------------------------------------------ attention over each row's own columns
_BUCKETED_SDPA = "r1_bucketed_sdpa"
_BUCKET_OVERHEAD = 256  # one more SDPA call costs about as much as reading 256 rows x columns of K/V (CPU)


def _row_buckets(starts: list[int], device: torch.device) -> list[tuple[int, int, int]] | None:
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


class _bucketed_attention:
    """Context manager: route the model's SDPA attention through :func:`_bucketed_sdpa` for one
    forward pass. Yields the extra forward kwargs (``{}`` when there is nothing to split, or the
    model does not use transformers' SDPA attention)."""

    def __init__(self, model, buckets):
        config = model.config
        self.config = config if buckets and getattr(config, "_attn_implementation", None) == "sdpa" else None
        self.extra = {"r1_row_buckets": buckets} if self.config is not None else {}

    def __enter__(self) -> dict:
        if self.config is not None:
            self.config._attn_implementation = _BUCKETED_SDPA
        return self.extra

    def __exit__(self, *exc) -> None:
        if self.config is not None:
            self.config._attn_implementation = "sdpa"


def _bucketed_sdpa(module, query, key, value, attention_mask, *args, r1_row_buckets=None, **kwargs):
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


AttentionInterface.register(_BUCKETED_SDPA, _bucketed_sdpa)
AttentionMaskInterface.register(_BUCKETED_SDPA, sdpa_mask)


def _new_cache(model):
    """A transformers ``DynamicCache`` whose full-attention layers are :class:`_PreallocatedLayer`."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    cache.layers = [_PreallocatedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _prefill(model, prompts: list[list[int]], pad_id: int, capacity: int, chunk_tokens: int,
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
    width = max(len(p) for p in prompts)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)  # (U, P), left padded
    for r, p in enumerate(prompts):
        mask[r, width - len(p):] = 1
    cache, logits = _new_cache(model), []
    chunked = all(isinstance(layer, _PreallocatedLayer) for layer in cache.layers)
    shared = _shared_prefix(prompts) if chunked and len(prompts) > 1 else 0  # < every prompt's length
    shared, prefix = (shared, _new_cache(model)) if shared >= min_shared else (0, None)
    if prefix is not None:
        model(input_ids=torch.tensor([prompts[0][:shared]], device=device), past_key_values=prefix, use_cache=True,
              position_ids=torch.arange(shared, device=device)[None], logits_to_keep=1)
    rests = [p[shared:] for p in prompts]
    bounds = _prefill_chunks([len(p) for p in rests], chunk_tokens) if chunked else [(0, len(prompts))]
    for start, end in bounds:  # other layer kinds (sliding windows): one pass
        part = rests[start:end]
        w = max(len(p) for p in part)
        ids = torch.full((len(part), w), pad_id, dtype=torch.long, device=device)
        part_mask = torch.zeros((len(part), w), dtype=torch.long, device=device)  # (n, w): each rest, left padded
        for r, p in enumerate(part):
            ids[r, w - len(p):] = torch.tensor(p, dtype=torch.long)
            part_mask[r, w - len(p):] = 1
        part_cache = _new_cache(model) if chunked else cache
        if prefix is not None:  # the chunk's cache starts with the shared prefix: [prefix][pad][rest]
            part_mask = torch.cat([part_mask.new_ones((len(part), shared)), part_mask], dim=1)
            for layer, pre in zip(part_cache.layers, prefix.layers, strict=True):
                layer.place(pre, rows=(0, len(part)), total_rows=len(part), width=shared, capacity=shared + w)
        positions = (part_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        logits.append(model(input_ids=ids, attention_mask=part_mask, position_ids=positions,
                            past_key_values=part_cache, use_cache=True, logits_to_keep=1).logits[:, -1, :])
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


class _PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` writing into buffers allocated once (``(B, H, capacity, D)``) instead of
    concatenating a new copy of the whole cache every step (that copy was 45% of a SmolLM2 decode
    step at batch 64 and 300 tokens of context). ``keys``/``values`` are views of the filled part of
    the first ``_rows`` rows; rows that leave are compacted in place (:meth:`batch_select_indices`)."""

    def _allocate(self, like: torch.Tensor, rows: int, capacity: int) -> None:
        self.dtype, self.device, self.is_initialized = like.dtype, like.device, True
        self._keys = like.new_zeros((rows, like.shape[1], capacity, like.shape[3]))
        self._values = like.new_zeros((rows, like.shape[1], capacity, like.shape[3]))
        self._length, self._rows = 0, rows

    def _set_views(self) -> None:
        self.keys = self._keys[: self._rows, :, : self._length]
        self.values = self._values[: self._rows, :, : self._length]

    def place(self, part, *, rows: tuple[int, int], total_rows: int, width: int, capacity: int) -> None:
        """Copy a pre-filled chunk's cache into rows ``rows``, right-aligned at ``width`` tokens."""
        if not self.is_initialized:
            self._allocate(part.keys, total_rows, max(capacity, width))
        n = part.keys.shape[2]
        self._keys[rows[0] : rows[1], :, width - n : width] = part.keys
        self._values[rows[0] : rows[1], :, width - n : width] = part.values
        self._length = width
        self._set_views()

    def place_row(self, part, *, row: int, source_row: int, columns: tuple[int, int]) -> None:
        """Copy the first ``columns[1] - columns[0]`` cache columns of ``part``'s row ``source_row``
        into this cache's row ``row`` at ``columns`` (a shared prefix next to the row's rest)."""
        n = columns[1] - columns[0]
        self._keys[row, :, columns[0] : columns[1]] = part.keys[source_row, :, :n]
        self._values[row, :, columns[0] : columns[1]] = part.values[source_row, :, :n]

    def reserve(self, columns: int) -> int:
        """Make room for ``columns`` more columns (growing the buffers by doubling past their
        capacity); returns the first of them."""
        end = self._length + columns
        if end > self._keys.shape[2]:
            grow = max(end, 2 * self._keys.shape[2]) - self._keys.shape[2]
            self._keys = torch.cat([self._keys, self._keys.new_zeros((*self._keys.shape[:2], grow, self._keys.shape[3]))], 2)
            self._values = torch.cat([self._values, self._values.new_zeros((*self._values.shape[:2], grow, self._values.shape[3]))], 2)
        return self._length

    def advance(self, columns: int) -> None:
        """Mark ``columns`` more columns filled (written into the buffers directly, as by
        :class:`r1core.cpu_decode.CpuDecoder`)."""
        self._length += columns
        self._set_views()  # (B, H, T, D) views

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self._allocate(key_states, key_states.shape[0], key_states.shape[2])
        start = self.reserve(key_states.shape[2])
        self._keys[: self._rows, :, start : start + key_states.shape[2]] = key_states
        self._values[: self._rows, :, start : start + key_states.shape[2]] = value_states
        self.advance(key_states.shape[2])
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (or repeat) rows ``indices``. Rows leaving (``indices`` strictly increasing) are
        compacted in place, filled columns only: a new buffer costs a copy of the whole capacity
        plus its page faults (1.2 s a drop at 56 rows x 705 columns x 30 layers)."""
        if not self.is_initialized:
            return
        keep = indices.tolist()
        if all(b > a for a, b in zip(keep, keep[1:])) and (not keep or keep[-1] < self._rows):
            for dst, src, n in _row_moves(keep):
                for buf in (self._keys, self._values):
                    buf[dst : dst + n, :, : self._length] = buf[src : src + n, :, : self._length]
        else:
            self._keys, self._values = self._keys[indices], self._values[indices]
        self._rows = len(keep)
        self._set_views()


def _row_moves(keep: list[int]) -> list[tuple[int, int, int]]:
    """In-place moves ``(destination row, source row, rows)`` that bring rows ``keep`` (strictly
    increasing) to rows ``0 .. len(keep) - 1``, in an order where no move overwrites a row that a
    later move reads, and no move's source overlaps its own destination."""
    moves: list[tuple[int, int, int]] = []
    dst = 0
    while dst < len(keep):
        shift, n = keep[dst] - dst, 1
        while dst + n < len(keep) and keep[dst + n] - (dst + n) == shift:
            n += 1
        if shift:  # a run with one shift; overlapping runs go in pieces of `shift` rows
            moves += [(d, d + shift, min(shift, dst + n - d)) for d in range(dst, dst + n, shift)]
        dst += n
    return moves


def _select_rows(cache, rows: torch.Tensor) -> None:
    """Keep (or repeat) batch rows ``rows`` of every layer of a transformers cache."""
    for layer in cache.layers:
        layer.batch_select_indices(rows)


def _next_tokens(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator,
                 history: torch.Tensor | None, candidates: int, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Sample one token per row of ``logits`` ``(b, V)`` with HF's warper semantics, in HF's order
    (repetition penalty, temperature, top-k, top-p, min-p). Returns ``(b,)`` token ids.

    ``scratch``: an optional ``(>= b, V)`` buffer of the logits' dtype, reused across steps for the
    softmax normaliser (a fresh ``(64, 49152)`` temporary costs page faults every step).
    """
    if history is not None:  # CTRL (arXiv:1909.05858): divide positive logits, multiply negative ones
        seen = logits.gather(1, history)
        logits = logits.scatter(1, history, torch.where(seen > 0, seen / params.repetition_penalty,
                                                        seen * params.repetition_penalty))
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    vocab = logits.shape[-1]
    if params.top_k <= 0 and params.top_p >= 1.0 and params.min_p <= 0:
        return _categorical(_scaled_exp(logits, logits.amax(-1, keepdim=True), params.temperature, scratch), gen)
    # Candidates are taken on the raw logits: dividing by a temperature > 0 keeps their order.
    if params.top_k > 0:  # HF renormalises over exactly the top-k before top-p
        k = min(params.top_k, vocab)
        raw, index = logits.topk(k, dim=-1)  # (b, k), sorted descending
        values = raw / params.temperature
        probs = torch.softmax(values, dim=-1)
        full = torch.zeros(len(values), dtype=torch.bool, device=values.device)
    else:
        k = min(candidates, vocab)
        raw, index, trusted = _top_logits(logits, k)  # trusted: (b,) leading candidates known to be the top
        log_norm = _scaled_logsumexp(logits, raw[:, :1], params.temperature, scratch)  # (b, 1)
        values = raw / params.temperature
        probs = torch.exp(values - log_norm)  # (b, k) under the full distribution
        # Could a token past the trusted candidates survive the filters? Then look further.
        full = _may_extend(probs, trusted, vocab, params)
        retry = full & (trusted < k)
        if bool(retry.any()):  # the tiles' bound cut these rows' candidates short: take their exact top-k
            rows = retry.nonzero(as_tuple=True)[0]
            raw_rows, index[rows] = logits[rows].topk(k, dim=-1)
            values[rows] = raw_rows / params.temperature
            probs[rows] = torch.exp(values[rows] - log_norm[rows])
            trusted[rows] = k
            full = _may_extend(probs, trusted, vocab, params)  # still short: sort everything
    choice = _truncated_choice(values, index, probs, params, gen)
    if bool(full.any()):
        rows = full.nonzero(as_tuple=True)[0]
        all_values, all_index = (logits[rows] / params.temperature).sort(dim=-1, descending=True)
        choice[rows] = _truncated_choice(all_values, all_index, torch.softmax(all_values, dim=-1), params, gen)
    return choice


def _top_logits(logits: torch.Tensor, k: int, tile: int = 64, tiles: int = 32
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` largest logits per row, sorted descending: ``(values (b, k), index (b, k), trusted (b,))``.

    On CPU, with a vocabulary of more than ``2 * tiles`` tiles of ``tile`` tokens, the candidates come
    from the ``tiles`` tiles with the largest maxima (``tiles * tile`` logits a row instead of ``V``;
    for ``(64, 49152)`` logits: 2.6 ms instead of 6-8 ms for ``topk``). Every logit outside those
    tiles is at most the next tile's maximum, so the candidates above it are the row's true top:
    ``trusted`` counts them. Elsewhere, a plain ``topk`` (``trusted == k``).
    """
    b, vocab = logits.shape
    if logits.device.type != "cpu" or vocab % tile or vocab // tile <= 2 * tiles or k > tiles * tile:
        values, index = logits.topk(k, dim=-1)
        return values, index, torch.full((b,), k, dtype=torch.long, device=logits.device)
    blocks = logits.reshape(b, vocab // tile, tile)
    tile_max, tile_index = blocks.amax(-1).topk(tiles + 1, dim=-1)  # (b, tiles + 1), descending
    kept = blocks.gather(1, tile_index[:, :tiles, None].expand(-1, -1, tile)).reshape(b, tiles * tile)
    values, position = kept.topk(k, dim=-1)
    index = tile_index.gather(1, torch.div(position, tile, rounding_mode="floor")) * tile + position % tile
    return values, index, (values > tile_max[:, tiles:]).sum(-1)


def _scaled_exp(logits: torch.Tensor, row_max: torch.Tensor, temperature: float,
                scratch: torch.Tensor | None) -> torch.Tensor:
    """``exp((logits - row_max) / temperature)`` ``(b, V)`` (unnormalised probabilities), written into
    ``scratch`` when one is given (a fresh ``(b, V)`` temporary costs page faults every step)."""
    work = torch.sub(logits, row_max, out=scratch[: len(logits)]) if scratch is not None else logits - row_max
    return work.mul_(1.0 / temperature).exp_()


def _scaled_logsumexp(logits: torch.Tensor, row_max: torch.Tensor, temperature: float,
                      scratch: torch.Tensor | None) -> torch.Tensor:
    """``logsumexp(logits / temperature)`` per row, ``(b, 1)``, given each row's maximum ``(b, 1)``;
    the ``(b, V)`` temporary lives in ``scratch`` when one is given."""
    return row_max / temperature + _scaled_exp(logits, row_max, temperature, scratch).sum(-1, keepdim=True).log()


def _categorical(weights: torch.Tensor, gen: torch.Generator, tile: int = 64) -> torch.Tensor:
    """One draw per row from the distribution proportional to ``weights`` ``(b, n)`` (non-negative,
    each row with a positive total): ``(b,)`` indices; a zero weight is never drawn.

    Inverse-CDF sampling in float64 on uniforms from ``gen``. For a large ``n`` (a vocabulary), a
    ``tile`` of ``tile`` entries is drawn by its mass, then an entry within it by a second uniform:
    two small cumulative sums instead of one over ``n``. ``torch.multinomial`` draws an exponential
    variate per entry instead: 12.6 ms for ``(8, 49152)`` on this 2-core CPU (0.9 ms here), ~11% of
    a GRPO rollout's decode step.
    """
    b, n = weights.shape
    uniform = torch.rand((b, 2), generator=gen, dtype=torch.float64, device=weights.device)
    if n <= 16 * tile or n % tile:
        return _inverse_cdf(weights.cumsum(-1, dtype=torch.float64), uniform[:, :1]).squeeze(1)
    blocks = weights.view(b, n // tile, tile)
    chosen = _inverse_cdf(blocks.sum(-1, dtype=torch.float64).cumsum(-1), uniform[:, :1])  # (b, 1)
    inside = blocks.gather(1, chosen[:, :, None].expand(-1, -1, tile)).squeeze(1)  # (b, tile)
    return (chosen * tile + _inverse_cdf(inside.cumsum(-1, dtype=torch.float64), uniform[:, 1:])).squeeze(1)


def _inverse_cdf(cdf: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """``(b, 1)``: per row, the first index whose cumulative weight ``cdf`` ``(b, n)`` exceeds
    ``uniform (b, 1) * total``; never past the last positive weight (rounding at the top end)."""
    index = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)
    return torch.minimum(index, (cdf < cdf[:, -1:]).sum(-1, keepdim=True))


def _may_extend(probs: torch.Tensor, trusted: torch.Tensor, vocab: int, params: SamplingParams) -> torch.Tensor:
    """Rows ``(b,)`` whose top-p / min-p set might reach past their first ``trusted`` candidates
    (``probs`` ``(b, k)``: the candidates' probabilities under the full distribution)."""
    more = trusted < vocab
    if params.top_p < 1.0:
        first = torch.arange(probs.shape[1], device=probs.device) < trusted[:, None]
        more &= (probs * first).sum(-1) < params.top_p
    if params.min_p > 0:  # the last trusted candidate passes min-p: the next token might too
        last = probs.gather(1, (trusted.clamp(min=1) - 1)[:, None]).squeeze(1)
        more &= last >= params.min_p * probs[:, 0]
    return more


def _truncated_choice(values: torch.Tensor, index: torch.Tensor, probs: torch.Tensor, params: SamplingParams,
                      gen: torch.Generator) -> torch.Tensor:
    """Sample among sorted candidates ``(b, k)`` after top-p and min-p; ``probs`` are their
    probabilities under the full (or top-k) distribution. Returns ``(b,)`` token ids."""
    keep = torch.ones_like(values, dtype=torch.bool)
    if params.top_p < 1.0:  # HF keeps a token while the mass strictly before it is below top_p
        keep &= (probs.cumsum(-1) - probs) < params.top_p
    if params.min_p > 0:
        keep &= probs >= params.min_p * probs[:, :1]
    keep[:, 0] = True
    return index.gather(1, _categorical(probs * keep, gen)[:, None]).squeeze(1)


def _hf_generate(model, tokenizer, prompts: list[str], params: SamplingParams, eos_ids: list[int], batch_size: int,
                 on_batch, stop_strings) -> list[TokenCompletion]:
    """transformers ``generate`` in left-padded batches of ``batch_size`` (the ``"hf"`` engine)."""
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
