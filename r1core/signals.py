"""R1's self-evolution signals, measured on a batch of completions (DeepSeek-R1, arXiv:2501.12948,
section 2.2.4): the response length grows during RL (Figure 3), reflection appears (the "aha
moment", Table 3: "Wait, wait. Wait. That's an aha moment I can flag here. Let's reevaluate..."),
and the chain of thought mixes languages unless rewarded not to (section 2.3.3).

- **Reflection rate**: the share of completions containing at least one re-evaluation phrase of
  :data:`REFLECTION_MARKERS` (case-insensitive, whole words). The list follows the
  self-reflection keywords of "Understanding R1-Zero-Like Training" (Liu et al. 2025,
  arXiv:2503.20783, section 2.2) plus R1's own "wait" and "re-evaluate"; a recipe can replace it.
- **Language consistency**: the mean of :class:`r1core.rewards.LanguageConsistencyReward` over the
  completions (share of the chain of thought's words in the target language's script).

The mean completion length in tokens is TRL's own ``completions/mean_length``.
"""

from __future__ import annotations

import re

from r1core.rewards import LanguageConsistencyReward

REFLECTION_MARKERS = ("wait", "let me check", "let me verify", "let's check", "double-check", "double check",
                      "re-evaluate", "reevaluate", "re-examine", "recheck", "rethink", "reconsider", "reassess",
                      "check again", "verify", "however", "hmm", "aha")


class ReflectionRate:
    """Share of completions with a reflection phrase (0 to 1).

    >>> ReflectionRate()(["4 + 5 = 9", "4 + 5 = 8. Wait, let me check: 9."])
    0.5
    """

    def __init__(self, markers: tuple[str, ...] | list[str] | None = None):
        markers = tuple(markers if markers is not None else REFLECTION_MARKERS)
        if not markers:
            raise ValueError("reflection_markers: give at least one phrase (or leave it unset for the default list).")
        alternatives = "|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def flags(self, texts: list[str]) -> list[bool]:
        """Per completion: does it contain a reflection phrase?"""
        return [bool(self.pattern.search(t)) for t in texts]

    def __call__(self, texts: list[str]) -> float:
        return sum(self.flags(texts)) / len(texts) if texts else 0.0


def self_evolution_signals(texts: list[str], reflection: ReflectionRate, language: str = "en") -> dict[str, float]:
    """``signals/reflection_rate`` and ``signals/language_consistency`` of a batch of responses
    (text, the ``<think>`` prefill included when the prompt had one)."""
    if not texts:
        return {}
    consistency = LanguageConsistencyReward(language)(texts)
    return {"signals/reflection_rate": reflection(texts),
            "signals/language_consistency": sum(consistency) / len(consistency)}
