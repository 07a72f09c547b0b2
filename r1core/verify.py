"""The one verifier: extracts a completion's final answer and checks it against the gold answer.

Every "is this answer right" in the project goes through :func:`verify_batch` (GRPO's accuracy
reward, rejection sampling, evaluation), so the three can never disagree.

Extraction (in order): the text inside the last ``<answer>...</answer>`` when present; else
math-verify's own extraction on the whole completion (which prefers the last ``\\boxed{...}``,
then the last LaTeX or plain expression). Comparison: math-verify's ``verify`` of the parsed
gold against the parsed prediction.

Bounded in time on any thread: math-verify's timeouts use ``signal.alarm``, which works only on
a process's main thread, and Prefect runs submitted tasks on pool threads. So parsing and
comparison run in worker processes (on their own main thread, where math-verify's timeouts
work), and the caller also waits with a deadline; a sample that misses it scores as incorrect
with status ``"timeout"`` and the stuck worker pool is replaced.
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
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
#: Completions longer than this (characters) are cut to their last part before parsing.
MAX_CHARS = 20_000

Status = Literal["ok", "no_answer", "gold_unparsable", "timeout", "error"]


@dataclass(frozen=True)
class Verdict:
    """The verifier's decision on one completion.

    Attributes:
        correct: ``True``/``False``; ``None`` when the gold answer cannot be parsed (the sample
            should be skipped, not scored 0).
        answer: the extracted final answer as text (``None`` when nothing was extracted); equal
            answers by math-verify compare equal as :attr:`key`.
        status: ``ok``, ``no_answer`` (nothing extracted), ``gold_unparsable``, ``timeout`` or ``error``.
    """

    correct: bool | None
    answer: str | None
    status: Status


def _answer_block(completion: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` block, or ``None`` when there is none."""
    blocks = _ANSWER_TAG.findall(completion)
    return blocks[-1] if blocks else None


def extract_answer_span(completion: str) -> str:
    """The part of a completion the answer is read from: the last ``<answer>`` block's content,
    else the whole completion (math-verify then finds the last ``\\boxed{}`` or expression)."""
    block = _answer_block(completion)
    return (completion if block is None else block)[-MAX_CHARS:]


def _parse_boxed_first(text: str, configs):
    """Parse ``text`` as if it were boxed (gold answers, ``<answer>`` contents), then as is."""
    from math_verify import parse

    text = text.strip()
    if "\\boxed" not in text and "$" not in text.replace("\\$", ""):
        parsed = parse(f"\\boxed{{{text}}}", extraction_config=configs, parsing_timeout=TIMEOUT_S)
        if parsed:
            return parsed
    return parse(text, extraction_config=configs, parsing_timeout=TIMEOUT_S)


def _parse_gold(gold: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return _parse_boxed_first(gold, [LatexExtractionConfig(), ExprExtractionConfig()])


def _parse_prediction(completion: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    span = extract_answer_span(completion)
    if _answer_block(completion) is not None:  # an <answer> block's content is read as if boxed
        return _parse_boxed_first(span, configs)
    return parse(span, extraction_config=configs, parsing_timeout=TIMEOUT_S)


def _verify_one(completion: str, gold: str) -> tuple[bool | None, str | None, str]:
    """Runs in a worker process (main thread): math-verify's signal timeouts are active here."""
    from math_verify import verify

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


def _verify_chunk(pairs: list[tuple[str, str]]) -> list[tuple[bool | None, str | None, str]]:
    return [_verify_one(c, g) for c, g in pairs]


def _worker_init() -> None:
    import math_verify  # noqa: F401  (import once per worker, ~1 s)

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


def verify_batch(completions: list[str], golds: list[str], *, chunk_size: int = 16) -> list[Verdict]:
    """Verify ``completions[i]`` against ``golds[i]`` for every ``i``.

    Safe from any thread; bounded in time: each chunk of ``chunk_size`` samples must finish
    within ``chunk_size * 2 * TIMEOUT_S + 10`` seconds of the wait starting (math-verify's own
    timeouts make that very loose), else its samples get status ``timeout`` (scored incorrect).

    Args:
        completions: model outputs (plain text).
        golds: gold answers (LaTeX or plain text), same length.

    Returns:
        One :class:`Verdict` per completion, in order.

    Raises:
        ValueError: the two lists differ in length.
    """
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers; pass one gold per completion.")
    if not completions:
        return []
    pairs = [(str(c), str(g)) for c, g in zip(completions, golds)]
    chunks = [pairs[i : i + chunk_size] for i in range(0, len(pairs), chunk_size)]
    pool = _POOL.get()
    try:
        futures = [pool.submit(_verify_chunk, chunk) for chunk in chunks]
    except (BrokenProcessPool, RuntimeError):
        _POOL.kill(pool)
        pool = _POOL.get()
        futures = [pool.submit(_verify_chunk, chunk) for chunk in chunks]
    rounds = -(-len(chunks) // _POOL.workers)
    deadline = rounds * chunk_size * 2 * TIMEOUT_S + _GRACE_S
    done, _ = wait(futures, timeout=deadline)
    out: list[Verdict] = []
    hung = False
    for chunk, fut in zip(chunks, futures):
        if fut in done and fut.exception() is None:
            out.extend(Verdict(*r) for r in fut.result())
        else:
            hung = True
            out.extend(Verdict(False, None, "timeout") for _ in chunk)
    if hung:
        logger.warning("verifier: a worker missed its deadline or died; scoring its samples as timeouts")
        _POOL.kill(pool)
    return out


def verify_one(completion: str, gold: str) -> Verdict:
    """Verify a single completion (see :func:`verify_batch`)."""
    return verify_batch([completion], [gold])[0]


def group_equivalent(answers: list[str | None], *, max_distinct: int = 16) -> list[int | None]:
    """Cluster extracted answers by verified equivalence (``0.5`` and ``\\frac{1}{2}`` share a cluster).

    Distinct answer strings are compared pairwise with the verifier (each as gold against the
    other as an ``<answer>``), and equivalent pairs are merged (union-find). Only the
    ``max_distinct`` most frequent distinct strings are compared; rarer ones keep a cluster of
    their own string. Used for cons@k's majority vote (R1's cons@64).

    Returns:
        A cluster id per answer (the index of its cluster's first answer), ``None`` for ``None``.
    """
    from collections import Counter

    # Anything but a non-empty string is "no answer" (pandas turns None into NaN, and NaN != NaN).
    answers = [a if isinstance(a, str) and a.strip() else None for a in answers]
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
