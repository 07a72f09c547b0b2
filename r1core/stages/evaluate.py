"""The ``evaluate`` stage: R1-protocol evaluation of a model on the recipe's benchmarks
(:mod:`r1core.evaluation`), with the s1 budget-forcing sweep (:mod:`r1core.budget`) and the
comparison against the previous evaluation of the same model reference (:mod:`r1core.compare`).
Metrics attach to the model's LoggedModel; results are resumable per sample.
"""

from __future__ import annotations

import json
import time
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from r1core import data, tracking
from r1core.config import Recipe
from r1core.models import canonical_model_uri, logged_model_id
from r1core.prompts import template_for
from r1core.stage_utils import finite, progress, sha, work_dir
from r1core.stages.common import HELDOUT, TAG_STAGE_TYPE, heldout_uri


def evaluate(recipe: Recipe, name: str, parent_run_id: str | None, model: str,
             heldout: str | None = None, run_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """R1-protocol evaluation of ``model`` (a model URI or reference) on stage ``name``'s
    benchmarks, and on the held-out problems beside data set ``heldout`` (a curate stage's
    output URI) as benchmark ``heldout``; metrics attach to the model's LoggedModel
    (``model_id``). With no ``parent_run_id`` the evaluation is a run of its own (the
    ``evaluate`` flow), tagged with ``run_tags`` (e.g. the Prefect flow run that asked for it)."""
    from r1core.evaluation import evaluate_benchmark
    from r1core.generation import SamplingParams
    from r1core.sampling import build_sampler

    cfg, model_uri = recipe.stages[name], model
    model_id = logged_model_id(model_uri)
    tags = {TAG_STAGE_TYPE: "evaluate"}
    ctx = (tracking.stage_run(parent_run_id, name, tags=tags) if parent_run_id
           else _standalone_run(recipe, name, run_tags or {}))
    canonical = canonical_model_uri(model_uri)
    with ctx as run:
        mlflow.set_tags({"r1.evaluated_model": model_uri, "r1.evaluated_model_canonical": canonical})
        mlflow.log_params({f"evaluate.{k}": (",".join(v) if isinstance(v, list) else v)
                           for k, v in cfg.model_dump().items() if k not in ("type", "model")})
        sampler = build_sampler(cfg.engine, model_uri, template=cfg.prompt_template, stop_strings=cfg.stop_strings,
                                batch_size=cfg.batch_size, vllm=cfg.vllm.llm_kwargs())
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, seed=recipe.seed, **(cfg.tip.sampling_kwargs() if cfg.tip else {}))
        all_metrics: dict[str, float] = {}
        for spec, problems, source in _benchmarks(cfg, heldout):
            name = spec if spec == HELDOUT else data.parse_spec(spec)[0]
            if cfg.limit and spec != HELDOUT:  # the held-out set is sized by its curate stage
                problems = problems.head(cfg.limit)
            dataset = tracking.pandas_dataset(problems, source, name, "answer")
            tracking.log_input(dataset, "evaluation")
            t0 = time.perf_counter()
            key = sha(json.dumps([canonical, spec if spec != HELDOUT else source, _protocol(cfg), recipe.seed],
                                 sort_keys=True))
            results_path = work_dir("eval") / f"{name}-{key}.jsonl"
            sampler.on_batch = progress(f"evaluate/{name}")
            sampler.template = template_for(cfg.prompt_template, problems.get("answer_type", pd.Series(["math"])))
            metrics, samples = evaluate_benchmark(sampler, problems, k=cfg.num_samples, params=params,
                                                  results_path=results_path)
            sampler.template = cfg.prompt_template
            metrics["seconds"] = time.perf_counter() - t0
            prefixed = {f"{name}/{k}": v for k, v in finite(metrics).items()}
            tracking.log_metrics(prefixed, model_id=model_id, dataset=dataset)
            tracking.log_table(samples.assign(completion=samples["completion"].str[:2000]),
                               f"samples/{name}.json")
            all_metrics.update(prefixed)
        if cfg.budget_forcing is not None:
            all_metrics.update(_budget_sweep(recipe, cfg, sampler, params, canonical))
        comparison = _compare_with_previous(run, model_uri, all_metrics)
        return {"run_id": run.info.run_id, "model_uri": model_uri, "canonical_model_uri": canonical,
                "metrics": all_metrics, "previous_run_id": comparison.baseline_run_id,
                "deltas": comparison.deltas, "regressions": comparison.regressions}


def _benchmarks(cfg, heldout: str | None):
    """``(spec, problems, source)`` for each catalog benchmark, then the held-out set when given."""
    for spec in cfg.benchmarks:
        yield spec, data.load(spec)[0].to_pandas(), data.source_uri(spec)
    if heldout:
        uri = heldout_uri(heldout)
        yield HELDOUT, tracking.read_dataset(uri), uri


def _protocol(cfg) -> dict:
    """The settings that decide an evaluation's samples (not which stage asked for it)."""
    return cfg.model_dump(mode="json", exclude={"type", "model", "heldout"})


def _budget_sweep(recipe: Recipe, cfg, sampler, params, canonical: str) -> dict[str, float]:
    """s1 budget forcing at each thinking budget: metrics ``<bench>/budget/<N>/pass@1``, a table
    ``budget_forcing/results.json`` and the plot ``budget_forcing/accuracy_vs_budget.png``."""
    import functools

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from r1core.budget import budget_forced_generate
    from r1core.evaluation import evaluate_benchmark

    bf = cfg.budget_forcing
    rows, metrics = [], {}
    for spec in cfg.benchmarks:
        name, _ = data.parse_spec(spec)
        problems = data.load(spec)[0].to_pandas()
        problems = problems.head(cfg.limit) if cfg.limit else problems
        for budget in bf.max_thinking_tokens:
            fn = functools.partial(budget_forced_generate, sampler, max_thinking_tokens=budget, num_waits=bf.num_waits,
                                   answer_tokens=bf.answer_tokens)
            key = sha(json.dumps([canonical, spec, _protocol(cfg), budget, recipe.seed], sort_keys=True))
            sampler.on_batch = progress(f"budget_forcing/{name}/{budget}")
            m, _ = evaluate_benchmark(sampler, problems, k=cfg.num_samples, params=params,
                                      results_path=work_dir("eval") / f"{name}-budget{budget}-{key}.jsonl",
                                      generate_fn=fn)
            rows.append({"benchmark": name, "max_thinking_tokens": budget, "num_waits": bf.num_waits,
                         "pass@1": m["pass@1"], "pass@1_stderr": m["pass@1_stderr"],
                         "mean_completion_tokens": m["mean_completion_tokens"]})
            metrics.update({f"{name}/budget/{budget}/pass@1": m["pass@1"],
                            f"{name}/budget/{budget}/mean_completion_tokens": m["mean_completion_tokens"]})
    table = pd.DataFrame(rows)
    tracking.log_metrics(metrics)
    tracking.log_table(table, "budget_forcing/results.json")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, g in table.groupby("benchmark"):
        ax.errorbar(g["max_thinking_tokens"], g["pass@1"], yerr=g["pass@1_stderr"], marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("thinking budget (tokens)")
    ax.set_ylabel("pass@1")
    ax.set_title(f"Budget forcing (num_waits={bf.num_waits})")
    ax.legend()
    mlflow.log_figure(fig, "budget_forcing/accuracy_vs_budget.png")
    plt.close(fig)
    return metrics


def _compare_with_previous(run, model_uri: str, metrics: dict[str, float]):
    """Log deltas against the previous evaluation of the same reference (``vs_previous/...``)
    and tag the run ``r1.regression`` (see :mod:`r1core.compare`)."""
    from r1core.compare import compare, previous_evaluation

    prev_id, prev_metrics = previous_evaluation(run.info.experiment_id, model_uri, run.info.run_id)
    now = {tracking.mlflow_key(k): v for k, v in metrics.items()}
    comparison = compare(now, prev_metrics, prev_id)
    if prev_id:
        mlflow.log_metrics({f"vs_previous/{k}": v for k, v in comparison.deltas.items()})
        mlflow.set_tags({"r1.previous_eval_run": prev_id,
                         "r1.regression": str(bool(comparison.regressions)).lower(),
                         "r1.regressed_benchmarks": ",".join(comparison.regressions)})
    return comparison


def _standalone_run(recipe: Recipe, name: str, run_tags: dict[str, str]):
    exp_id = tracking.setup(recipe.experiment_name)
    return mlflow.start_run(experiment_id=exp_id, run_name=name,
                            tags={**tracking.environment_tags(), **run_tags, tracking.TAG_STAGE: name,
                                  TAG_STAGE_TYPE: "evaluate", tracking.TAG_RECIPE: recipe.name})
