"""Wall time of a full MATH-500 evaluation pass with SmolLM2-135M on this machine (issue #6).

500 problems, k=1, 512 new tokens, R1 sampling (T=0.6, top-p 0.95), through the same
``evaluate_benchmark`` the pipeline uses (batched across problems, scored by the one verifier).
Writes ``benchmarks/results/math500_pass.json``; per-sample results go to a resumable JSONL, so an
interrupted run continues where it stopped; the seconds of every finished batch are kept beside
it, so ``wall_seconds`` is the time of the whole pass even when it took several runs (``resumed``
says so; an interruption inside a chunk of four batches re-does those batches, and their first
time is counted too). Generation is the project's ``"r1"`` engine (batches of 64).

    python -m benchmarks.math500_pass [--limit N] [--batch-size B] [--max-new-tokens T]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks import write_result

from r1core import data
from r1core.evaluation import evaluate_benchmark
from r1core.generation import SamplingParams
from r1core.models import load_model_and_tokenizer
from r1core.sampling import EngineSampler
from r1core.settings import configure_environment, state_dir

RESULTS = Path(__file__).parent / "results" / "math500_pass.json"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=512)
    args = p.parse_args(argv)
    configure_environment()
    model, tok = load_model_and_tokenizer(None, for_inference=True)
    problems = data.load("math500")[0].to_pandas()
    if args.limit:
        problems = problems.head(args.limit)
    path = state_dir() / "work" / "bench" / f"math500-{len(problems)}-{args.max_new_tokens}-{args.batch_size}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    resumed = path.exists()
    # Seconds spent so far, appended after every batch: a pass split over several runs (the
    # per-sample JSONL resumes) still reports the time of the whole pass, not of its last part.
    clock = path.with_suffix(".seconds")
    spent = [float(x) for x in clock.read_text().split()] if clock.exists() and resumed else []
    last = [time.perf_counter()]

    def progress(done: int, total: int, tps: float) -> None:
        now = time.perf_counter()
        with clock.open("a") as fh:
            fh.write(f"{now - last[0]:.3f}\n")
        last[0] = now
        print(f"  batch {done}/{total} at {tps:.1f} tokens/s", flush=True)

    t0, c0 = time.perf_counter(), time.process_time()
    sampler = EngineSampler(model, tok, "smollm2-135m-instruct", batch_size=args.batch_size)
    sampler.on_batch = progress
    metrics, samples = evaluate_benchmark(
        sampler, problems, k=1, params=SamplingParams(max_new_tokens=args.max_new_tokens, seed=0), results_path=path)
    seconds = time.perf_counter() - t0 + sum(spent)
    cpu_seconds = time.process_time() - c0  # this run only; all threads
    result = {"problems": len(problems), "k": 1, "max_new_tokens": args.max_new_tokens,
              "batch_size": args.batch_size, "wall_seconds": seconds, "cpu_seconds": cpu_seconds, "resumed": resumed,
              "completion_tokens": int(samples["num_tokens"].sum()),
              "tokens_per_s": float(samples["num_tokens"].sum()) / seconds,
              "pass@1": metrics["pass@1"], "truncated_fraction": metrics["truncated_fraction"],
              "cpu_count": os.cpu_count(), "model": "smollm2-135m-instruct (fp32, CPU)", "engine": "r1"}
    return write_result(RESULTS, result)


if __name__ == "__main__":
    main()
