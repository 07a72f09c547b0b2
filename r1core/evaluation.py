"""Evaluation the way DeepSeek-R1 reports it (arXiv:2501.12948, section 3).

For each problem, sample ``k`` completions (R1: temperature 0.6, top-p 0.95) and score each with
the project's one verifier. Metrics per benchmark (stable names, used by the MLflow compare
view):

- ``<bench>/pass@1``: mean correctness over the k samples, averaged over problems (R1's pass@1).
- ``<bench>/pass@<k>``: unbiased pass@k estimator of Chen et al. 2021 (arXiv:2107.03374, eq. 1).
- ``<bench>/cons@<k>``: majority vote over the k extracted answers, grouped by verified
  equivalence (:func:`r1core.verify.group_equivalent`; ties: the group seen first).
- ``<bench>/pass@1_stderr``: standard error of pass@1 over problems.
- ``<bench>/mean_completion_tokens`` and ``<bench>/truncated_fraction``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

import pandas as pd

from r1core.generation import SamplingParams, generate
from r1core.prompts import render
from r1core.verify import group_equivalent, verify_batch


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(4, 0, 2)
    (0.25, 1.0, 0.0)

    Raises:
        ValueError: ``k > n`` or ``c > n``.
    """
    if k > n or c > n or min(n, c, k) < 0:
        raise ValueError(f"pass@k needs 0 <= c <= n and k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(groups: list[int | None], correct: list[bool]) -> bool:
    """cons@k for one problem: is the largest group of equivalent answers a correct one?

    Args:
        groups: a group id per sample (equivalent answers share one; see
            :func:`r1core.verify.group_equivalent`), ``None`` where nothing was extracted (no vote).
        correct: the verifier's verdict per sample.

    Ties go to the group seen first.

    >>> majority_vote([0, 0, 2], [True, True, False]), majority_vote([0, 1], [False, True])
    (True, False)
    """
    votes = Counter(g for g in groups if g is not None)
    if not votes:
        return False
    best = max(votes.values())
    winner = next(g for g in groups if g is not None and votes[g] == best)
    return any(ok for g, ok in zip(groups, correct) if g == winner)


def score(samples: pd.DataFrame, k: int) -> dict[str, float]:
    """Benchmark metrics from per-sample rows (``id``, ``correct``, ``extracted``, ``num_tokens``, ``truncated``).

    Samples whose gold answer could not be parsed (``correct`` is None) are left out.
    """
    valid = samples[samples["correct"].notna()]
    per_problem = valid.groupby("id", sort=False)
    p1 = per_problem["correct"].mean().astype(float)
    n_problems = len(p1)
    metrics = {
        "pass@1": float(p1.mean()) if n_problems else math.nan,
        "pass@1_stderr": float(p1.std(ddof=1) / math.sqrt(n_problems)) if n_problems > 1 else 0.0,
        "num_problems": float(n_problems),
        "num_samples": float(len(valid)),
        "mean_completion_tokens": float(samples["num_tokens"].mean()) if len(samples) else math.nan,
        "truncated_fraction": float(samples["truncated"].mean()) if len(samples) else math.nan,
    }
    if "verifier_status" in samples:
        metrics["verifier_timeouts"] = float((samples["verifier_status"] == "timeout").sum())
        metrics["gold_unparsable"] = float((samples["verifier_status"] == "gold_unparsable").sum())
    if k > 1 and n_problems:
        metrics[f"pass@{k}"] = float(per_problem["correct"].apply(lambda s: pass_at_k(len(s), int(s.sum()), k)).mean())
        metrics[f"cons@{k}"] = float(per_problem.apply(
            lambda g: majority_vote(group_equivalent(list(g["extracted"])), list(g["correct"].astype(bool))),
            include_groups=False).mean())
    return metrics


def evaluate_benchmark(model, tokenizer, problems: pd.DataFrame, *, k: int, params: SamplingParams,
                       template: str = "r1_eval", batch_size: int = 16,
                       progress: Callable[[int, int, float], None] | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """Sample ``k`` completions for every problem (all in one batched pass) and score them.

    Returns:
        ``(metrics, samples)``: metrics as in :func:`score` (unprefixed); one sample row per
        (problem, sample index) with ``extracted``, ``correct``, ``num_tokens``, ``truncated``,
        ``completion``.
    """
    rows = problems.reset_index(drop=True)
    prompts = [render(tokenizer, p, template) for p in rows["problem"] for _ in range(k)]
    outs = generate(model, tokenizer, prompts, params, batch_size=batch_size, on_batch=progress)
    golds = [str(a) for a in rows["answer"] for _ in range(k)]
    verdicts = verify_batch([o.text for o in outs], golds)
    samples = pd.DataFrame({
        "id": [i for i in rows["id"] for _ in range(k)],
        "sample": [j for _ in range(len(rows)) for j in range(k)],
        "subject": [s for s in rows.get("subject", [""] * len(rows)) for _ in range(k)],
        "level": [int(v or 0) for v in rows.get("level", [0] * len(rows)) for _ in range(k)],
        "answer": golds,
        "extracted": [v.answer for v in verdicts],
        "correct": [v.correct for v in verdicts],
        "verifier_status": [v.status for v in verdicts],
        "num_tokens": [o.num_tokens for o in outs],
        "truncated": [o.truncated for o in outs],
        "completion": [o.text for o in outs],
    })
    return score(samples, k), samples
