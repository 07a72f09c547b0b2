"""The engine's decode step on CPU for Llama-family models (Llama, Mistral, Qwen2, Qwen3): the
model's own weights and modules, without transformers' per-layer machinery, and one C++ kernel
call per layer for the attention (:mod:`r1core.cpu_engine.kernel`).

A decode step at 64 rows through transformers' forward spends ~40% of its time outside the matrix
multiplies on this 2-core machine: SDPA reads the KV cache at ~10 GB/s, and each layer runs ~90
small calls (masks, rotary, cache update, reshapes). :class:`CpuDecoder` runs the same
computation (embedding, per layer: RMSNorm, q/k/v projections, rotary embedding, cache write,
grouped-query attention over each row's own columns, output projection and residual, RMSNorm,
SiLU-gated MLP and residual; final norm and LM head) with the model's modules' own forwards for
every linear layer (the engine's oneDNN packed weights) and the kernel's ``rope_attend`` for
rotary + cache write + attention, and ``add_rms_norm`` for each residual add + RMSNorm. The logits
equal transformers' up to fp32 summation order (tested). Where the kernel is not available, the
engine keeps transformers' forward.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from r1core.cpu_engine.kernel import kernels

logger = logging.getLogger(__name__)

#: Model classes whose decoder layers are the Llama layout (pre-norm, rotary, SiLU-gated MLP).
SUPPORTED_MODELS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
HEAD_DIMS = (16, 32, 64, 128)


def unsupported(model) -> str | None:
    """Why :class:`CpuDecoder` cannot run ``model`` (``None`` when it can): its class, device,
    dtype, mixed-precision autocast (its forward wrapped by accelerate, or autocast on), activation,
    head size, or a linear layer that is not a plain ``nn.Linear`` (adapters, quantized layers) or
    carries hooks."""
    name = type(model).__name__
    if name not in SUPPORTED_MODELS:
        return f"{name} is not one of {SUPPORTED_MODELS}"
    weight = model.get_input_embeddings().weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return f"weights are {weight.dtype} on {weight.device} (the kernel is fp32 on CPU)"
    if torch.is_autocast_enabled("cpu") or "_original_forward" in vars(model):  # accelerate's mixed precision
        return "the model runs under CPU autocast (bf16 mixed precision); the sampler keeps the trainer's forward"
    config = model.config
    if getattr(config, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(config, 'hidden_act', None)!r} (the MLP is SiLU-gated)"
    layers = model.model.layers
    head_dim = layers[0].self_attn.head_dim
    if head_dim not in HEAD_DIMS:
        return f"head_dim {head_dim} (the kernel takes {HEAD_DIMS})"
    for layer in layers:
        a, m = layer.self_attn, layer.mlp
        for module in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
            if type(module) is not torch.nn.Linear or module._forward_hooks or module._forward_pre_hooks:
                return f"{type(module).__name__} layer with hooks or not a plain nn.Linear"
    if type(model.lm_head) is not torch.nn.Linear:
        return f"lm_head is {type(model.lm_head).__name__}"
    return None


class CpuDecoder:
    """One decode step of a supported model (see :func:`unsupported`) over the engine's preallocated
    KV cache. Build it inside the engine's :class:`r1core.cpu_engine.linears.packed_linears` block:
    it calls each linear layer's forward as set at construction (the packed kernel there)."""

    def __init__(self, model, ops):
        self.ops = ops
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.lm_head = model.lm_head.forward
        attention = inner.layers[0].self_attn
        self.head_dim, self.scale = attention.head_dim, float(attention.scaling)
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            q_norm = getattr(a, "q_norm", None)  # Qwen3: RMSNorm of each head's query and key before rotary
            k_norm = getattr(a, "k_norm", None)
            self.layers.append((
                (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                a.q_proj.forward, a.k_proj.forward, a.v_proj.forward, a.o_proj.forward,
                None if q_norm is None else (q_norm.weight, q_norm.variance_epsilon),
                None if k_norm is None else (k_norm.weight, k_norm.variance_epsilon),
                (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                m.gate_proj.forward, m.up_proj.forward, m.down_proj.forward))

    @classmethod
    def for_model(cls, model) -> CpuDecoder | None:
        """A decoder for ``model``, or ``None`` (the reason logged at debug level) when the model
        is not supported or the kernel is not available."""
        reason = unsupported(model)
        if reason is not None:
            logger.debug("CPU decode step not used: %s", reason)
            return None
        ops = kernels()
        return None if ops is None else cls(model, ops)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, positions: torch.Tensor, layers, starts: torch.Tensor) -> torch.Tensor:
        """Logits ``(b, V)`` (fp32) of one token per row.

        Args:
            ids: ``(b,)`` this step's input tokens.
            positions: ``(b,)`` their positions (rotary).
            layers: the cache's :class:`r1core.cpu_engine.cache.PreallocatedLayer` per decoder layer,
                ``b`` rows each, every row filled up to the same column; this step's key and value
                go into the next column.
            starts: ``(b,)`` int64, each row's first cache column (its left padding is not read).
        """
        rows, d, ops = ids.shape[0], self.head_dim, self.ops
        column = min(cache.reserve(1) for cache in layers)  # every layer is filled to the same column
        h = F.embedding(ids, self.embed)  # (b, E): the residual stream, updated in place
        cos, sin = self.rotary(h[:, None], positions[:, None])  # (b, 1, D) each
        cos, sin = cos[:, 0].contiguous(), sin[:, 0].contiguous()
        delta = None  # the last MLP's output, added to h by the next norm
        for cache, (norm1, q_proj, k_proj, v_proj, o_proj, q_norm, k_norm, norm2, gate, up, down) in zip(
                layers, self.layers, strict=True):
            x = ops.add_rms_norm(h, delta, *norm1)
            q, k, v = q_proj(x), k_proj(x), v_proj(x)  # (b, H * D), (b, Hkv * D), (b, Hkv * D)
            if q_norm is not None:
                q = F.rms_norm(q.view(rows, -1, d), (d,), *q_norm).view(rows, -1)
            if k_norm is not None:
                k = F.rms_norm(k.view(rows, -1, d), (d,), *k_norm).view(rows, -1)
            attended = ops.rope_attend(q, k, v, cos, sin, cache._keys, cache._values, starts, column, self.scale)
            x = ops.add_rms_norm(h, o_proj(attended), *norm2)
            g = gate(x)
            delta = down(F.silu(g, inplace=True).mul_(up(x)))
        for cache in layers:
            cache.advance(1)
        return self.lm_head(ops.add_rms_norm(h, delta, *self.norm)).float()
