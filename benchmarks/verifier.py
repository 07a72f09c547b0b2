"""Verifier throughput: score 1,000 completions of ~500 tokens (issue #3's target: < 10 s on 2 cores).

Completions are MATH-500 gold solutions padded with reasoning text to ~500 tokens (SmolLM2
tokenizer counts ~4 characters a token: 2,000 characters), half with the right final answer and
half with a wrong one, so both verdicts are exercised. Median of 3 runs after a warm-up call
(which starts the worker processes).

    python -m benchmarks.verifier
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from benchmarks import write_result

from r1core import data
from r1core.verify import verify_batch

N = 1000
CHARS = 2000
RESULTS = Path(__file__).parent / "results" / "verifier.json"


def completions() -> tuple[list[str], list[str], list[bool]]:
    ds, _ = data.load("math500")
    comps, golds, expected = [], [], []
    filler = "Let me check each step of this computation again carefully before answering. "
    for i in range(N):
        row = ds[i % len(ds)]
        right = i % 2 == 0
        answer = row["answer"] if right else f"{row['answer']} + 1"
        body = row["solution"].replace("\\boxed", "")
        pad = filler * max(0, (CHARS - len(body)) // len(filler))
        comps.append(f"<think>\n{pad}{body}\n</think>\n<answer>{answer}</answer>")
        golds.append(row["answer"])
        expected.append(right)
    return comps, golds, expected


def main() -> dict:
    comps, golds, expected = completions()
    verify_batch(comps[:4], golds[:4])  # warm-up: start the workers
    times, agree = [], 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        verdicts = verify_batch(comps, golds)
        times.append(time.perf_counter() - t0)
        agree = sum(bool(v.correct) == e for v, e in zip(verdicts, expected)) / N
    result = {"completions": N, "chars_per_completion": CHARS, "seconds_median": statistics.median(times),
              "seconds_runs": times, "completions_per_s": N / statistics.median(times),
              "agreement_with_construction": agree, "cpu_count": os.cpu_count(), "target_seconds": 10.0}
    return write_result(RESULTS, result)


if __name__ == "__main__":
    main()
