"""A CPU LM head for the GRPO loss (change 5 of :class:`r1core.grpo.R1GRPOTrainer`).

TRL's fused log-probability head folds vocabulary tiles with torch ops and scores every position
(prompt included) wherever Triton is missing. :func:`install_cpu_logprob_head` puts a head over it
that scores only the completion positions, one ``(chunk, V)`` matmul + ``log_softmax`` per chunk
of tokens, recomputed in the backward pass (activation checkpointing), so memory stays
``(chunk, V)`` floats; each group's prompt runs through the backbone once
(:func:`_shared_prefix_hidden`). Same log-probabilities, entropies and gradients as TRL's head
(``tests/test_grpo.py``).

This is the one part of the project that relies on TRL and transformers internals, all pinned in
``pyproject.toml`` (``trl>=1.16,<1.17``, ``transformers>=5,<6``); a version bump must re-run the
tests above. The private APIs:

- ``trl.trainer.utils.add_fused_lm_head``: the model's ``forward`` replaced by a bound method whose
  function is named ``_fused_forward``, called with ``fused_lm_head=``, ``labels=``,
  ``shift_labels=``, ``num_items_in_batch=`` (the name is how the TRL head is recognised).
- ``trl.trainer.utils.FusedCausalLMOutput``: the output TRL's loss reads (``loss``, ``log_probs``,
  ``entropy``, ``label_mask``; log-probabilities ``(B, T - 1)``, zero where the label is ``-100``).
- ``trl.kernels.chunked_logprob._use_triton``: whether TRL's Triton kernel runs on a device (then
  TRL's head is kept).
- ``transformers.cache_utils.DynamicCache(config=..., ddp_cache_data=...)`` and ``DynamicLayer``
  (``.keys``, ``.values``): the KV cache of each shared prompt, copied to its group's rows.
"""

from __future__ import annotations


def install_cpu_logprob_head(model, temperature: float, chunk_tokens: int = 1024) -> bool:
    """Replace TRL's fused LM head on ``model`` (see :func:`trl.trainer.utils.add_fused_lm_head`)
    with :func:`_completion_logprobs` when the model runs without Triton (CPU). Models whose
    head scales or soft-caps logits, MoE router losses and pre-shifted labels keep TRL's head.

    Returns:
        Whether the head was installed.
    """
    import types

    from trl.kernels.chunked_logprob import _use_triton

    cfg = model.config.get_text_config()
    scaled = [a for a in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                          "logits_scaling") if getattr(cfg, a, None) not in (None, 1.0)]
    trl_forward = model.forward
    code = getattr(getattr(trl_forward, "__func__", None), "__code__", None)
    if scaled or getattr(cfg, "output_router_logits", False) or getattr(code, "co_name", "") != "_fused_forward":
        return False

    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        head = self.get_output_embeddings()
        if not fused_lm_head or shift_labels is not None or _use_triton(head.weight.device):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        return _completion_logprobs(self, head, args, kwargs, labels, num_items_in_batch, temperature, chunk_tokens)

    model.forward = types.MethodType(forward, model)
    return True


def _completion_logprobs(model, head, args, kwargs, labels, num_items_in_batch, temperature: float,
                         chunk_tokens: int):
    """TRL's ``FusedCausalLMOutput`` (``log_probs``, ``entropy``: ``(B, T - 1)``, zero where the
    next-token label is ``-100``) from the backbone's hidden states at the scored positions only."""
    import torch
    from torch.utils.checkpoint import checkpoint
    from trl.trainer.utils import FusedCausalLMOutput

    kwargs["use_cache"] = False
    hidden, first = _shared_prefix_hidden(model.base_model, args, kwargs, labels)
    if hidden is None:
        hidden, first = model.base_model(*args, **kwargs).last_hidden_state[:, :-1], 0  # (B, T - 1, H)
    labels = labels[:, 1:].to(hidden.device)
    mask = labels != -100  # (B, T - 1)
    h, targets = hidden[mask[:, first:]], labels[mask]  # (N, H), (N,)
    parts = [checkpoint(_logprob_entropy, h[i : i + chunk_tokens], head.weight, head.bias, targets[i : i + chunk_tokens],
                        temperature, use_reentrant=False) for i in range(0, len(targets), chunk_tokens)]
    if parts:
        values = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    else:  # nothing scored: a zero still connected to the graph, as TRL's head returns
        values = (h.sum(-1), h.sum(-1))
    log_probs, entropy = (hidden.new_zeros(mask.shape, dtype=v.dtype).masked_scatter(mask, v) for v in values)
    loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
    return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy, label_mask=mask)


def _shared_prefix_hidden(backbone, args, kwargs, labels, max_padding: float = 0.25):
    """The backbone's hidden states for the scored positions, each group's shared prompt run once
    and each completion only as far as it is scored.

    In GRPO a batch holds ``num_generations`` completions of each prompt, and the prompt columns
    are never scored. Rows whose unscored leading columns (ids and mask) are equal are run
    through the backbone once; their KV cache is copied to each row (gradients from every row sum
    back through the copy). The completions then run against it, sorted by length in batches
    padded to at most ``1 + max_padding`` times their real tokens, so the padding after a short
    completion is not computed. Under causal attention this is the same computation as the full
    batch (same positions, same masks), with the prompt's forward and backward done once per group
    instead of once per completion.

    Args:
        backbone: the model's base model (``model.base_model``).
        args, kwargs: the inputs TRL passes to the model (``input_ids``, ``attention_mask``).
        labels: ``(B, T)``, ``-100`` where a position is not scored.

    Returns:
        ``(hidden, first)``: ``hidden`` ``(B, T - 1 - first, H)`` are the hidden states at
        positions ``first .. T - 2`` (each predicts the next token; zeros after a row's last
        scored label), ``first`` is the last prompt position. ``(None, 0)`` when sharing does
        not apply: no repeated prompts, inputs other than ids and mask, gradient checkpointing
        (it drops the cache), or cache layers other than full attention (sliding windows,
        linear attention).
    """
    import torch
    from transformers.cache_utils import DynamicCache, DynamicLayer

    input_ids, attention_mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    if args or input_ids is None or set(kwargs) - {"input_ids", "attention_mask", "use_cache"}:
        return None, 0
    if getattr(backbone, "is_activation_checkpointing", False):  # checkpointed layers drop the cache
        return None, 0
    scored = labels != -100  # (B, T)
    columns = scored.any(0).nonzero()
    start = int(columns[0]) if len(columns) else 0  # prompt columns: [0, start)
    if start == 0:
        return None, 0
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    prompts, rows = torch.unique(torch.cat([input_ids[:, :start], attention_mask[:, :start].to(input_ids.dtype)], 1),
                                 dim=0, return_inverse=True)  # (U, 2 * start), (B,)
    cache = DynamicCache(config=backbone.config)
    if len(prompts) == len(input_ids) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None, 0
    from r1core.cpu_engine.cache import cache_keyword

    kv = cache_keyword(backbone)  # transformers' name for the cache argument (``cache`` from 5.x's rename)
    prompt_out = backbone(input_ids=prompts[:, :start], attention_mask=prompts[:, start:].to(attention_mask.dtype),
                          use_cache=True, **{kv: cache})
    prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]  # each (U, heads, start, d)
    # a row's hidden states are needed up to the column before its last scored label
    ends = torch.where(scored.any(1), scored.shape[1] - scored.flip(1).int().argmax(1) - 1, start).tolist()
    width = input_ids.shape[1] - start  # hidden states kept per row: positions start - 1 .. T - 2
    order = sorted(range(len(ends)), key=lambda i: -ends[i])
    pieces, done = [], 0
    while done < len(order):
        longest = ends[order[done]] - start
        batch = [i for i in order[done:] if (ends[i] - start) * (1 + max_padding) >= longest] if longest \
            else order[done:]
        done += len(batch)
        index = torch.tensor(batch, device=input_ids.device)
        parts = [prompt_out.last_hidden_state[rows[index], -1:]]  # (b, 1, H): predicts the first completion token
        if longest:
            batch_cache = DynamicCache(ddp_cache_data=[(k[rows[index]], v[rows[index]]) for k, v in prompt_kv],
                                       config=backbone.config)  # backward sums the copies into the prompt's KV
            parts.append(backbone(input_ids=input_ids[index, start:start + longest],
                                  attention_mask=attention_mask[index, :start + longest],
                                  use_cache=True, **{kv: batch_cache}).last_hidden_state)
        pieces.append(torch.nn.functional.pad(torch.cat(parts, 1), (0, 0, 0, width - 1 - longest)))  # (b, width, H)
    return torch.cat(pieces)[torch.tensor(order, device=input_ids.device).argsort()], start - 1


def _logprob_entropy(h, weight, bias, targets, temperature: float):
    """Log-probability of ``targets`` ``(n,)`` and entropy ``(n,)`` under ``softmax(h W^T / T)``."""
    import torch

    logp = (torch.nn.functional.linear(h, weight, bias).float() / temperature).log_softmax(-1)  # (n, V)
    return logp.gather(1, targets[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)

