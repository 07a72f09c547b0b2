"""TIP: decoding with a thought switching penalty (Wang et al. 2025, "Thoughts Are All Over the
Place: On the Underthinking of o1-Like LLMs", arXiv:2501.18585, section 3.1, eq. 2).

At each decoding position ``t`` the logits of the thought-switch tokens ``V̂`` are lowered while
the current thought is young::

    ẑ[t, v] = z[t, v] - alpha   if v in V̂ and t < Ψ + beta
    ẑ[t, v] = z[t, v]           otherwise

``alpha >= 0`` is the penalty strength (logit units), ``beta >= 0`` the penalty duration (tokens)
and ``Ψ`` the position where the current thought started. With ``alpha == 0`` or ``beta == 0``
decoding is unchanged. The paper selects ``alpha = 3, beta = 600`` by a grid search over
``alpha in {3, 5, 10, 20, 30}``, ``beta in {300, ..., 700}`` on AIME 2022-23 (its Table 2).

How the paper's terms are read here (the paper does not spell these out):

- positions ``t`` count completion tokens from 0 (the prompt is not counted); the first thought
  starts at ``Ψ = 0``, and every generated token in ``V̂`` starts a new thought (``Ψ`` becomes its
  position), so the penalty is on for the first ``beta`` tokens of every thought;
- ``V̂`` (the paper's example: "alternatively") is, for each switch word, the first token of each
  of its encodings as ``word``, ``Word``, `` word`` and `` Word`` (:func:`switch_token_ids`). A
  word the tokenizer splits contributes its first piece (SmolLM2 encodes ``alternatively`` with
  no leading space as ``altern`` + ``atively``), which also starts other words: those are
  penalised too inside the window. Pass explicit ids (``SamplingParams.tip_token_ids``) to choose
  the set yourself.

Every backend applies the penalty at the same point: after the repetition penalty and before
temperature, top-k, top-p and min-p (where transformers runs a custom logits processor), so the
project's engine and ``generate`` give the same adjusted logits:

- the project's engine: :class:`TipState`, vectorised over the batch's rows ``(b, V)``;
- transformers ``generate``: :class:`TipLogitsProcessor`;
- vLLM: :mod:`r1core.tip_vllm` (its logits-processor interface; imported only with vLLM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.generation.logits_process import LogitsProcessor

#: The paper's settings (section 3.2): penalty strength and duration (tokens).
PAPER_ALPHA, PAPER_BETA = 3.0, 600
#: The switch words whose tokens are penalised by default (the paper's example).
DEFAULT_WORDS = ("alternatively",)


@dataclass(frozen=True)
class Tip:
    """A resolved penalty: ``alpha`` (logit units), ``beta`` (tokens), ``token_ids`` (``V̂``, distinct)."""

    alpha: float
    beta: int
    token_ids: tuple[int, ...]


def switch_token_ids(tokenizer, words: Sequence[str] = DEFAULT_WORDS) -> tuple[int, ...]:
    """``V̂`` for ``words``: the first token id of each encoding of each word as ``word``,
    ``Word``, ``" word"`` and ``" Word"`` (no special tokens), distinct, sorted.

    Raises:
        ValueError: no words, or a word that encodes to nothing.
    """
    words = [w.strip() for w in words if w and w.strip()]
    if not words:
        raise ValueError("TIP needs at least one switch word (SamplingParams.tip_words), e.g. ('alternatively',).")
    ids: set[int] = set()
    for word in words:
        for spelling in {word.lower(), word[0].upper() + word[1:].lower()}:
            for text in (spelling, " " + spelling):
                encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
                if not encoded:
                    raise ValueError(f"The switch word {word!r} encodes to no tokens; remove it from tip_words.")
                ids.add(int(encoded[0]))
    return tuple(sorted(ids))


def resolve(params, tokenizer=None) -> Tip | None:
    """The penalty ``params`` (a :class:`r1core.generation.SamplingParams`) asks for, or ``None``
    when it is off (``tip_alpha == 0`` or ``tip_beta == 0``). ``V̂`` is ``params.tip_token_ids``
    when given, else :func:`switch_token_ids` of ``params.tip_words`` in ``tokenizer``.

    Raises:
        ValueError: TIP on with neither explicit token ids nor a tokenizer to find them.
    """
    if params.tip_alpha <= 0 or params.tip_beta <= 0:
        return None
    if params.tip_token_ids is not None:
        ids = tuple(sorted({int(i) for i in params.tip_token_ids}))
    elif tokenizer is None:
        raise ValueError("TIP (tip_alpha > 0) needs the tokenizer to find the switch tokens of tip_words; pass "
                         "tokenizer=, or give SamplingParams.tip_token_ids.")
    else:
        ids = switch_token_ids(tokenizer, params.tip_words)
    if not ids:
        raise ValueError("TIP needs at least one switch token id; tip_token_ids is empty.")
    return Tip(float(params.tip_alpha), int(params.tip_beta), ids)


class TipState:
    """TIP inside the project's decoding loop: each row's thought start ``Ψ`` ``(b,)`` and the step.

    Per step: :meth:`penalize` the logits, sample, then :meth:`observe` the sampled tokens; when
    rows leave the batch, :meth:`keep` the rest.
    """

    def __init__(self, tip: Tip, rows: int, device):
        self.alpha, self.beta = tip.alpha, tip.beta
        self.ids = torch.tensor(tip.token_ids, dtype=torch.long, device=device)  # (n,)
        self.start = torch.zeros(rows, dtype=torch.long, device=device)  # (b,) Ψ: current thought's first position
        self.step = 0  # t: the position being sampled

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """Subtract ``alpha`` from ``logits[r, V̂]`` ``(b, V)`` in place for rows with ``t < Ψ + beta``."""
        active = (self.step - self.start) < self.beta  # (b,)
        penalty = torch.where(active, -self.alpha, 0.0).to(logits.dtype)  # (b,)
        return logits.index_add_(1, self.ids, penalty[:, None].expand(-1, len(self.ids)))

    def observe(self, tokens: torch.Tensor) -> None:
        """The tokens ``(b,)`` sampled at this step: a switch token starts a new thought here."""
        self.start = torch.where(torch.isin(tokens.to(self.ids.device), self.ids), self.step, self.start)
        self.step += 1

    def keep(self, rows: torch.Tensor) -> None:
        """Only ``rows`` ``(b',)`` stay in the batch."""
        self.start = self.start[rows.to(self.start.device)]


class TipLogitsProcessor(LogitsProcessor):
    """TIP as a transformers logits processor (``generate(logits_processor=[...])``).

    Stateless: ``Ψ`` is read from the ids generated so far (``input_ids[:, prompt_width:]``, the
    batch's prompts left-padded to ``prompt_width`` tokens), so any batch order is handled.
    """

    def __init__(self, tip: Tip, prompt_width: int):
        self.tip, self.prompt_width = tip, prompt_width
        self._ids: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._ids is None or self._ids.device != scores.device:
            self._ids = torch.tensor(self.tip.token_ids, dtype=torch.long, device=scores.device)
        completion = input_ids[:, self.prompt_width :]  # (B, t)
        step = completion.shape[1]
        positions = torch.arange(step, device=input_ids.device)
        last = torch.where(torch.isin(completion, self._ids), positions, 0).amax(-1) if step else (
            torch.zeros(len(input_ids), dtype=torch.long, device=input_ids.device))  # (B,) Ψ
        penalty = torch.where((step - last) < self.tip.beta, -self.tip.alpha, 0.0).to(scores.dtype)  # (B,)
        return scores.index_add(1, self._ids, penalty[:, None].expand(-1, len(self._ids)))
