"""The one verifier: extracts a completion's final answer and checks it against the gold answer.

Every "is this answer right" in the project goes through :func:`verify_batch` (GRPO's accuracy
reward, rejection sampling, evaluation, cons@k's vote), so they can never disagree.

Each row says how its answer is checked (its ``answer_type``, :data:`ANSWER_TYPES`):

- ``math`` (the default): math-verify. Extraction: the text inside the last
  ``<answer>...</answer>`` when present (read as if boxed); else math-verify's own extraction on
  the whole completion (the last ``\\boxed{...}``, then the last LaTeX or plain expression).
  Comparison: math-verify's ``verify``. A gold that is a word or a sentence (``no``,
  ``\\text{Evelyn}``, ``forty three``) is compared as a ``string`` instead: math-verify would
  parse it as a product of symbols, so anagrams would verify.
- ``reasoning_gym``: the task's own scorer from the ``reasoning-gym`` package
  (``score_answer(answer, entry)``; the row's ``metadata`` is the generator's entry as JSON, its
  ``metadata.source_dataset`` names the task). The answer given to it is the last ``<answer>``
  block, else the last ``\\boxed{}``, else the last expression math-verify finds. Such scorers
  may give partial credit: :attr:`Verdict.score` is the scorer's value and ``correct`` means a
  full score.
- ``string``: normalised exact match (case, surrounding whitespace and punctuation, ``\\text{}``
  wrappers and ``$`` are ignored) of the extracted answer, extracted as for ``reasoning_gym``.
- ``multiple_choice``: the option letter (``C``, ``(C)``, ``\\text{(C)}``, ``C)``...) must match.
- ``code``: the last fenced Python block (of the last ``<answer>`` block when there is one) runs
  against the row's tests (``metadata``: ``{"tests": [...]}`` asserts, or HumanEval's ``check`` function
  with ``entry_point``) in a sandboxed subprocess, see :mod:`r1core.code_exec`. :attr:`Verdict.score`
  is the fraction of tests passed (binary for a ``check`` function); ``correct`` means all. The
  sandbox's wall-clock limit (6 s) fits in this module's per-sample share of a chunk's deadline.

Bounded in time on any thread: math-verify's timeouts use ``signal.alarm``, which works only on
a process's main thread, and Prefect runs submitted tasks on pool threads. So parsing and
comparison run in worker processes (on their own main thread, where math-verify's timeouts
work), and the caller also waits with a deadline; the samples of a chunk that misses it are
retried one by one on a fresh pool, and a sample that misses it again scores as incorrect with
status ``"timeout"``. Workers that cannot start at all raise :class:`VerifierUnavailable` with the
fix, rather than scoring everything 0.

Hostile completions (a policy's degenerate loops, eval bait): every step before math-verify is a
linear scan (``rfind`` for the ``<answer>`` block, one pass for the last ``\\boxed{}`` and for
nesting depth; the regexes here cannot backtrack), completions are cut to their last
:data:`MAX_CHARS` characters before anything parses them, an answer nested deeper than
:data:`MAX_DEPTH` is not parsed, and one whose value would exceed :data:`MAX_DIGITS` digits (a
power tower, a huge factorial) or whose tree exceeds :data:`MAX_NODES` nodes is compared as text
instead of evaluated. Nothing is executed:
math-verify parses, it never calls ``eval`` on the text. What remains slow is inside math-verify
(its display-math regexes over thousands of unclosed ``\\[``, sympy's eager ``\\binom``/``\\Gamma``
of huge numbers) and ends at its ``TIMEOUT_S``. ``tests/test_hostile.py`` measures all of this.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import re
import threading
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

#: Seconds math-verify may spend parsing or comparing one sample (inside the worker).
TIMEOUT_S = 5
#: Extra seconds the caller waits beyond the workers' own timeouts before declaring a hang.
_GRACE_S = 10.0
#: Completions longer than this (characters) are cut to their last part before any regex or
#: parser sees them (the answer is at the end); so are answers and golds in the text checks.
MAX_CHARS = 20_000
#: An ``<answer>`` block or last ``\\boxed{}`` nested deeper than this (``{``, ``(``, ``[``) is not
#: parsed: no real answer is (MATH-500's golds nest 2 deep, its worked solutions 7), and sympy
#: takes the whole timeout over one: ``\\frac`` nested 16 deep, parentheses 30. Scored ``no_answer``.
MAX_DEPTH = 12
#: An ``<answer>`` block longer than this (characters) is prose, not an answer: it is not read as
#: if boxed (math-verify's LaTeX parser takes ~1 ms a character) but searched as is.
MAX_BOXED_CHARS = 1_000
#: A parsed answer whose evaluation would build a number of more than this many decimal digits
#: (a power tower such as ``10^{10^{10}}``, ``(10^9)!``) is compared as text, not evaluated.
MAX_DIGITS = 10_000
#: A parsed answer of more than this many sympy nodes (a set of thousands of ``\\boxed{}``
#: answers) is compared as text: sympy takes seconds over one.
MAX_NODES = 1_000

Status = Literal["ok", "no_answer", "gold_unparsable", "timeout", "error"]
#: How a row's answer is checked (see the module docstring).
ANSWER_TYPES = ("math", "reasoning_gym", "string", "multiple_choice", "code")


@dataclass(frozen=True)
class Verdict:
    """The verifier's decision on one completion.

    Attributes:
        correct: ``True``/``False``; ``None`` when the gold answer cannot be parsed (the sample
            should be skipped, not scored 0).
        answer: the extracted final answer as text (``None`` when nothing was extracted); equal
            answers by math-verify compare equal as :attr:`key`.
        status: ``ok``, ``no_answer`` (nothing extracted), ``gold_unparsable``, ``timeout`` or ``error``.
        score: the reward the check gives, 0 to 1: ``1.0``/``0.0`` for math, strings and multiple
            choice, the task scorer's value for ``reasoning_gym`` (partial credit possible);
            ``None`` when ``correct`` is ``None``.
    """

    correct: bool | None
    answer: str | None
    status: Status
    score: float | None = None

    def __post_init__(self):
        if self.score is None and self.correct is not None:
            object.__setattr__(self, "score", float(self.correct))


def _answer_block(completion: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` block, or ``None`` when there is none.

    Found with two ``rfind`` calls (linear time): a regex over many unclosed ``<answer>`` tags
    takes quadratic time, outside what math-verify's timeout can interrupt."""
    end = completion.rfind("</answer>")
    if end < 0:
        return None
    start = completion.rfind("<answer>", 0, end)
    return None if start < 0 else completion[start + len("<answer>") : end]


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), or ``None`` (none, or the last
    one is never closed). One pass from the last ``\\boxed{`` (linear time)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


def _nesting_depth(text: str) -> int:
    """How deep ``{``, ``(`` and ``[`` nest in ``text`` (a closer without an opener is ignored); one pass."""
    depth = deepest = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]" and depth:
            depth -= 1
    return deepest


_GROWTH = frozenset({"factorial", "factorial2", "subfactorial", "gamma", "RisingFactorial", "FallingFactorial",
                     "binomial", "fibonacci", "lucas", "bell", "catalan", "primorial"})


def _cost(expr) -> tuple[float, float]:
    """``(nodes, digits)`` of a sympy expression, matrix or set: how many nodes its tree has
    (shared subtrees counted each time they occur), and an upper bound on the decimal digits of
    the largest number evaluating it can build (a power: its exponent times its base's digits; a
    factorial-like function of ``n``: about ``n * log10(n)``; a symbol counts as one digit;
    ``math.inf`` for towers beyond floats). One pass over the tree's distinct nodes."""
    import math

    from sympy import Add, Float, Mul, Pow, Rational
    from sympy.matrices import MatrixBase

    memo: dict[int, tuple[float, float]] = {}
    stack = [(expr, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in memo:
            continue
        children = list(node) if isinstance(node, MatrixBase) else list(getattr(node, "args", ()))
        if children and not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in memo)
            continue
        kids = [memo[id(c)][1] for c in children]
        if isinstance(node, Rational):
            value = math.log10(max(abs(node.p), node.q, 1))
        elif isinstance(node, Float):
            _, _, exp, bits = node._mpf_
            value = max(exp + bits, 0) * math.log10(2)
        elif isinstance(node, Pow):
            base, power = kids
            value = math.inf if power > 300 else 10**power * max(base, 1)
        elif isinstance(node, Mul):
            value = sum(kids)
        elif isinstance(node, Add):
            value = max(kids) + 0.31
        elif type(node).__name__ in _GROWTH:
            n = max(kids, default=1)
            value = math.inf if n > 300 else 10**n * max(n, 1)
        else:
            value = max(kids, default=1.0)
        memo[id(node)] = (1 + sum(memo[id(c)][0] for c in children), value)
    return memo[id(expr)]


def _evaluable(parsed: list) -> list:
    """math-verify's parse result without the sympy objects too large to compare: over
    :data:`MAX_NODES` nodes or :data:`MAX_DIGITS` digits. What is left (the answer's text) is
    compared as text."""
    from sympy import Basic
    from sympy.matrices import MatrixBase

    def too_large(p) -> bool:
        if not isinstance(p, (Basic, MatrixBase)):
            return False
        try:
            nodes, digits = _cost(p)
        except Exception:  # an object the estimate does not know: math-verify's own timeout bounds it
            return False
        return nodes > MAX_NODES or digits > MAX_DIGITS

    return [p for p in parsed if not too_large(p)]


# Linear time on any input: no nested quantifier can match one character two ways (\s* then \{,
# [^{}]* then \}; in _WORDS_ONLY separators and letters are disjoint classes), and each sees at most
# MAX_CHARS characters (tests/test_hostile.py times them on 1 MB).
_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_WORDS_ONLY = re.compile(r"^[^\W\d_]{2,}(?:[\s'’,-]+[^\W\d_]+)*[.!]?$")
_CHOICE = re.compile(r"^\(?([a-z])\)?(?:[.:)]|\s|$)")


def normalise_text_answer(text: str) -> str:
    """A text answer for exact match: ``\\text{}``-like wrappers and ``$`` removed, case-folded,
    whitespace collapsed, surrounding quotes and final punctuation dropped. Reads at most the last
    :data:`MAX_CHARS` characters.

    >>> normalise_text_answer("  \\text{Evelyn}. ")
    'evelyn'
    """
    text = _TEXT_MACRO.sub(r"\1", str(text)[-MAX_CHARS:]).replace("$", "")
    text = " ".join(text.casefold().split())
    return text.strip(" \"'`*").rstrip(".!").strip()


def is_text_gold(gold: str) -> bool:
    """Whether a math gold answer is a word or sentence (``no``, ``\\text{Evelyn}``, ``forty three``),
    which math-verify would misread as a product of symbols; such golds are matched as strings."""
    text = _TEXT_MACRO.sub(r"\1", gold[:MAX_CHARS]).replace("$", "").strip()
    return "\\" not in text and bool(_WORDS_ONLY.match(text))


def _choice_letter(text: str) -> str | None:
    m = _CHOICE.match(normalise_text_answer(text))
    return m.group(1) if m else None


def final_answer_text(completion: str) -> str | None:
    """The final answer as text, for the non-math checks: the last ``<answer>`` block, else the
    last ``\\boxed{}``, else the last expression math-verify's extraction finds; ``None`` if none."""
    completion = completion[-MAX_CHARS:]
    for found in (_answer_block(completion), _last_boxed(completion)):
        if found is not None and found.strip():
            return found.strip()
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    pred = parse(completion, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=TIMEOUT_S)
    return str(pred[-1]).strip() if pred else None


def extract_answer_span(completion: str) -> str:
    """The part of a completion the answer is read from: the last ``<answer>`` block's content,
    else the whole completion (math-verify then finds the last ``\\boxed{}`` or expression)."""
    block = _answer_block(completion)
    return (completion if block is None else block)[-MAX_CHARS:]


def _parse_boxed_first(text: str, configs):
    """Parse ``text`` as if it were boxed (gold answers, ``<answer>`` contents up to
    :data:`MAX_BOXED_CHARS` characters), then as is."""
    from math_verify import parse

    text = text.strip()
    if len(text) <= MAX_BOXED_CHARS and "\\boxed" not in text and "$" not in text.replace("\\$", ""):
        parsed = parse(f"\\boxed{{{text}}}", extraction_config=configs, parsing_timeout=TIMEOUT_S)
        if parsed:
            return parsed
    return parse(text, extraction_config=configs, parsing_timeout=TIMEOUT_S)


def _parse_gold(gold: str):
    """math-verify's parse of a gold answer (read as if boxed); ``[]`` when it nests deeper than
    :data:`MAX_DEPTH` (cons@k passes extracted answers as golds)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    gold = gold[:MAX_CHARS]
    if _nesting_depth(gold) > MAX_DEPTH:
        return []
    return _evaluable(_parse_boxed_first(gold, [LatexExtractionConfig(), ExprExtractionConfig()]))


def _parse_prediction(completion: str):
    """math-verify's parse of a completion's final answer (see the module docstring); ``[]`` when
    what it would parse (the ``<answer>`` block, else the last ``\\boxed{}``, else the completion's
    last :data:`MAX_CHARS` characters) nests deeper than :data:`MAX_DEPTH`.
    Every step before math-verify is linear in the completion's length; math-verify sees at most
    :data:`MAX_CHARS` characters and its own timeouts bound it."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    block = _answer_block(completion)
    span = (completion if block is None else block)[-MAX_CHARS:]  # = extract_answer_span(completion)
    candidate = span if block is not None else (_last_boxed(span) or span)
    if _nesting_depth(candidate) > MAX_DEPTH:
        return []
    if block is not None:  # an <answer> block's content is read as if boxed
        return _evaluable(_parse_boxed_first(span, configs))
    return _evaluable(parse(span, extraction_config=configs, parsing_timeout=TIMEOUT_S))


_SCORERS: dict = {}


def _reasoning_gym_score(answer: str | None, metadata: str) -> float:
    """The reasoning-gym task's own ``score_answer`` for ``answer`` on the entry in ``metadata``."""
    import json

    entry = json.loads(metadata)
    task = entry["metadata"]["source_dataset"]
    if task not in _SCORERS:
        import reasoning_gym

        _SCORERS[task] = reasoning_gym.get_score_answer_fn(task)
    return float(_SCORERS[task](answer, entry))


def _verify_text(completion: str, gold: str, answer_type: str, metadata: str) -> tuple:
    """The ``reasoning_gym``, ``string`` and ``multiple_choice`` checks (and word golds of math)."""
    if answer_type == "reasoning_gym":
        if not metadata:
            return None, None, "gold_unparsable", None
    elif not normalise_text_answer(gold):
        return None, None, "gold_unparsable", None
    try:
        answer = final_answer_text(completion)
    except Exception:
        return False, None, "error", 0.0
    if answer is None:
        return False, None, "no_answer", 0.0
    if answer_type == "reasoning_gym":
        try:
            score = min(max(_reasoning_gym_score(answer, metadata), 0.0), 1.0)
        except Exception:
            return False, answer, "error", 0.0
        return score >= 1.0, answer, "ok", score
    if answer_type == "multiple_choice":
        letter = _choice_letter(gold)
        if letter is None:
            return None, None, "gold_unparsable", None
        ok = _choice_letter(answer) == letter
    else:
        ok = normalise_text_answer(answer) == normalise_text_answer(gold)
    return ok, answer, "ok", float(ok)


def _verify_one(completion: str, gold: str, answer_type: str = "math", metadata: str = "") -> tuple:
    """Runs in a worker process (main thread): math-verify's signal timeouts are active here.

    Returns the fields of a :class:`Verdict` as a tuple."""
    if answer_type == "code":  # run against the row's tests in a sandbox (the gold is not used)
        from r1core.code_exec import verify_code

        return verify_code(completion, metadata)
    from math_verify import verify

    if answer_type != "math" or is_text_gold(gold):
        return _verify_text(completion, gold, "string" if answer_type == "math" else answer_type, metadata)
    try:
        gold_parsed = _parse_gold(gold)
    except Exception:
        return None, None, "gold_unparsable"
    if not gold_parsed:
        return None, None, "gold_unparsable"
    try:
        pred = _parse_prediction(completion)
    except Exception:
        return False, None, "error"
    if not pred:
        return False, None, "no_answer"
    answer = str(pred[-1])
    try:
        ok = bool(verify(gold_parsed, pred, timeout_seconds=TIMEOUT_S))
    except Exception:
        return False, answer, "error"
    return ok, answer, "ok"


def _verify_chunk(items: list[tuple[str, str, str, str]]) -> list[tuple]:
    return [_verify_one(*item) for item in items]


def _worker_init() -> None:
    import math_verify  # noqa: F401  (import once per worker, ~1 s)
    import reasoning_gym  # noqa: F401  (~2 s: import it at start-up, not inside a sample's deadline)

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    parent = os.getppid()

    def exit_with_parent() -> None:  # a SIGKILLed parent would otherwise leave workers behind
        import time

        while os.getppid() == parent:
            time.sleep(2)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()


class _Pool:
    """A lazily started process pool, replaced when a worker hangs or dies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self.workers = max(1, min(int(os.environ.get("R1_VERIFY_WORKERS", "2")), os.cpu_count() or 1))

    def get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init
                )
            return self._pool

    def kill(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


_POOL = _Pool()
atexit.register(_POOL.close)


def verify_batch(completions: list[str], golds: list[str], *, answer_types: list[str] | None = None,
                 metadata: list[str] | None = None, chunk_size: int = 16) -> list[Verdict]:
    """Verify ``completions[i]`` against ``golds[i]`` for every ``i``, each by its ``answer_types[i]``.

    Safe from any thread; bounded in time: each chunk of ``chunk_size`` samples must finish
    within ``chunk_size * 2 * TIMEOUT_S + 10`` seconds of the wait starting (math-verify's own
    timeouts make that very loose). The samples of a chunk that missed it (or whose worker died)
    are verified again, each on its own, by a fresh pool, so one hostile sample never changes its
    neighbours' verdicts and a loaded machine's slow chunk is not scored wrong; what misses the
    deadline twice gets status ``timeout`` (scored incorrect) and is counted in a warning.

    Args:
        completions: model outputs (plain text).
        golds: gold answers (LaTeX or plain text), same length.
        answer_types: per sample, one of :data:`ANSWER_TYPES` (``None``, or an empty entry: ``math``).
        metadata: per sample, what the check needs beyond the gold (the reasoning-gym entry as
            JSON); ``None`` or ``""`` where nothing is needed. :func:`checks_of` reads both
            from data set rows.

    Returns:
        One :class:`Verdict` per completion, in order.

    Raises:
        ValueError: the lists differ in length, or an unknown answer type (before any work).
        VerifierUnavailable: the worker processes cannot start (the message names the cause and
            the fix); never a silent score of 0.
    """
    n = len(completions)
    answer_types = [t or "math" for t in answer_types] if answer_types is not None else ["math"] * n
    metadata = [m or "" for m in metadata] if metadata is not None else [""] * n
    if not len(golds) == len(answer_types) == len(metadata) == n:
        raise ValueError(f"{n} completions but {len(golds)} gold answers, {len(answer_types)} answer types and "
                         f"{len(metadata)} metadata entries; pass one gold per completion.")
    unknown = sorted(set(answer_types) - set(ANSWER_TYPES))
    if unknown:
        raise ValueError(f"Unknown answer type(s) {unknown}; use one of {list(ANSWER_TYPES)}.")
    if not completions:
        return []
    pairs = [(str(c), str(g), t, str(m)) for c, g, t, m in zip(completions, golds, answer_types, metadata)]
    results = _run(pairs, chunk_size)
    missed = [i for i, r in enumerate(results) if r is None]
    if missed:
        logger.warning("verifier: %d of %d samples missed the deadline or lost their worker; verifying each "
                       "again on a fresh worker", len(missed), n)
        for i, r in zip(missed, _run([pairs[i] for i in missed], 1)):
            results[i] = r
        timeouts = sum(r is None for r in results)
        if timeouts:
            logger.warning("verifier: %d of %d samples timed out twice: scored incorrect (status timeout, counted "
                           "as verifier timeouts)", timeouts, n)
    return [Verdict(*r) if r is not None else Verdict(False, None, "timeout") for r in results]


class VerifierUnavailable(RuntimeError):
    """The verifier's worker processes cannot start; scoring would otherwise be 0 everywhere."""


def _run(pairs: list[tuple[str, str, str, str]], chunk_size: int) -> list[tuple | None]:
    """Each pair's verdict fields, ``None`` where its chunk missed the deadline or its worker died.

    Raises:
        VerifierUnavailable: no chunk finished because workers could not be started, twice, and a
            fresh worker cannot run a trivial check either.
    """
    chunks = [pairs[i : i + chunk_size] for i in range(0, len(pairs), chunk_size)]
    for attempt in range(2):
        pool = _POOL.get()
        try:
            futures = [pool.submit(_verify_chunk, chunk) for chunk in chunks]
        except (BrokenProcessPool, RuntimeError):
            _POOL.kill(pool)
            continue
        rounds = -(-len(chunks) // _POOL.workers)
        done, _ = wait(futures, timeout=rounds * chunk_size * 2 * TIMEOUT_S + _GRACE_S)
        ok = [f in done and f.exception() is None for f in futures]
        broken = all(f in done and isinstance(f.exception(), BrokenProcessPool) for f in futures)
        if not all(ok):
            _POOL.kill(pool)
        if broken and attempt == 0:
            continue  # every chunk lost its worker: a fresh pool, once
        if broken and not _workers_start():
            raise VerifierUnavailable(_UNAVAILABLE)
        out: list[tuple | None] = []
        for chunk, fut, good in zip(chunks, futures, ok):
            out.extend(fut.result() if good else [None] * len(chunk))
        return out
    if not _workers_start():
        raise VerifierUnavailable(_UNAVAILABLE)
    return [None] * len(pairs)


_UNAVAILABLE = (
    "The verifier's worker processes could not start, so no answer can be checked (every score would be 0). "
    "They are started with multiprocessing's spawn method, which re-imports your program's main module: put "
    "the code that runs a stage under `if __name__ == \"__main__\":` in your script, and run programs from a "
    "file or with `python -c`, not from standard input. The workers' own error is printed above.")


def _probe() -> bool:
    return True


def _workers_start(timeout_s: float = 120.0) -> bool:
    """Whether a fresh worker pool can run a trivial task (start-up includes importing math-verify)."""
    pool = _POOL.get()
    try:
        return bool(pool.submit(_probe).result(timeout=timeout_s))
    except Exception:
        _POOL.kill(pool)
        return False


def verify_one(completion: str, gold: str, answer_type: str = "math", metadata: str = "") -> Verdict:
    """Verify a single completion (see :func:`verify_batch`)."""
    return verify_batch([completion], [gold], answer_types=[answer_type], metadata=[metadata])[0]


def checks_of(rows) -> dict[str, list[str]]:
    """``verify_batch``'s ``answer_types`` and ``metadata`` for data set rows (dicts, a
    DataFrame or pandas rows): their ``answer_type`` and ``metadata`` columns where present,
    else ``math`` and nothing.

    >>> checks_of([{"answer": "4"}])
    {'answer_types': ['math'], 'metadata': ['']}
    """
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        rows = rows.to_dict("records")

    def get(row, key):
        value = row.get(key) if hasattr(row, "get") else None
        return value if isinstance(value, str) else ""

    rows = list(rows)
    return {"answer_types": [get(r, "answer_type") or "math" for r in rows],
            "metadata": [get(r, "metadata") for r in rows]}


def group_equivalent(answers: list[str | None], *, max_distinct: int = 16,
                     answer_type: str = "math") -> list[int | None]:
    """Cluster extracted answers by verified equivalence (``0.5`` and ``\\frac{1}{2}`` share a cluster).

    For answer types other than ``math``, answers cluster by their normalised text
    (:func:`normalise_text_answer`; the option letter for ``multiple_choice``). For ``math``,
    distinct answer strings are compared pairwise with the verifier (each as gold against the
    other as an ``<answer>``), and equivalent pairs are merged (union-find). Only the
    ``max_distinct`` most frequent distinct strings are compared; rarer ones keep a cluster of
    their own string. Used for cons@k's majority vote (R1's cons@64).

    Returns:
        A cluster id per answer (the index of its cluster's first answer), ``None`` for ``None``.
    """
    from collections import Counter

    # Anything but a non-empty string is "no answer" (pandas turns None into NaN, and NaN != NaN).
    answers = [a if isinstance(a, str) and a.strip() else None for a in answers]
    if answer_type != "math":
        key = _choice_letter if answer_type == "multiple_choice" else normalise_text_answer
        keys = [None if a is None else (key(a) or normalise_text_answer(a)) for a in answers]
        first_of: dict[str, int] = {}
        return [None if k is None else first_of.setdefault(k, i) for i, k in enumerate(keys)]
    distinct = [a for a, _ in Counter(a for a in answers if a is not None).most_common()]
    compared = distinct[:max_distinct]
    parent = {a: a for a in distinct}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    pairs = [(a, b) for i, a in enumerate(compared) for b in compared[i + 1 :]]
    if pairs:
        verdicts = verify_batch([f"<answer>{b}</answer>" for _, b in pairs], [a for a, _ in pairs])
        for (a, b), v in zip(pairs, verdicts):
            if v.correct:
                parent[find(b)] = find(a)
    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, a in enumerate(answers):
        if a is None:
            out.append(None)
            continue
        root = find(a)
        first.setdefault(root, i)
        out.append(first[root])
    return out
