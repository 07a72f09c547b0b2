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
- ``<bench>/subject/<subject>/pass@1`` and ``<bench>/level/<n>/pass@1`` where the benchmark has
  subjects and levels (MATH-500).
- ``<bench>/underthinking``, ``<bench>/underthinking_weighted`` (Wang et al. 2025, eq. 1 and 3),
  ``<bench>/outcome_efficiency`` (Chen et al. 2024, eq. 1), ``<bench>/mean_solution_rounds`` and
  ``<bench>/mean_thoughts``: how the chains of thought spend their tokens (:mod:`r1core.thinking`,
  which names how it departs from the papers).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd

from r1core import thinking
from r1core.generation import SamplingParams
from r1core.verify import checks_of, group_equivalent, verify_batch

logger = logging.getLogger(__name__)


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

    Samples whose gold answer could not be parsed (``correct`` is None) are left out. Rows with
    :data:`r1core.thinking.COLUMNS` also give the under/overthinking metrics
    (:func:`r1core.thinking.metrics`).
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
        # cons@k of code is NaN (not logged): programs that differ in text vote apart, so the vote is not R1's.
        metrics[f"cons@{k}"] = float(per_problem.apply(
            lambda g: math.nan if _answer_type(g) == "code" else majority_vote(
                group_equivalent(list(g["extracted"]), answer_type=_answer_type(g)), list(g["correct"].astype(bool))),
            include_groups=False).mean())
    metrics.update(thinking.metrics(valid))
    return metrics


def _answer_type(group: pd.DataFrame) -> str:
    """The answer type of one problem's samples (``math`` for samples written before types existed)."""
    value = group["answer_type"].iloc[0] if "answer_type" in group else None
    return value if isinstance(value, str) and value else "math"


def breakdown(samples: pd.DataFrame) -> dict[str, float]:
    """pass@1 per subject and per difficulty level (``subject/<s>/pass@1``, ``level/<n>/pass@1``)
    for the columns the samples have; empty subjects and level 0 (unknown) are left out."""
    out: dict[str, float] = {}
    valid = samples[samples["correct"].notna()]
    for column in ("subject", "level"):
        if column not in valid:
            continue
        for value, group in valid.groupby(column):
            if value in ("", 0, None):
                continue
            out[f"{column}/{value}/pass@1"] = float(group.groupby("id")["correct"].mean().astype(float).mean())
    return out


def evaluate_benchmark(sampler, problems: pd.DataFrame, *, k: int, params: SamplingParams,
                       results_path: Path | None = None, generate_fn: Callable | None = None,
                       thinking_metrics: bool = True) -> tuple[dict[str, float], pd.DataFrame]:
    """Sample ``k`` completions for every problem (in large batches across problems) and score them.

    Args:
        sampler: a :class:`r1core.sampling.LocalSampler`: the model, how problems are posed
            (template, prefill: as GRPO's prompts do) and ``stop_strings`` (a policy trained to stop
            at ``</answer>`` otherwise writes on after it, and the last ``<answer>`` block is read).
        problems: rows with ``id``, ``problem``, ``answer`` (and ``answer_type``/``metadata`` where
            answers are not math, see :mod:`r1core.verify`).
        k: samples per problem.
        params: sampling settings (R1: temperature 0.6, top-p 0.95).
        results_path: a resumable :class:`r1core.samplelog.SampleLog` (JSONL): every chunk of
            ``4 * sampler.batch_size`` samples is appended as soon as it is scored, and chunks
            already there are not generated again; a crashed or retried evaluation loses at most one
            chunk (a line cut by a kill is dropped), and on a deterministic sampler (the project's
            engine) resumes to exactly the samples and metrics of an uninterrupted run: each chunk
            is a fixed slice of the (problem, sample) pairs, seeded by its offset, sampled whole. The caller keys the file by model, benchmark
            and settings. A second evaluation of the same file (another process) waits for the
            first to finish and reuses its samples, rather than both appending.
        generate_fn: ``(prompts, params) -> completions`` replacing ``sampler.complete`` (e.g. a
            :func:`functools.partial` of :func:`r1core.budget.budget_forced_generate`).
        thinking_metrics: also split each sample into thoughts and solution rounds and verify
            each (:func:`r1core.thinking.analyse`, one verifier call per chunk), for the
            under/overthinking metrics; tokens are counted by ``sampler.count_tokens``.

    Returns:
        ``(metrics, samples)``: metrics as in :func:`score` plus :func:`breakdown` (unprefixed);
        one sample row per (problem, sample index) with ``extracted``, ``correct``,
        ``num_tokens``, ``truncated``, ``completion`` (and :data:`r1core.thinking.COLUMNS`).
    """
    if results_path is None:
        return _evaluate(sampler, problems, k, params, None, generate_fn, thinking_metrics)
    from filelock import FileLock, Timeout

    lock = FileLock(f"{results_path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:  # the same evaluation in another process (two `r1 eval` of one model): wait, then reuse
        logger.warning("%s is being written by another evaluation of the same model and settings; waiting for it "
                       "to finish, then reusing its samples", results_path)
        lock.acquire()
    try:
        return _evaluate(sampler, problems, k, params, results_path, generate_fn, thinking_metrics)
    finally:
        lock.release()


def _evaluate(sampler, problems: pd.DataFrame, k: int, params: SamplingParams, results_path: Path | None,
              generate_fn: Callable | None, thinking_metrics: bool = True) -> tuple[dict[str, float], pd.DataFrame]:
    from r1core.samplelog import SampleLog

    rows = problems.reset_index(drop=True)
    log = SampleLog(results_path) if results_path is not None else None
    done: dict[tuple[str, int], dict] = {}
    for rec in log.read() if log is not None else []:
        done[(rec["id"], rec["sample"])] = rec
    ids = [str(i) for i in rows["id"]]
    pairs = [(i, j) for i in range(len(rows)) for j in range(k)]
    chunk = max(sampler.batch_size * 4, 1)
    checks = checks_of(rows)  # per problem: how its answer is checked
    complete = generate_fn or sampler.complete
    # Chunks are fixed slices of every (problem, sample) pair, each seeded by its offset, and a chunk
    # is sampled whole: a resumed evaluation samples what an uninterrupted one would have.
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        if all((ids[i], j) in done for i, j in part):
            continue
        prompts = [sampler.render(rows.at[i, "problem"]) for i, _ in part]
        outs = complete(prompts, replace(params, seed=params.seed + start))
        golds = [str(rows.at[i, "answer"]) for i, _ in part]
        answer_types = [checks["answer_types"][i] for i, _ in part]
        metadata = [checks["metadata"][i] for i, _ in part]
        verdicts = verify_batch([o.text for o in outs], golds, answer_types=answer_types, metadata=metadata)
        stats = (thinking.analyse([o.text for o in outs], golds, correct=[v.correct for v in verdicts],
                                  count_tokens=sampler.count_tokens, answer_types=answer_types, metadata=metadata)
                 if thinking_metrics else [None] * len(outs))
        new = [{**_sample_record(rows, i, j, o, v, checks["answer_types"][i]), **thinking.record(st)}
               for (i, j), o, v, st in zip(part, outs, verdicts, stats)]
        for rec in new:
            done[(rec["id"], rec["sample"])] = rec
        if log is not None:
            log.append(new)
    samples = pd.DataFrame([done[(ids[i], j)] for i in range(len(rows)) for j in range(k)])
    return {**score(samples, k), **breakdown(samples)}, samples


def _sample_record(rows: pd.DataFrame, i: int, j: int, out, verdict, answer_type: str) -> dict:
    return {"id": str(rows.at[i, "id"]), "sample": j,
            "subject": str(rows.at[i, "subject"]) if "subject" in rows else "",
            "level": int(rows.at[i, "level"] or 0) if "level" in rows else 0,
            "answer": str(rows.at[i, "answer"]), "extracted": verdict.answer, "correct": verdict.correct,
            "answer_type": answer_type, "score": verdict.score,
            "verifier_status": verdict.status, "num_tokens": out.num_tokens, "truncated": out.truncated,
            "completion": out.text}
