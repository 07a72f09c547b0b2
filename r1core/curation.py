"""Curation filters: decontamination by n-gram overlap, gold-answer quality, difficulty by pass
rate, and stratified selection.

- **Decontamination** (open-r1's convention): a training problem is removed when any of its word
  8-grams (lower-cased, punctuation dropped, whitespace collapsed) appears in a problem of an
  evaluation benchmark. Exact duplicates of a benchmark problem are a special case.
- **Answer quality**: rows whose gold answer math-verify cannot parse are dropped (they could
  never be rewarded) and counted.
- **Difficulty** (pass-rate band): a reference model samples k completions per problem; problems
  it always or never solves carry no GRPO signal and fall outside ``[min_pass_rate, max_pass_rate]``.
- **Diversity**: stratified selection across a column (subject, source, level): s1's quality ->
  difficulty -> diversity order (Muennighoff et al. 2025, section 2) ends with sampling evenly
  across strata.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

from r1core.verify import checks_of, verify_batch

_WORD = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> list[str]:
    """Lower-cased words (letters and digits), punctuation and LaTeX markup dropped."""
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """The set of word n-grams of ``text`` (a text shorter than n words gives one n-gram: itself)."""
    words = normalise(text)
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def contaminated(problems: Iterable[str], benchmark_problems: Iterable[str], n: int = 8) -> list[bool]:
    """For each problem: does any of its n-grams occur in a benchmark problem?"""
    index: set[tuple[str, ...]] = set()
    for p in benchmark_problems:
        index |= ngrams(p, n)
    return [bool(ngrams(p, n) & index) for p in problems]


def parsable_gold(rows: pd.DataFrame) -> list[bool]:
    """Whether the verifier can check each row's gold ``answer`` by its answer type (not the
    verifier's ``gold_unparsable``); ``True`` for a general row (``domain`` :data:`r1core.judge.GENERAL`),
    which has no gold to check."""
    from r1core.judge import GENERAL

    answers = [str(a) for a in rows["answer"]]
    verdicts = verify_batch([f"<answer>{a}</answer>" for a in answers], answers, **checks_of(rows))
    general = list(rows["domain"] == GENERAL) if "domain" in rows else [False] * len(rows)
    return [g or v.status != "gold_unparsable" for g, v in zip(general, verdicts)]


def stratified_sample(df: pd.DataFrame, column: str, n: int, seed: int) -> pd.DataFrame:
    """``n`` rows spread as evenly as possible across the values of ``column`` (round-robin over
    shuffled strata; a stratum with fewer rows gives all it has)."""
    if n >= len(df):
        return df.sample(frac=1.0, random_state=seed)
    groups = [g.sample(frac=1.0, random_state=seed) for _, g in df.groupby(column, sort=True)]
    picked, i = [], 0
    while len(picked) < n:
        progressed = False
        for g in groups:
            if i < len(g) and len(picked) < n:
                picked.append(g.index[i])
                progressed = True
        if not progressed:
            break
        i += 1
    return df.loc[picked]


def drop_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``df`` without problems that repeat another's words (:func:`normalise`, the same words as
    decontamination compares), and how many were removed."""
    norm = df["problem"].map(lambda p: " ".join(normalise(p)))
    keep = ~norm.duplicated()
    return df[keep], int((~keep).sum())


def filter_pool(df: pd.DataFrame, cfg, benchmarks: dict[str, list[str]]) -> tuple[pd.DataFrame, dict[str, float]]:
    """The curate stage's filters, in order: n-gram overlap with each benchmark in
    ``cfg.decontaminate`` (``benchmarks`` maps each spec to its problems), unparsable gold
    answers (``cfg.drop_unparsable_gold``), problems over ``cfg.max_problem_chars`` characters.

    Returns:
        ``(pool, metrics)``: metrics ``decontaminated/<spec>``, ``gold_unparsable_removed``,
        ``too_long_removed`` and ``pool_after_filters`` (counts of rows).
    """
    metrics: dict[str, float] = {}
    for spec in cfg.decontaminate:
        hit = contaminated(list(df["problem"]), benchmarks[spec], cfg.ngram)
        metrics[f"decontaminated/{spec.replace(':', '_')}"] = int(sum(hit))
        df = df[[not h for h in hit]]
    if cfg.drop_unparsable_gold:
        ok = parsable_gold(df)
        metrics["gold_unparsable_removed"] = int(len(ok) - sum(ok))
        df = df[ok]
    if cfg.max_problem_chars:
        too_long = df["problem"].str.len() > cfg.max_problem_chars
        metrics["too_long_removed"] = int(too_long.sum())
        df = df[~too_long]
    metrics["pool_after_filters"] = len(df)
    return df, metrics


def pass_rate_band(pool: pd.DataFrame, band, sampler, seed: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Difficulty by pass rate: ``band.candidates`` problems of ``pool`` (a seeded sample) are each
    sampled ``band.num_samples`` times by ``sampler`` (a :class:`r1core.sampling.Sampler` over the
    reference model) and verified; the problems whose pass rate lies in
    ``[band.min_pass_rate, band.max_pass_rate]`` are kept, with a ``pass_rate`` column.

    Returns:
        ``(kept, metrics)``: metrics ``pass_rate/candidates``, ``pass_rate/kept``, ``pass_rate/mean``.
    """
    from r1core.generation import SamplingParams

    k = band.num_samples
    cand = pool.sample(n=min(band.candidates, len(pool)), random_state=seed).reset_index(drop=True)
    outs = sampler.sample_all(list(cand["problem"]), k, SamplingParams(max_new_tokens=band.max_new_tokens, seed=seed))
    golds = [str(a) for a in cand["answer"] for _ in range(k)]
    checks = checks_of(cand.loc[cand.index.repeat(k)])
    correct = [bool(v.correct) for v in verify_batch([c.text for cs in outs for c in cs], golds, **checks)]
    cand["pass_rate"] = [sum(correct[i * k : (i + 1) * k]) / k for i in range(len(cand))]
    keep = cand[(cand["pass_rate"] >= band.min_pass_rate) & (cand["pass_rate"] <= band.max_pass_rate)]
    return keep, {"pass_rate/candidates": len(cand), "pass_rate/kept": len(keep),
                  "pass_rate/mean": float(cand["pass_rate"].mean())}


def select(pool: pd.DataFrame, num_problems: int, stratify_by: str | None, seed: int) -> pd.DataFrame:
    """``num_problems`` rows of ``pool`` (all when fewer): a seeded uniform sample, or
    :func:`stratified_sample` across ``stratify_by``; the index is reset."""
    if stratify_by:
        out = stratified_sample(pool, stratify_by, num_problems, seed)
    else:
        out = pool.sample(n=min(num_problems, len(pool)), random_state=seed)
    return out.reset_index(drop=True)
