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
    verifier's ``gold_unparsable``)."""
    answers = [str(a) for a in rows["answer"]]
    verdicts = verify_batch([f"<answer>{a}</answer>" for a in answers], answers, **checks_of(rows))
    return [v.status != "gold_unparsable" for v in verdicts]


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
