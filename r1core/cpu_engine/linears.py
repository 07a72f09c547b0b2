"""oneDNN matrix multiplies on weights packed once per engine call (:class:`packed_linears`)."""

from __future__ import annotations

import functools

import torch


class packed_linears:
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
