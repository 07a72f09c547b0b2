"""Rule-based rewards of the R1 recipe, in TRL's reward signature.

Each reward is ``fn(completions, **kwargs) -> list[float | None]``: ``completions`` are plain
strings (or chat messages), dataset columns arrive as keyword arguments (the gold answer is
``answer``), and TRL also passes ``prompts``. Rewards are callable class instances (picklable),
registered by a short name that recipes use with a weight; the name is also the ``__name__``
TRL logs under (``rewards/<name>/mean``).

Sources: accuracy and format are the two rule-based rewards of DeepSeek-R1 (arXiv:2501.12948,
section 2.2.2); ``tag_count`` is the partial-credit format reward popularised by open-r1, which
gives a model too small to emit the whole template a gradient toward it; ``language_consistency``
is R1's section 2.3.3; ``length`` is Kimi k1.5's length penalty (arXiv:2501.12599, section
2.3.3); ``cosine`` and ``repetition`` are from "Demystifying Long Chain-of-Thought Reasoning in
LLMs" (Yeo et al. 2025, arXiv:2502.03373, section 4.2 and appendix); ``soft_overlong`` is DAPO's
overlong reward shaping (arXiv:2503.14476, eq. 13); ``thought_switch`` penalises the
underthinking that "Thoughts Are All Over the Place" (Wang et al. 2025, arXiv:2501.18585) measures.

Lengths are in tokens wherever TRL passes ``completion_ids`` (it always does in training);
called without them, a reward counts whitespace-separated words and says so in its docstring.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable

from r1core.judge import JudgeReward, RewardModelReward
from r1core.prompts import response_text
from r1core.verify import verify_batch


def _checks(answer_type=None, metadata=None) -> dict:
    """``verify_batch``'s per-sample checks from the data set columns TRL passes (absent: math)."""
    return {"answer_types": list(answer_type) if answer_type is not None else None,
            "metadata": list(metadata) if metadata is not None else None}


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

    The answer is read and compared by :mod:`r1core.verify` (the project's one verifier), by
    each row's ``answer_type`` column (math when absent); for a reasoning-gym task the reward is
    the task scorer's value (0 to 1, partial credit where the task gives it). ``None`` (sample
    skipped by TRL) when the gold answer cannot be parsed. Verifier timeouts
    score ``0.0``; both are counted through TRL's ``log_metric`` (``verifier/timeouts``,
    ``verifier/gold_unparsable``).

    >>> AccuracyReward()(["<think>2+2</think><answer>4</answer>"], answer=["4"])
    [1.0]
    """

    __name__ = "accuracy"

    def __call__(self, completions, answer, answer_type=None, metadata=None, **kwargs) -> list[float | None]:
        verdicts = verify_batch(_texts(completions), [str(a) for a in answer],
                                **_checks(answer_type, metadata))
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            log_metric("verifier/timeouts", float(sum(v.status == "timeout" for v in verdicts)))
            log_metric("verifier/gold_unparsable", float(sum(v.status == "gold_unparsable" for v in verdicts)))
        return [None if v.correct is None else float(v.score) for v in verdicts]


class FormatReward:
    """R1's format reward: ``1.0`` if the response is exactly ``<think> ... </think>`` then
    ``<answer> ... </answer>`` (whitespace allowed between and around), else ``0.0``.

    The response includes a ``<think>`` prefill that ended the prompt (see
    :func:`r1core.prompts.response_text`).

    >>> FormatReward()(["<think>\\nx\\n</think>\\n<answer>4</answer>", "4"])
    [1.0, 0.0]
    """

    __name__ = "format"
    # Linear time: anchored at the start, and each tempered token stops at its one closing tag
    # (tests/test_hostile.py times every regex here on 1 MB built to make backtracking blow up).
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
        return [float(sum(0.25 for t in self.tags if r.count(t) == 1)) for r in _responses(completions, prompts)]


# Linear time: the first <think> always matches (at </think> or the end), so no later start is tried.
_THINK_BLOCK = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)


def _think_text(response: str) -> str:
    """The chain of thought: the ``<think>`` block's content (whole response when there is none)."""
    m = _THINK_BLOCK.search(response)
    return m.group(1) if m else response


def _lengths(completions, completion_ids=None) -> list[int]:
    """Completion lengths in tokens from ``completion_ids`` (TRL passes them), else in words."""
    if completion_ids is not None:
        return [len(ids) for ids in completion_ids]
    return [len(t.split()) for t in _texts(completions)]


def _correct(completions, answer, answer_type=None, metadata=None) -> list[bool | None]:
    """Per completion: verified correct, wrong, or ``None`` when its gold cannot be parsed."""
    return [v.correct for v in verify_batch(_texts(completions), [str(a) for a in answer],
                                            **_checks(answer_type, metadata))]


_SCRIPTS = {
    "en": re.compile(r"^[A-Za-z\u00C0-\u024F'’-]+$"),        # Latin script words
    "zh": re.compile(r"^[\u4E00-\u9FFF\u3400-\u4DBF]+$"),   # CJK ideographs
}


class LanguageConsistencyReward:
    """R1's language-consistency reward (DeepSeek-R1, section 2.3.3): the proportion of words in
    the chain of thought (the ``<think>`` block) that are in the target language's script.

    Words are maximal runs of letters (numbers, LaTeX commands' punctuation and symbols are not
    words and do not count either way); a chain of thought with no words scores ``1.0``. Range
    0 to 1.

    Args:
        language: ``"en"`` (Latin script) or ``"zh"`` (CJK ideographs).

    >>> LanguageConsistencyReward("en")(["<think>so two plus 是 4</think>"])
    [0.75]
    """

    __name__ = "language_consistency"

    def __init__(self, language: str = "en"):
        if language not in _SCRIPTS:
            raise ValueError(f"language_consistency supports {sorted(_SCRIPTS)}; got {language!r}.")
        self.language = language

    def __call__(self, completions, prompts=None, **kwargs) -> list[float]:
        out = []
        for r in _responses(completions, prompts):
            words = re.findall(r"[^\W\d_]+(?:['’-][^\W\d_]+)*", _think_text(r))
            if self.language == "zh":  # CJK text has no spaces: count each ideograph run per character
                words = [c for w in words for c in (w if _SCRIPTS["zh"].match(w) else [w])]
            out.append(sum(bool(_SCRIPTS[self.language].match(w)) for w in words) / len(words) if words else 1.0)
        return out


class LengthReward:
    """Kimi k1.5's length penalty (arXiv:2501.12599, section 2.3.3), within each group of
    completions of the same prompt: ``lambda = 0.5 - (len - min_len) / (max_len - min_len)``;
    a correct completion gets ``lambda``, an incorrect one ``min(0, lambda)``; ``0`` for all
    when every length in the group is equal. Lengths in tokens (``completion_ids``). Range
    -0.5 to 0.5; ``None`` (skipped, as TRL skips ``None``) where the gold answer cannot be parsed,
    and such samples do not set the group's length range.

    >>> LengthReward()(["<answer>4</answer>", "so long ... <answer>4</answer>"], answer=["4", "4"],
    ...                prompts=["p", "p"], completion_ids=[[1], [1, 2, 3]])
    [0.5, -0.5]
    """

    __name__ = "length"

    def __call__(self, completions, answer, prompts=None, completion_ids=None, answer_type=None, metadata=None,
                 **kwargs) -> list[float | None]:
        lengths = _lengths(completions, completion_ids)
        correct = _correct(completions, answer, answer_type, metadata)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(prompts if prompts is not None else [""] * len(lengths)):
            if correct[i] is not None:
                groups[str(p)].append(i)
        out: list[float | None] = [None if c is None else 0.0 for c in correct]
        for idx in groups.values():
            lo, hi = min(lengths[i] for i in idx), max(lengths[i] for i in idx)
            if hi == lo:
                continue
            for i in idx:
                lam = 0.5 - (lengths[i] - lo) / (hi - lo)
                out[i] = lam if correct[i] else min(0.0, lam)
        return out


class CosineReward:
    """Cosine-scaled correctness (Yeo et al. 2025, arXiv:2502.03373, section 4.2):
    ``r = r_min + (r_max - r_min) * (1 + cos(pi * L / max_len)) / 2`` with ``L`` the completion
    length in tokens (capped at ``max_len``). Correct answers go from ``max_value_correct``
    (short) down to ``min_value_correct`` (at ``max_len``), so brevity pays; wrong answers go
    from ``min_value_wrong`` (short) up to ``max_value_wrong``, so a longer attempt is
    penalised less than giving up early. ``None`` (skipped) where the gold answer cannot be parsed.

    >>> CosineReward(max_len=100)(["<answer>4</answer>", "<answer>5</answer>"], answer=["4", "4"],
    ...                           completion_ids=[[0] * 100, []])
    [0.5, -1.0]
    """

    __name__ = "cosine"

    def __init__(self, min_value_wrong: float = -1.0, max_value_wrong: float = -0.5,
                 min_value_correct: float = 0.5, max_value_correct: float = 1.0, max_len: int = 1000):
        if max_len <= 0:
            raise ValueError("cosine: max_len must be a positive number of tokens.")
        self.min_value_wrong, self.max_value_wrong = min_value_wrong, max_value_wrong
        self.min_value_correct, self.max_value_correct = min_value_correct, max_value_correct
        self.max_len = max_len

    def __call__(self, completions, answer, completion_ids=None, answer_type=None, metadata=None,
                 **kwargs) -> list[float | None]:
        out: list[float | None] = []
        for n, ok in zip(_lengths(completions, completion_ids), _correct(completions, answer, answer_type, metadata)):
            if ok is None:
                out.append(None)
                continue
            progress = min(n, self.max_len) / self.max_len
            cosine = (1 + math.cos(math.pi * progress)) / 2  # 1 at length 0, 0 at max_len
            if ok:
                lo, hi = self.min_value_correct, self.max_value_correct
            else:  # swapped: short wrong answers get the most negative reward
                lo, hi = self.max_value_wrong, self.min_value_wrong
            out.append(lo + (hi - lo) * cosine)
        return out


class RepetitionReward:
    """N-gram repetition penalty (Yeo et al. 2025, appendix): ``max_penalty * (1 - unique / total)``
    over the completion's token n-grams when TRL passes ``completion_ids`` (so text without spaces,
    such as Chinese, is measured too), else over its whitespace-separated words; ``0`` for
    completions shorter than ``ngram_size``. Range ``max_penalty`` (<= 0) to 0.

    >>> RepetitionReward(ngram_size=2)(["a b a b a b", "a b c d"])
    [-0.6, 0.0]
    """

    __name__ = "repetition"

    def __init__(self, ngram_size: int = 3, max_penalty: float = -1.0):
        if max_penalty > 0:
            raise ValueError(f"repetition: max_penalty must be <= 0, got {max_penalty}.")
        if ngram_size < 1:
            raise ValueError("repetition: ngram_size must be >= 1.")
        self.ngram_size, self.max_penalty = ngram_size, max_penalty

    def __call__(self, completions, completion_ids=None, **kwargs) -> list[float]:
        units = ([list(ids) for ids in completion_ids] if completion_ids is not None
                 else [t.lower().split() for t in _texts(completions)])
        out = []
        for words in units:
            grams = [tuple(words[i : i + self.ngram_size]) for i in range(len(words) - self.ngram_size + 1)]
            out.append(self.max_penalty * (1 - len(set(grams)) / len(grams)) if grams else 0.0)
        return [0.0 if v == 0 else v for v in out]


class SoftOverlongReward:
    """DAPO's soft overlong punishment (arXiv:2503.14476, eq. 13), lengths in tokens:
    ``0`` while ``L <= max_len - cache_len``; ``((max_len - cache_len) - L) / cache_len`` inside the
    last ``cache_len`` tokens; ``-1`` beyond ``max_len``. Range -1 to 0.

    The formula is TRL's :func:`trl.rewards.get_soft_overlong_punishment`; this class registers it
    under the project's name, checks its arguments, and measures whitespace-separated words when
    called without ``completion_ids``.

    Args:
        max_len: ``L_max``, tokens (DAPO: the generation limit).
        cache_len: ``L_cache``, the soft-punishment interval before ``max_len``, tokens.

    >>> SoftOverlongReward(max_len=10, cache_len=4)(["x"] * 3, completion_ids=[[0] * 6, [0] * 8, [0] * 12])
    [0.0, -0.5, -1.0]
    """

    __name__ = "soft_overlong"

    def __init__(self, max_len: int = 1024, cache_len: int = 256):
        from trl.rewards import get_soft_overlong_punishment

        if not 0 < cache_len <= max_len:
            raise ValueError(f"soft_overlong needs 0 < cache_len <= max_len; got {cache_len}, {max_len}.")
        self.max_len, self.cache_len = max_len, cache_len
        self._punishment = get_soft_overlong_punishment(max_completion_len=max_len, soft_punish_cache=cache_len)

    def __call__(self, completions, completion_ids=None, **kwargs) -> list[float]:
        units = completion_ids if completion_ids is not None else [t.split() for t in _texts(completions)]
        return self._punishment(completion_ids=units)


SWITCH_MARKERS = ("alternatively", "wait, let me try another approach", "let me try another approach",
                  "let me try a different approach", "another approach", "on second thought",
                  "let's try a different method")


class ThoughtSwitchReward:
    """Penalty for abandoning thoughts early (underthinking, Wang et al. 2025, arXiv:2501.18585):
    the chain of thought is split at switch markers ("Alternatively", "Wait, let me try another
    approach", ...); each switch that comes before the current thought reached ``min_tokens``
    words costs ``penalty``; the total is capped at -1. Lengths are whitespace-separated words
    (the markers are text, so the segments are measured as text). Range -1 to 0.

    >>> ThoughtSwitchReward(min_tokens=5, penalty=0.5)(["<think>try x. Alternatively y. Alternatively z</think>"])
    [-1.0]
    """

    __name__ = "thought_switch"

    def __init__(self, min_tokens: int = 50, penalty: float = 0.25, markers: tuple[str, ...] = SWITCH_MARKERS):
        if min_tokens < 1 or penalty < 0:
            raise ValueError("thought_switch needs min_tokens >= 1 and penalty >= 0.")
        self.min_tokens, self.penalty = min_tokens, penalty
        self.pattern = re.compile("|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)), re.IGNORECASE)

    def __call__(self, completions, prompts=None, **kwargs) -> list[float]:
        out = []
        for r in _responses(completions, prompts):
            segments = self.pattern.split(_think_text(r))
            premature = sum(len(seg.split()) < self.min_tokens for seg in segments[:-1])
            out.append(max(-1.0, -self.penalty * premature) if premature else 0.0)
        return out


#: Reward name -> factory. Recipes name rewards by these keys; the key is the logged name.
REGISTRY: dict[str, Callable[..., Callable]] = {
    "accuracy": AccuracyReward,
    "format": FormatReward,
    "tag_count": TagCountReward,
    "language_consistency": LanguageConsistencyReward,
    "length": LengthReward,
    "cosine": CosineReward,
    "repetition": RepetitionReward,
    "soft_overlong": SoftOverlongReward,
    "thought_switch": ThoughtSwitchReward,
    # model-based rewards of R1's final RL stage (section 2.3.4), scored on general rows: r1core.judge
    "judge": JudgeReward,
    "reward_model": RewardModelReward,
}

#: The public name issue #3 fixes for the accuracy reward.
accuracy_reward = AccuracyReward()


def get_rewards(weights: dict[str, float], reward_args: dict[str, dict] | None = None) -> tuple[list[Callable], list[float]]:
    """Build reward functions and their weights from ``{name: weight}``.

    Args:
        weights: reward name -> weight (names from :data:`REGISTRY`).
        reward_args: reward name -> constructor keyword arguments (e.g. ``{"cosine": {"max_len": 512}}``).

    Raises:
        ValueError: an unknown reward name (the message lists the known names), no rewards,
            arguments for a reward that is not used, or arguments the reward does not take.
    """
    reward_args = reward_args or {}
    if not weights:
        raise ValueError(f"No rewards given; name at least one of: {', '.join(REGISTRY)}.")
    unknown = [n for n in weights if n not in REGISTRY]
    if unknown:
        raise ValueError(f"Unknown reward(s) {unknown}; known rewards: {', '.join(REGISTRY)}.")
    stray = [n for n in reward_args if n not in weights]
    if stray:
        raise ValueError(f"reward_args given for {stray}, which are not in rewards {list(weights)}.")
    funcs = []
    for name in weights:
        try:
            funcs.append(REGISTRY[name](**reward_args.get(name, {})))
        except TypeError as err:
            raise ValueError(f"reward_args for {name!r}: {err}. See the docstring of r1core.rewards."
                             f"{REGISTRY[name].__name__} for its arguments.") from None
    return funcs, [float(w) for w in weights.values()]
