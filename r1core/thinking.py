"""Under- and overthinking metrics of long chains of thought, logged next to pass@1 by evaluation.

From "Thoughts Are All Over the Place: On the Underthinking of o1-Like LLMs" (Wang et al. 2025,
arXiv:2501.18585):

- **underthinking score** ``ξ_UT`` (section 2.3, eq. 1): over the ``N`` incorrect responses,
  ``ξ_UT = (1/N) Σ_i (1 - T̂_i / T_i)``, with ``T_i`` the response's tokens and ``T̂_i`` the tokens
  from its start up to and including its first correct thought (``T̂_i = T_i`` when no thought is
  correct: a model that never finds a way is not underthinking);
- **weighted underthinking score** ``ξ_wUT`` (section 3.2, eq. 3): per problem, the mean of
  ``ξ_UT`` over its ``k`` samples with a correct sample counting 0, averaged over problems.

From "Do NOT Think That Much for 2+3=? On the Overthinking of o1-Like LLMs" (Chen et al. 2024,
arXiv:2412.21187):

- **outcome efficiency** ``ξ_O`` (section 2.2, eq. 1): ``ξ_O = (1/N) Σ_i σ_i T̂_i / T_i`` over all
  responses, with ``σ_i = 1`` when at least one solution round in the response is correct and
  ``T̂_i`` the tokens until the first correct answer arrives (the end of the first correct round);
- **solution rounds** (section 2.1): a solution is "part of the full model generation that
  contains an answer explicitly"; the metric is the mean number per response.

Departures from the papers, named:

1. *Segmentation by markers, not by a model.* The papers segment responses with Llama-3.3-70B
   (guided by phrases like "alternatively"). Here a response is split at marker phrases
   (:data:`THOUGHT_SWITCH_MARKERS` for thoughts, :data:`SOLUTION_MARKERS`, which adds re-checks
   such as "wait" and "let me double-check", for solution rounds), case-insensitively at word
   starts. A marker used in passing ("the alternatively weighted sum") splits too.
2. *Correctness by the project's verifier, not by a judge model.* Wang et al. ask two R1-distilled
   models whether a thought *can lead* to the correct answer; here a thought is correct when
   :func:`r1core.verify.verify_batch` accepts the answer it contains (its last ``\\boxed{}``,
   ``<answer>`` block or expression). A promising thought that stops before stating the answer
   is not counted, and a thought that mentions the right number in passing is.
3. *An "explicit answer" is whatever the verifier extracts.* A marker segment with an extracted
   answer closes a solution round; segments with none join the round that follows. Math-verify
   extracts the last expression, so most segments with a number count.
4. *A verified-correct response always has a correct round.* When the whole response verifies
   but no round does alone (the answer block split from its round), its ``T̂`` is ``T``.
5. *Tokens are counted on text* by the sampler's tokenizer (``count_tokens``): ``T`` is the
   response text's token count and ``T̂`` its prefix's, so ``T̂ / T`` is 1 for the whole text.

All segments of a batch of responses are verified in one :func:`r1core.verify.verify_batch` call
(identical segments once). Answer types without an in-text answer to check per segment (anything
outside :data:`CHECKED_ANSWER_TYPES`) and samples whose gold cannot be parsed get no statistics.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pandas as pd

#: Phrases that start a new thought (Wang et al. 2025, section 2.1: "terms like 'alternatively'").
THOUGHT_SWITCH_MARKERS = ("alternatively", "wait, let me try another approach", "let me try another approach",
                          "let me try a different approach", "let's try another approach",
                          "let's try a different approach", "another approach", "on second thought",
                          "let's try a different method", "let me try a different method")
#: Phrases that may start a new solution round (thought switches plus re-checks; Chen et al. 2024,
#: Figure 2, where later solutions re-verify "2 + 3 = 5").
SOLUTION_MARKERS = THOUGHT_SWITCH_MARKERS + ("wait", "let me double-check", "let me double check", "let me check",
                                             "let me verify", "let me confirm", "to double-check", "double-checking",
                                             "just to be sure", "let's verify", "let's check", "let's double-check")
#: Answer types whose answer is read from the text, so each segment can be checked.
CHECKED_ANSWER_TYPES = ("math", "string", "multiple_choice", "reasoning_gym")
#: The per-sample columns :func:`analyse` adds (see :class:`ThinkingStats`).
COLUMNS = ("num_thoughts", "first_correct_thought_at", "num_solution_rounds", "first_correct_solution_at")


def _pattern(markers: Sequence[str]) -> re.Pattern:
    alternatives = "|".join(re.escape(m) for m in sorted(set(markers), key=len, reverse=True))
    return re.compile(rf"(?<![\w])(?:{alternatives})(?![\w])", re.IGNORECASE)


_THOUGHTS, _SOLUTIONS = _pattern(THOUGHT_SWITCH_MARKERS), _pattern(SOLUTION_MARKERS)
_WORD = re.compile(r"\w")


def split_at_markers(text: str, markers: Sequence[str] | None = None, *, pattern: re.Pattern | None = None
                     ) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the segments of ``text`` split before each marker
    (case-insensitive, whole words); the spans cover ``text`` from 0 to ``len(text)``. Markers
    separated only by spaces and punctuation ("Wait, let me double-check") make one split.

    >>> text = "x is 2. Alternatively, x is 3."
    >>> [text[a:b] for a, b in split_at_markers(text, ["alternatively"])]
    ['x is 2. ', 'Alternatively, x is 3.']
    """
    pattern = pattern if pattern is not None else _pattern(markers or THOUGHT_SWITCH_MARKERS)
    starts, last_end = [0], 0
    for m in pattern.finditer(text):
        if m.start() > 0 and _WORD.search(text, last_end, m.start()):
            starts.append(m.start())
        last_end = m.end()
    return list(zip(starts, starts[1:] + [len(text)]))


def split_thoughts(text: str) -> list[str]:
    """``text`` split into thoughts at :data:`THOUGHT_SWITCH_MARKERS`."""
    return [text[a:b] for a, b in split_at_markers(text, pattern=_THOUGHTS)]


@dataclass(frozen=True)
class ThinkingStats:
    """One response's thoughts and solution rounds.

    Attributes:
        num_thoughts: thoughts (marker segments, :data:`THOUGHT_SWITCH_MARKERS`).
        first_correct_thought_at: ``T̂ / T`` for the first correct thought (tokens up to and
            including it over the response's tokens); ``None`` when no thought is correct.
        num_solution_rounds: solution rounds (segments at :data:`SOLUTION_MARKERS` that contain
            an extracted answer, each with the answer-less segments before it).
        first_correct_solution_at: ``T̂ / T`` for the first correct round; ``None`` when none is
            (``σ = 0``).
    """

    num_thoughts: int
    first_correct_thought_at: float | None
    num_solution_rounds: int
    first_correct_solution_at: float | None


def analyse(completions: Sequence[str], golds: Sequence[str], *, correct: Sequence[bool | None],
            count_tokens: Callable[[str], int], answer_types: Sequence[str] | None = None,
            metadata: Sequence[str] | None = None) -> list[ThinkingStats | None]:
    """Thoughts and solution rounds of each completion, each segment checked against its gold.

    Args:
        completions: responses (text).
        golds: their gold answers.
        correct: the verifier's verdict on each whole response (``None``: gold unparsable).
        count_tokens: tokens of a text in the sampler's tokenizer.
        answer_types, metadata: as :func:`r1core.verify.verify_batch` takes them.

    Returns:
        One :class:`ThinkingStats` per completion; ``None`` where the gold is unparsable or the
        answer type is not in :data:`CHECKED_ANSWER_TYPES`.

    Raises:
        ValueError: the lists differ in length.
    """
    from r1core.verify import verify_batch

    n = len(completions)
    answer_types = [t or "math" for t in answer_types] if answer_types is not None else ["math"] * n
    metadata = [m or "" for m in metadata] if metadata is not None else [""] * n
    if not len(golds) == len(correct) == len(answer_types) == len(metadata) == n:
        raise ValueError(f"{n} completions but {len(golds)} golds, {len(correct)} verdicts, {len(answer_types)} "
                         f"answer types and {len(metadata)} metadata entries; pass one of each per completion.")
    index: dict[tuple[str, str, str, str], int] = {}  # distinct (segment, gold, type, metadata) -> verdict slot
    plans: list[tuple[list, list] | None] = []
    for text, gold, ok, atype, meta in zip(completions, golds, correct, answer_types, metadata):
        if ok is None or atype not in CHECKED_ANSWER_TYPES:
            plans.append(None)
            continue
        spans = []
        for pattern in (_THOUGHTS, _SOLUTIONS):
            spans.append([(b, index.setdefault((text[a:b], str(gold), atype, str(meta)), len(index)))
                          for a, b in split_at_markers(text, pattern=pattern)])
        plans.append((spans[0], spans[1]))
    keys = list(index)
    verdicts = verify_batch([k[0] for k in keys], [k[1] for k in keys], answer_types=[k[2] for k in keys],
                            metadata=[k[3] for k in keys]) if keys else []
    out: list[ThinkingStats | None] = []
    for text, ok, plan in zip(completions, correct, plans):
        if plan is None:
            out.append(None)
            continue
        thoughts, segments = plan
        total = count_tokens(text)

        def fraction(end: int) -> float | None:
            return min(count_tokens(text[:end]) / total, 1.0) if total > 0 else None

        first_thought = next((end for end, slot in thoughts if verdicts[slot].correct), None)
        rounds = [(end, bool(verdicts[slot].correct)) for end, slot in segments
                  if verdicts[slot].answer is not None and verdicts[slot].status == "ok"]
        first_round = next((end for end, right in rounds if right), None)
        if first_round is None and ok:  # departure 4: the response verifies, so some solution is correct
            first_round = len(text)
        out.append(ThinkingStats(
            num_thoughts=len(thoughts),
            first_correct_thought_at=fraction(first_thought) if first_thought is not None else None,
            num_solution_rounds=max(len(rounds), 1 if ok else 0),
            first_correct_solution_at=fraction(first_round) if first_round is not None else None))
    return out


def record(stats: ThinkingStats | None) -> dict:
    """The per-sample columns (:data:`COLUMNS`) for a sample record; ``None`` values without stats."""
    return asdict(stats) if stats is not None else dict.fromkeys(COLUMNS)


def metrics(samples: pd.DataFrame) -> dict[str, float]:
    """Benchmark metrics from sample rows with ``id``, ``correct`` and the :data:`COLUMNS`.

    - ``underthinking``: ``ξ_UT`` (Wang et al. 2025, eq. 1) over the incorrect samples;
    - ``underthinking_weighted``: ``ξ_wUT`` (eq. 3), per problem over its samples, averaged over problems;
    - ``outcome_efficiency``: ``ξ_O`` (Chen et al. 2024, eq. 1), per problem over its samples,
      averaged over problems (with one sample per problem: the paper's mean over instances);
    - ``mean_solution_rounds``, ``mean_thoughts``: per sample.

    Samples without statistics are left out; metrics with no samples to average are left out
    (``underthinking`` when every sample is correct), never ``NaN``. Values are fractions (0 to 1).
    """
    if any(c not in samples for c in COLUMNS) or "correct" not in samples:
        return {}
    rows = samples[samples["correct"].notna() & samples["num_solution_rounds"].notna()]
    if not len(rows):
        return {}
    correct = rows["correct"].astype(bool)
    thought_at = pd.to_numeric(rows["first_correct_thought_at"], errors="coerce")
    solution_at = pd.to_numeric(rows["first_correct_solution_at"], errors="coerce")
    ut = (1.0 - thought_at.fillna(1.0)).where(~correct, 0.0)  # ξ_UT(s); 0 for a correct sample (eq. 3)
    out = {
        "outcome_efficiency": float(solution_at.fillna(0.0).groupby(rows["id"], sort=False).mean().mean()),
        "underthinking_weighted": float(ut.groupby(rows["id"], sort=False).mean().mean()),
        "mean_solution_rounds": float(pd.to_numeric(rows["num_solution_rounds"]).mean()),
        "mean_thoughts": float(pd.to_numeric(rows["num_thoughts"]).mean()),
    }
    if (~correct).any():
        out["underthinking"] = float(ut[~correct].mean())
    return {k: v for k, v in out.items() if not math.isnan(v)}
