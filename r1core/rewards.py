"""Rule-based rewards of the R1 recipe, in TRL's reward signature.

Each reward is ``fn(completions, **kwargs) -> list[float | None]``: ``completions`` are plain
strings (or chat messages), dataset columns arrive as keyword arguments (the gold answer is
``answer``), and TRL also passes ``prompts``. Rewards are callable class instances (picklable),
registered by a short name that recipes use with a weight; the name is also the ``__name__``
TRL logs under (``rewards/<name>/mean``).

Sources: accuracy and format are the two rule-based rewards of DeepSeek-R1 (arXiv:2501.12948,
section 2.2.2); ``tag_count`` is the partial-credit format reward popularised by open-r1, which
gives a model too small to emit the whole template a gradient toward it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from r1core.prompts import response_text
from r1core.verify import verify_batch


def _texts(completions) -> list[str]:
    """Completions as plain strings (TRL passes lists of messages for conversational data)."""
    out = []
    for c in completions:
        if isinstance(c, list):
            out.append("".join(m.get("content", "") for m in c if isinstance(m, dict)))
        else:
            out.append(str(c))
    return out


def _responses(completions, prompts) -> list[str]:
    texts = _texts(completions)
    if not prompts:
        return texts
    return [response_text(p if isinstance(p, str) else "", t) for p, t in zip(prompts, texts)]


class AccuracyReward:
    """R1's accuracy reward: ``1.0`` if the completion's final answer verifies against ``answer``, else ``0.0``.

    The answer is read and compared by :mod:`r1core.verify` (the project's one verifier);
    ``None`` (sample skipped by TRL) when the gold answer cannot be parsed. Verifier timeouts
    score ``0.0`` and are reported through TRL's ``log_metric`` as ``verifier/timeouts``.

    >>> AccuracyReward()(["<think>2+2</think><answer>4</answer>"], answer=["4"])
    [1.0]
    """

    __name__ = "accuracy"

    def __call__(self, completions, answer, **kwargs) -> list[float | None]:
        verdicts = verify_batch(_texts(completions), [str(a) for a in answer])
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            log_metric("verifier/timeouts", float(sum(v.status == "timeout" for v in verdicts)))
        return [None if v.correct is None else float(v.correct) for v in verdicts]


class FormatReward:
    """R1's format reward: ``1.0`` if the response is exactly ``<think> ... </think>`` then
    ``<answer> ... </answer>`` (whitespace allowed between and around), else ``0.0``.

    The response includes a ``<think>`` prefill that ended the prompt (see
    :func:`r1core.prompts.response_text`).

    >>> FormatReward()(["<think>\\nx\\n</think>\\n<answer>4</answer>", "4"])
    [1.0, 0.0]
    """

    __name__ = "format"
    pattern = re.compile(r"^\s*<think>(?:(?!</?think>).)*</think>\s*<answer>(?:(?!</?answer>).)*</answer>\s*$", re.DOTALL)

    def __call__(self, completions, prompts=None, **kwargs) -> list[float]:
        return [1.0 if self.pattern.match(r) else 0.0 for r in _responses(completions, prompts)]


class TagCountReward:
    """Partial credit for the template's tags: ``0.25`` for each of ``<think>``, ``</think>``,
    ``<answer>``, ``</answer>`` that appears exactly once (range 0 to 1).

    >>> TagCountReward()(["<think>x</think>", "<think>x</think><answer>4</answer>"])
    [0.5, 1.0]
    """

    __name__ = "tag_count"
    tags = ("<think>", "</think>", "<answer>", "</answer>")

    def __call__(self, completions, prompts=None, **kwargs) -> list[float]:
        return [sum(0.25 for t in self.tags if r.count(t) == 1) for r in _responses(completions, prompts)]


#: Reward name -> factory. Recipes name rewards by these keys; the key is the logged name.
REGISTRY: dict[str, Callable[[], Callable]] = {
    "accuracy": AccuracyReward,
    "format": FormatReward,
    "tag_count": TagCountReward,
}

#: The public name issue #3 fixes for the accuracy reward.
accuracy_reward = AccuracyReward()


def get_rewards(weights: dict[str, float]) -> tuple[list[Callable], list[float]]:
    """Build reward functions and their weights from ``{name: weight}``.

    Raises:
        ValueError: an unknown reward name (the message lists the known names), or no rewards.
    """
    if not weights:
        raise ValueError(f"No rewards given; name at least one of: {', '.join(REGISTRY)}.")
    unknown = [n for n in weights if n not in REGISTRY]
    if unknown:
        raise ValueError(f"Unknown reward(s) {unknown}; known rewards: {', '.join(REGISTRY)}.")
    return [REGISTRY[n]() for n in weights], [float(w) for w in weights.values()]
