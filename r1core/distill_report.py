"""The distillation report: a student beside its teacher and its base (DeepSeek-R1, arXiv:2501.12948,
Table 5 and section 4), and a check that the student's SFT traces do not contain benchmark text.

The three models are evaluated by the evaluate stage's own code with one protocol on the same
problems (:mod:`r1core.stages.compare`); this module turns their metrics into the report:

- **pass@1 with its standard error** and the **mean completion length** (tokens) per benchmark
  and model, as :func:`r1core.evaluation.score` computes them;
- the **gain recovered**, ``(student - base) / (teacher - base)`` of pass@1: the share of the
  teacher's improvement over the base that distillation carried into the student (1: all of it;
  0: none; negative: the student lost ground; above 1: it beat the teacher). NaN when the teacher
  and the base score the same (there is no gain to recover) or a score is missing;
- a **contamination check** by n-gram overlap (:func:`ngram_overlap`), following GPT-3 (Brown et al.
  2020, arXiv:2005.14165, section 4 and appendix C): a benchmark problem is *dirty* when one of its
  13-grams of words appears in a trace, or, for a problem shorter than 13 words, when the whole
  problem does. Words are lower-cased letters and digits, punctuation and LaTeX markup dropped
  (:func:`r1core.curation.normalise`, the curate stage's decontamination words). A benchmark with
  a dirty problem is *flagged*. The check reads every problem of each benchmark (not only the
  evaluated ``limit``) and the whole text of every trace (prompt and completion). Where it departs
  from GPT-3: GPT-3 checked benchmarks against its pre-training corpus and set N per benchmark
  from the 5th-percentile example length, clamped to [8, 13]; here the corpus is the SFT set and N
  is one setting (``compare.ngram``). Whole-problem matching flags a very short problem (a few
  words) wherever its words appear in order: the report lists each match so a person can judge.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pandas as pd

from r1core.curation import normalise

#: The rows of the report, in order.
ROLES = ("student", "teacher", "base")
#: GPT-3's n-gram size (Brown et al. 2020, section 4).
DEFAULT_NGRAM = 13


def gain_recovered(student: float, teacher: float, base: float) -> float:
    """``(student - base) / (teacher - base)``: the share of the teacher's gain over the base that
    the student recovered; NaN when ``teacher == base`` or a score is NaN.

    >>> gain_recovered(0.5, 0.8, 0.2), gain_recovered(0.2, 0.8, 0.2), gain_recovered(0.3, 0.4, 0.4)
    (0.5, 0.0, nan)
    """
    if any(math.isnan(x) for x in (student, teacher, base)) or teacher == base:
        return math.nan
    return (student - base) / (teacher - base)


def benchmarks_of(metrics: Mapping[str, float]) -> list[str]:
    """The benchmarks an evaluation's metrics cover (``math500/pass@1`` -> ``math500``), in order."""
    return list(dict.fromkeys(k.split("/")[0] for k in metrics if k.count("/") == 1 and k.endswith("/pass@1")))


def report_table(metrics: Mapping[str, Mapping[str, float]], models: Mapping[str, str],
                 benchmarks: list[str]) -> pd.DataFrame:
    """The side-by-side table: one row per model (student, teacher, base).

    Args:
        metrics: role -> that model's evaluation metrics (``<bench>/pass@1``, ``<bench>/pass@1_stderr``,
            ``<bench>/mean_completion_tokens``, as the evaluate stage returns them).
        models: role -> the model's reference (URI).
        benchmarks: the benchmarks, in column order.

    Returns:
        columns ``model``, ``reference``, then per benchmark ``<bench>/pass@1``,
        ``<bench>/pass@1_stderr``, ``<bench>/mean_completion_tokens`` (tokens) and
        ``<bench>/gain_recovered`` (:func:`gain_recovered` of the row's pass@1: 1 for the teacher,
        0 for the base, the student's share for the student; NaN where undefined).

    Raises:
        KeyError: a role of :data:`ROLES` missing from ``metrics`` or ``models``.
    """
    def get(role: str, key: str) -> float:
        return float(metrics[role].get(key, math.nan))

    rows = []
    for role in ROLES:
        row: dict[str, object] = {"model": role, "reference": models[role]}
        for bench in benchmarks:
            p1 = f"{bench}/pass@1"
            row[p1] = get(role, p1)
            row[f"{bench}/pass@1_stderr"] = get(role, f"{bench}/pass@1_stderr")
            row[f"{bench}/mean_completion_tokens"] = get(role, f"{bench}/mean_completion_tokens")
            row[f"{bench}/gain_recovered"] = gain_recovered(get(role, p1), get("teacher", p1), get("base", p1))
        rows.append(row)
    return pd.DataFrame(rows)


def trace_texts(traces: pd.DataFrame) -> list[str]:
    """The whole text of each trace: the contents of its ``prompt`` and ``completion`` messages (or
    plain strings), and its ``problem``, ``solution`` and ``response`` columns where present."""
    def text(value) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            return str(value.get("content") or "")
        if isinstance(value, (list, tuple)):
            return "\n".join(text(v) for v in value)
        return ""

    columns = [c for c in ("prompt", "completion", "problem", "solution", "response") if c in traces]
    return ["\n".join(text(row[c]) for c in columns) for _, row in traces[columns].iterrows()]


@dataclass
class Overlap:
    """The n-gram overlap of a trace set with one benchmark (:func:`ngram_overlap`).

    Attributes:
        benchmark: its name.
        n: the n-gram size, in words.
        num_problems: the benchmark's problems checked.
        num_traces: the traces checked.
        dirty: ids of the benchmark problems with text in a trace (benchmark order).
        contaminated_traces: indices of the traces that contain benchmark text.
        examples: up to 5 ``(problem id, trace index, matched words)``.
    """

    benchmark: str
    n: int
    num_problems: int
    num_traces: int
    dirty: list[str] = field(default_factory=list)
    contaminated_traces: list[int] = field(default_factory=list)
    examples: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Whether any benchmark problem appears in the traces."""
        return bool(self.dirty)

    @property
    def dirty_fraction(self) -> float:
        """Dirty problems / problems checked (0 for an empty benchmark)."""
        return len(self.dirty) / self.num_problems if self.num_problems else 0.0

    def metrics(self) -> dict[str, float]:
        """``contamination/<bench>/...``: ``flagged`` (0/1), ``dirty_problems``, ``dirty_fraction``,
        ``contaminated_traces``."""
        p = f"contamination/{self.benchmark}"
        return {f"{p}/flagged": float(self.flagged), f"{p}/dirty_problems": float(len(self.dirty)),
                f"{p}/dirty_fraction": self.dirty_fraction, f"{p}/contaminated_traces": float(len(self.contaminated_traces))}


def _grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return set(zip(*(words[i:] for i in range(n)))) if len(words) >= n else set()


def ngram_overlap(traces: Iterable[str], problems: Mapping[str, str], n: int = DEFAULT_NGRAM,
                  benchmark: str = "") -> Overlap:
    """Which benchmark problems appear in the traces, by n-gram overlap of words (module docstring).

    Args:
        traces: the trace texts (:func:`trace_texts`).
        problems: problem id -> problem text, for one benchmark.
        n: n-gram size in words (GPT-3: 13); a problem shorter than ``n`` words is matched whole.
        benchmark: the benchmark's name (for the result).

    Cost: one pass over each trace's words per distinct gram length (``n``, and each shorter
    problem's length), with set intersections.

    >>> o = ngram_overlap(["Solve: what is the sum of two and three? It is 5."],
    ...                   {"p1": "What is the sum of two and three?", "p2": "Name a prime above 10."}, n=13)
    >>> o.dirty, o.contaminated_traces, o.flagged
    (['p1'], [0], True)
    """
    index: dict[int, dict[tuple[str, ...], list[str]]] = defaultdict(lambda: defaultdict(list))
    for pid, text in problems.items():
        words = normalise(text)
        grams = _grams(words, n) if len(words) >= n else ({tuple(words)} if words else set())
        for g in grams:
            index[len(g)][g].append(pid)
    dirty: set[str] = set()
    contaminated: list[int] = []
    examples: list[tuple[str, int, str]] = []
    num_traces = 0
    for t, text in enumerate(traces):
        num_traces += 1
        words = normalise(text)
        hit = False
        for length, grams in index.items():
            for g in _grams(words, length) & grams.keys():
                hit = True
                for pid in grams[g]:
                    if pid not in dirty and len(examples) < 5:
                        examples.append((pid, t, " ".join(g)))
                    dirty.add(pid)
        if hit:
            contaminated.append(t)
    order = [pid for pid in problems if pid in dirty]
    return Overlap(benchmark, n, len(problems), num_traces, order, contaminated, examples)


def _cell(value: float, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def markdown(table: pd.DataFrame, benchmarks: list[str], overlaps: Mapping[str, Overlap] | None,
             protocol: str, traces_uri: str | None) -> str:
    """The report as markdown: the side-by-side table (pass@1 ± standard error, mean completion
    tokens, gain recovered), then the contamination check (or why it did not run)."""
    head = ["model", "reference"] + [f"{b} {what}" for b in benchmarks for what in ("pass@1", "tokens", "gain recovered")]
    lines = ["# Distillation report", "", f"Protocol: {protocol}; the same problems for every model.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [str(row["model"]), f"`{row['reference']}`"]
        for b in benchmarks:
            cells += [f"{_cell(row[f'{b}/pass@1'], '.3f')} ± {_cell(row[f'{b}/pass@1_stderr'], '.3f')}",
                      _cell(row[f"{b}/mean_completion_tokens"], ".0f"), _cell(row[f"{b}/gain_recovered"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Gain recovered: (student - base) / (teacher - base) of pass@1 (DeepSeek-R1 Table 5 compares the "
              "three); n/a where the teacher and the base score the same.", ""]
    if overlaps is None:
        lines += ["## Contamination", "", "Not checked: the student's SFT traces are unknown (it was not trained by "
                  "this project's sft stage); name them with `compare.traces`."]
        return "\n".join(lines)
    n = next(iter(overlaps.values())).n if overlaps else DEFAULT_NGRAM
    lines += [f"## Contamination: {n}-gram overlap of the SFT traces with each benchmark", "",
              f"Traces `{traces_uri}`. A benchmark problem is dirty when one of its {n}-grams of words (or the whole "
              f"problem, when shorter) appears in a trace (GPT-3, Brown et al. 2020, section 4).", "",
              "| benchmark | problems | dirty problems | traces with benchmark text | flagged |", "|---|---|---|---|---|"]
    for bench, o in overlaps.items():
        lines.append(f"| {bench} | {o.num_problems} | {len(o.dirty)} ({o.dirty_fraction:.1%}) | "
                     f"{len(o.contaminated_traces)} of {o.num_traces} | {'**yes**' if o.flagged else 'no'} |")
    examples = [(bench, e) for bench, o in overlaps.items() for e in o.examples]
    if examples:
        lines += ["", "Matches (benchmark, problem, trace, words):", ""]
        lines += [f"- {bench} `{pid}`, trace {t}: \"{words}\"" for bench, (pid, t, words) in examples]
    return "\n".join(lines)


def figure(table: pd.DataFrame, benchmarks: list[str]):
    """Two panels side by side: pass@1 with standard-error bars, and mean completion tokens, per
    benchmark and model. Returns the matplotlib figure (the caller logs and closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_acc, ax_len) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(benchmarks))
    width = 0.8 / max(len(table), 1)
    for i, (_, row) in enumerate(table.iterrows()):
        offset = x + (i - (len(table) - 1) / 2) * width
        ax_acc.bar(offset, [row[f"{b}/pass@1"] for b in benchmarks], width,
                   yerr=[row[f"{b}/pass@1_stderr"] for b in benchmarks], capsize=3, label=row["model"])
        ax_len.bar(offset, [row[f"{b}/mean_completion_tokens"] for b in benchmarks], width, label=row["model"])
    for ax, label in ((ax_acc, "pass@1 (± standard error)"), (ax_len, "mean completion tokens")):
        ax.set_xticks(x, benchmarks)
        ax.set_ylabel(label)
        ax.legend()
    ax_acc.set_ylim(bottom=0)
    fig.suptitle("Distillation: student, teacher and base, one protocol")
    fig.tight_layout()
    return fig
