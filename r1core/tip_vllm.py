"""TIP (:mod:`r1core.tip`) in vLLM, through its batch-level logits-processor interface
(``vllm.v1.sample.logits_processor.LogitsProcessor``, vLLM's V1 engine).

Import this module only where vLLM is installed (it imports vLLM). :class:`r1core.sampling.VLLMSampler`
passes :class:`ThoughtSwitchPenalty` to ``vllm.LLM(logits_processors=[...])`` and turns TIP on per
request with ``SamplingParams.extra_args["tip"] = {"alpha": float, "beta": int, "token_ids": [int, ...]}``
(:func:`extra_args`); requests without it are left alone. Same rule as the other backends: ``Ψ``
is the position of the request's last generated switch token (0 before any), the penalty is on
while ``len(output) - Ψ < beta``.

Not run by this project's tests: vLLM is not installed where they run (no CUDA), so this module
is written against vLLM's documented interface and is unverified. vLLM orders its sampler's steps
itself: with a repetition penalty set, it may apply that after this processor (the other backends
apply it before), so the adjusted logits can differ from theirs in that case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from r1core.tip import Tip


def extra_args(tip: Tip) -> dict:
    """The ``SamplingParams.extra_args`` entry that turns TIP on for a request."""
    return {"tip": {"alpha": tip.alpha, "beta": tip.beta, "token_ids": list(tip.token_ids)}}


@dataclass
class _Row:
    alpha: float
    beta: int
    ids: frozenset[int]
    output: list[int]  # vLLM's running output-token list of the request (a reference: it grows)
    start: int = 0  # Ψ
    seen: int = 0  # output tokens already scanned for switches
    key: tuple = field(default=())


class ThoughtSwitchPenalty(LogitsProcessor):
    """TIP for every request whose ``extra_args`` carry a ``tip`` entry (see the module docstring)."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        spec = (sampling_params.extra_args or {}).get("tip")
        if spec is None:
            return
        if not isinstance(spec, dict) or not {"alpha", "beta", "token_ids"} <= set(spec):
            raise ValueError("extra_args['tip'] must be {'alpha': float, 'beta': int, 'token_ids': [int, ...]} "
                             "(r1core.tip_vllm.extra_args builds it).")
        if spec["alpha"] < 0 or spec["beta"] < 0 or not spec["token_ids"]:
            raise ValueError("extra_args['tip'] needs alpha >= 0, beta >= 0 and at least one token id.")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.device = device
        self.rows: dict[int, _Row] = {}  # persistent-batch index -> request state
        self._ids: dict[tuple, torch.Tensor] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # lowering logits can change the greedy token

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for added in batch_update.added:  # (index, params, [prompt ids,] output ids): both layouts
            index, params, output = added[0], added[1], added[-1]
            spec = (getattr(params, "extra_args", None) or {}).get("tip") if params is not None else None
            if spec and spec["alpha"] > 0 and spec["beta"] > 0:
                ids = tuple(sorted({int(i) for i in spec["token_ids"]}))
                self.rows[index] = _Row(float(spec["alpha"]), int(spec["beta"]), frozenset(ids), output,
                                        key=(float(spec["alpha"]), ids))
            else:
                self.rows.pop(index, None)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self.rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(num_requests, V)``: ``-alpha`` on ``V̂`` for requests inside their window, in place."""
        groups: dict[tuple, list[int]] = {}
        for index, row in self.rows.items():
            for pos in range(row.seen, len(row.output)):
                if row.output[pos] in row.ids:
                    row.start = pos
            row.seen = len(row.output)
            if len(row.output) - row.start < row.beta:
                groups.setdefault(row.key, []).append(index)
        for (alpha, ids), indices in groups.items():
            if ids not in self._ids:
                self._ids[ids] = torch.tensor(ids, dtype=torch.long, device=logits.device)
            rows = torch.tensor(indices, dtype=torch.long, device=logits.device)
            logits[rows[:, None], self._ids[ids][None, :]] -= alpha
        return logits
