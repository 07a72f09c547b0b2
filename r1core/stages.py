"""The pipeline's stages as plain functions: each opens its MLflow child run, reads its inputs
by URI, runs one step of the recipe, logs its outputs and returns small values (URIs, ids, metrics).

These are what ``tasks/`` wraps; they never import Prefect, so a notebook can call them directly::

    parent = start_pipeline(recipe)
    cur = curate(recipe, parent)
    pol = grpo(recipe, parent, cur["dataset_uri"])
    ...

Model references in a recipe (``base``, ``grpo``, ``sft`` or any reference) are resolved by
:func:`model_ref` from the results of earlier stages.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from r1core import data, models, tracking
from r1core.config import Recipe
from r1core.settings import state_dir

logger = logging.getLogger(__name__)

TAG_BASE_REF = "r1.base_ref"
TAG_MODEL_ROLE = "r1.model_role"


def _progress(stage: str):
    def report(done: int, total: int, tokens_per_s: float) -> None:
        logger.info("%s: %d/%d sequences sampled (%.1f tokens/s)", stage, done, total, tokens_per_s)
    return report


def _normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _work_dir(*parts: str) -> Path:
    path = state_dir().joinpath("work", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def validate(recipe: Recipe) -> None:
    """Check everything that can be checked before expensive work: data sets, models, rewards.

    Raises:
        r1core.data.DataError, r1core.models.ModelNotFoundError, ValueError: with the fix.
    """
    from r1core.rewards import get_rewards

    data.check_available(recipe.curate.dataset)
    for spec in [*recipe.curate.decontaminate, *recipe.evaluate.benchmarks]:
        data.check_available(spec)
    get_rewards(recipe.grpo.rewards, recipe.grpo.reward_args)
    for ref in [recipe.model, recipe.grpo.model, recipe.rejection_sampling.teacher, recipe.sft.student,
                recipe.evaluate.model]:
        if ref not in {"base", "grpo", "sft"}:
            resolved = models.resolve_model(ref)  # raises ModelNotFoundError with the fix
            if resolved.is_hub and data.data_dir() is not None:
                logger.info("model %s will be read from the hub", ref)
    order = {"base": 0, "grpo": 1, "sft": 2}
    for stage, ref, limit in [("grpo.model", recipe.grpo.model, 0), ("rejection_sampling.teacher",
                              recipe.rejection_sampling.teacher, 1), ("sft.student", recipe.sft.student, 1)]:
        if ref in order and order[ref] > limit:
            raise ValueError(f"{stage}={ref!r} refers to a stage that runs later; use one of "
                             f"{[k for k, v in order.items() if v <= limit]} or a model reference.")


def start_pipeline(recipe: Recipe, flow_run_id: str | None = None, flow_run_url: str | None = None) -> str:
    """Create the pipeline's parent MLflow run (tagged with recipe and Prefect ids); return its id."""
    tags = {tracking.TAG_RECIPE: recipe.name, "r1.recipe_json_sha": _sha(recipe.to_json())}
    if flow_run_id:
        tags[tracking.TAG_FLOW_RUN] = flow_run_id
    if flow_run_url:
        tags[tracking.TAG_FLOW_RUN_URL] = flow_run_url
    run_id = tracking.start_parent_run(recipe.experiment_name, f"{recipe.name}-pipeline", tags,
                                       {"recipe": recipe.name, "model": recipe.model, "seed": recipe.seed})
    client = MlflowClient()
    client.log_text(run_id, recipe.to_json(), "recipe.json")
    return run_id


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_model(recipe: Recipe) -> dict[str, str]:
    """Log the recipe's base model to MLflow once per store and return ``{model_id, model_uri, ref}``.

    Hub ids and MLflow URIs are referenced as they are (not copied); local checkpoints and the
    default model are logged once, in a run named ``base-model``, and found again by tag.
    """
    ref = recipe.model
    if ref.startswith(("models:/", "runs:/")):
        return {"ref": ref, "model_uri": ref, "model_id": ref.split("/", 1)[1] if ref.startswith("models:/m-") else ""}
    resolved = models.resolve_model(ref)
    if resolved.is_hub:
        return {"ref": ref, "model_uri": ref, "model_id": ""}
    exp_id = tracking.setup(recipe.experiment_name)
    model_id = tracking.find_logged_model(exp_id, TAG_BASE_REF, ref)
    if model_id is None:
        model, tok = models.load_model_and_tokenizer(ref)
        with mlflow.start_run(experiment_id=exp_id, run_name="base-model", tags={**tracking.environment_tags(),
                              TAG_BASE_REF: ref, tracking.TAG_STAGE: "base-model"}):
            info = tracking.log_model(model, tok, name=_slug(ref), tags={TAG_BASE_REF: ref, TAG_MODEL_ROLE: "base"})
        model_id = info.model_id
    return {"ref": ref, "model_uri": f"models:/{model_id}", "model_id": model_id}


def _slug(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(ref).name if Path(ref).exists() else ref).strip("-")[:60] or "model"


def model_ref(ref: str, outputs: dict[str, dict]) -> str:
    """Resolve ``base``/``grpo``/``sft`` against earlier stage outputs; any other reference as is."""
    if ref in outputs:
        return outputs[ref]["model_uri"]
    return ref


# ---------------------------------------------------------------- curate
def curate(recipe: Recipe, parent_run_id: str) -> dict[str, Any]:
    """Load the training set, normalise, then filter (see :mod:`r1core.curation`): exact
    duplicates, n-gram overlap with every benchmark in ``curate.decontaminate``, unparsable gold
    answers, over-long problems, optionally a pass-rate band; then sample N (uniformly or
    stratified). Every count is a metric of the stage run; pass rates are a column of the dataset.
    """
    from r1core import curation

    cfg = recipe.curate
    with tracking.stage_run(parent_run_id, "curate") as run:
        ds, counts = data.load(cfg.dataset)
        df = ds.to_pandas()
        n0 = len(df)
        df["_norm"] = df["problem"].map(_normalise_text)
        df = df.drop_duplicates("_norm").drop(columns="_norm")
        metrics: dict[str, float] = {"rows_read": counts["rows_read"], "rows_skipped_malformed": counts["rows_skipped"],
                                     "duplicates_removed": n0 - len(df)}
        for spec in cfg.decontaminate:
            bench, _ = data.load(spec)
            hit = curation.contaminated(list(df["problem"]), list(bench["problem"]), cfg.ngram)
            metrics[f"decontaminated/{spec.replace(':', '_')}"] = int(sum(hit))
            df = df[[not h for h in hit]]
        if cfg.drop_unparsable_gold:
            ok = curation.parsable_gold([str(a) for a in df["answer"]])
            metrics["gold_unparsable_removed"] = int(len(ok) - sum(ok))
            df = df[ok]
        if cfg.max_problem_chars:
            metrics["too_long_removed"] = int((df["problem"].str.len() > cfg.max_problem_chars).sum())
            df = df[df["problem"].str.len() <= cfg.max_problem_chars]
        metrics["pool_after_filters"] = len(df)
        if cfg.pass_rate is not None:
            df = _pass_rate_band(recipe, df, metrics)
        if cfg.stratify_by:
            df = curation.stratified_sample(df, cfg.stratify_by, cfg.num_problems, recipe.seed)
        else:
            df = df.sample(n=min(cfg.num_problems, len(df)), random_state=recipe.seed)
        df = df.reset_index(drop=True)
        metrics["num_problems"] = len(df)
        for column in ("source", "subject", "level"):
            if column in df and df[column].nunique() > 1:
                for value, c in df[column].value_counts().items():
                    metrics[f"distribution/{column}/{value}"] = int(c)
        mlflow.log_params({"curate.dataset": cfg.dataset, "curate.num_problems": cfg.num_problems,
                           "curate.decontaminate": ",".join(cfg.decontaminate), "curate.ngram": cfg.ngram})
        tracking.log_metrics(metrics)
        src, _ = tracking.log_dataset(df, "curated", "training", source=data.source_uri(cfg.dataset), targets="answer")
        digest = tracking.dataset_digest(src)
        return {"run_id": run.info.run_id, "dataset_uri": src, "digest": digest or "", "num_problems": len(df)}


def _pass_rate_band(recipe: Recipe, df: pd.DataFrame, metrics: dict) -> pd.DataFrame:
    """Score ``candidates`` problems by a reference model's pass rate over k samples; keep the band."""
    from r1core.generation import SamplingParams, generate
    from r1core.prompts import render
    from r1core.verify import verify_batch

    pr = recipe.curate.pass_rate
    ref = recipe.model if pr.model == "base" else pr.model
    model, tok = models.load_model_and_tokenizer(ref, for_inference=True)
    cand = df.sample(n=min(pr.candidates, len(df)), random_state=recipe.seed).reset_index(drop=True)
    prompts = [render(tok, p, "r1_eval") for p in cand["problem"] for _ in range(pr.num_samples)]
    outs = generate(model, tok, prompts, SamplingParams(max_new_tokens=pr.max_new_tokens, seed=recipe.seed),
                    on_batch=_progress("curate/pass_rate"))
    golds = [str(a) for a in cand["answer"] for _ in range(pr.num_samples)]
    correct = [bool(v.correct) for v in verify_batch([o.text for o in outs], golds)]
    k = pr.num_samples
    cand["pass_rate"] = [sum(correct[i * k : (i + 1) * k]) / k for i in range(len(cand))]
    keep = cand[(cand["pass_rate"] >= pr.min_pass_rate) & (cand["pass_rate"] <= pr.max_pass_rate)]
    metrics.update({"pass_rate/candidates": len(cand), "pass_rate/kept": len(keep),
                    "pass_rate/mean": float(cand["pass_rate"].mean())})
    return keep


# ---------------------------------------------------------------- grpo
def grpo(recipe: Recipe, parent_run_id: str, dataset_uri: str, base: dict[str, str]) -> dict[str, Any]:
    """GRPO on the curated problems (see :mod:`r1core.grpo`); the policy becomes a LoggedModel."""
    from r1core.grpo import train_grpo

    cfg = recipe.grpo
    policy_ref = model_ref(cfg.model, {"base": base})
    # The work folder is keyed by the stage's inputs: a retry of a killed run finds its checkpoints
    # and its MLflow run there, and continues both.
    out_dir = _work_dir("grpo", _sha(json.dumps([cfg.model_dump(mode="json"), dataset_uri, policy_ref,
                                                 recipe.seed], sort_keys=True)))
    run_file = out_dir / "mlflow_run_id"
    resume = run_file.read_text().strip() if run_file.exists() and any(out_dir.glob("checkpoint-*")) else None
    with tracking.stage_run(parent_run_id, "grpo", resume_run_id=resume) as run:
        run_file.write_text(run.info.run_id)
        rows = tracking.read_dataset(dataset_uri)
        mlflow.log_input(tracking.pandas_dataset(rows, dataset_uri, "curated", "answer"),
                         context="training")
        mlflow.set_tags({"r1.input_model": policy_ref, "r1.rewards": json.dumps(cfg.rewards)})
        if cfg.accelerate_config or cfg.num_processes > 1:  # multi-GPU: accelerate launch subprocesses
            from r1core.launch import LaunchSpec, launch

            summary = launch(LaunchSpec(recipe.to_json(), dataset_uri, policy_ref, str(out_dir)), run.info.run_id,
                             accelerate_config=cfg.accelerate_config, num_processes=cfg.num_processes)
            model, tok = models.load_model_and_tokenizer(str(out_dir))
        else:
            model, tok = models.load_model_and_tokenizer(policy_ref)
            summary = train_grpo(model, tok, rows, cfg, str(out_dir), seed=recipe.seed)
        mlflow.log_metrics({f"summary/{k}": v for k, v in _finite(summary).items()})
        info = tracking.log_model(model, tok, name="grpo-policy",
                                  params={"rewards": json.dumps(cfg.rewards), "max_steps": cfg.max_steps},
                                  tags={TAG_MODEL_ROLE: "grpo", "r1.parent_model": policy_ref})
        shutil.rmtree(out_dir, ignore_errors=True)
        return {"run_id": run.info.run_id, "model_uri": f"models:/{info.model_id}", "model_id": info.model_id,
                **{k: float(v) for k, v in _finite(summary).items()}}


# ---------------------------------------------------------------- rejection sampling
def rejection_sampling(recipe: Recipe, parent_run_id: str, dataset_uri: str, teacher_uri: str) -> dict[str, Any]:
    """Sample k completions per problem from the teacher; keep verified ones as SFT traces."""
    from r1core.rejection import rejection_sample

    cfg = recipe.rejection_sampling
    with tracking.stage_run(parent_run_id, "rejection_sampling") as run:
        problems = tracking.read_dataset(dataset_uri).head(cfg.num_problems)
        mlflow.log_input(tracking.pandas_dataset(problems, dataset_uri, "curated", "answer"),
                         context="training")
        mlflow.set_tags({"r1.teacher": teacher_uri})
        mlflow.log_params({f"rejection.{k}": v for k, v in cfg.model_dump().items()})
        model, tok = models.load_model_and_tokenizer(teacher_uri, for_inference=True)
        t0 = time.perf_counter()
        kept, samples, stats = rejection_sample(model, tok, problems, cfg, seed=recipe.seed,
                                                progress=_progress("rejection_sampling"))
        stats["sampling_seconds"] = time.perf_counter() - t0
        mlflow.log_metrics(_finite(stats))
        tracking.log_table(samples.drop(columns=["response"]).assign(response=samples["response"].str[:2000]),
                           "samples/rejection_samples.json")
        by_source = samples.groupby("source")["kept"].mean().to_dict() if len(samples) else {}
        mlflow.log_metrics({f"acceptance_rate/{k}": float(v) for k, v in by_source.items()})
        uri, _ = tracking.log_dataset(kept, "sft_traces", "generated", targets="answer")
        return {"run_id": run.info.run_id, "dataset_uri": uri, "digest": tracking.dataset_digest(uri) or "",
                "num_kept": int(stats["num_kept"]), "acceptance_rate": float(stats["acceptance_rate"]),
                "teacher": teacher_uri}


# ---------------------------------------------------------------- sft
def sft(recipe: Recipe, parent_run_id: str, traces_uri: str, student_uri: str) -> dict[str, Any]:
    """Distil the kept traces into the student with TRL's SFTTrainer; the student becomes a LoggedModel."""
    from r1core.sft import train_sft

    cfg = recipe.sft
    with tracking.stage_run(parent_run_id, "sft") as run:
        traces = tracking.read_dataset(traces_uri)
        mlflow.log_input(tracking.pandas_dataset(traces, traces_uri, "sft_traces"),
                         context="training")
        mlflow.set_tags({"r1.input_model": student_uri})
        model, tok = models.load_model_and_tokenizer(student_uri)
        out_dir = _work_dir("sft", run.info.run_id)
        summary = train_sft(model, tok, traces, cfg, str(out_dir), seed=recipe.seed)
        mlflow.log_metrics({f"summary/{k}": v for k, v in _finite(summary).items()})
        info = tracking.log_model(model, tok, name="student",
                                  params={"num_traces": len(traces), "max_steps": cfg.max_steps},
                                  tags={TAG_MODEL_ROLE: "student", "r1.parent_model": student_uri,
                                        "r1.traces": traces_uri})
        shutil.rmtree(out_dir, ignore_errors=True)
        return {"run_id": run.info.run_id, "model_uri": f"models:/{info.model_id}", "model_id": info.model_id,
                **{k: float(v) for k, v in _finite(summary).items()}}


# ---------------------------------------------------------------- evaluate
def evaluate(recipe: Recipe, parent_run_id: str | None, model_uri: str) -> dict[str, Any]:
    """R1-protocol evaluation on the recipe's benchmarks; metrics attach to the model (``model_id``)."""
    from r1core.evaluation import evaluate_benchmark
    from r1core.generation import SamplingParams

    cfg = recipe.evaluate
    model_id = logged_model_id(model_uri)
    ctx = tracking.stage_run(parent_run_id, "evaluate") if parent_run_id else _standalone_run(recipe, "evaluate")
    canonical = canonical_model_uri(model_uri)
    with ctx as run:
        mlflow.set_tags({"r1.evaluated_model": model_uri, "r1.evaluated_model_canonical": canonical})
        mlflow.log_params({f"evaluate.{k}": (",".join(v) if isinstance(v, list) else v)
                           for k, v in cfg.model_dump().items()})
        model, tok = models.load_model_and_tokenizer(model_uri, for_inference=True)
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_p=cfg.top_p, seed=recipe.seed)
        all_metrics: dict[str, float] = {}
        for spec in cfg.benchmarks:
            name, _ = data.parse_spec(spec)
            ds, _ = data.load(spec)
            problems = ds.to_pandas()
            if cfg.limit:
                problems = problems.head(cfg.limit)
            dataset = tracking.pandas_dataset(problems, data.source_uri(spec), name, "answer")
            mlflow.log_input(dataset, context="evaluation")
            t0 = time.perf_counter()
            key = _sha(json.dumps([canonical, spec, cfg.model_dump(mode="json"), recipe.seed], sort_keys=True))
            results_path = _work_dir("eval") / f"{name}-{key}.jsonl"
            metrics, samples = evaluate_benchmark(model, tok, problems, k=cfg.num_samples, params=params,
                                                  template=cfg.prompt_template, batch_size=cfg.batch_size,
                                                  results_path=results_path, progress=_progress(f"evaluate/{name}"))
            metrics["seconds"] = time.perf_counter() - t0
            prefixed = {f"{name}/{k}": v for k, v in _finite(metrics).items()}
            tracking.log_metrics(prefixed, model_id=model_id, dataset=dataset)
            tracking.log_table(samples.assign(completion=samples["completion"].str[:2000]),
                               f"samples/{name}.json")
            all_metrics.update(prefixed)
        if cfg.budget_forcing is not None:
            all_metrics.update(_budget_sweep(recipe, model, tok, params, canonical))
        comparison = _compare_with_previous(run, model_uri, all_metrics)
        return {"run_id": run.info.run_id, "model_uri": model_uri, "canonical_model_uri": canonical,
                "metrics": all_metrics, "previous_run_id": comparison.baseline_run_id,
                "deltas": comparison.deltas, "regressions": comparison.regressions}


def _budget_sweep(recipe: Recipe, model, tok, params, canonical: str) -> dict[str, float]:
    """s1 budget forcing at each thinking budget: metrics ``<bench>/budget/<N>/pass@1``, a table
    ``budget_forcing/results.json`` and the plot ``budget_forcing/accuracy_vs_budget.png``."""
    import functools

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from r1core.budget import budget_forced_generate
    from r1core.evaluation import evaluate_benchmark

    cfg, bf = recipe.evaluate, recipe.evaluate.budget_forcing
    rows, metrics = [], {}
    for spec in cfg.benchmarks:
        name, _ = data.parse_spec(spec)
        problems = data.load(spec)[0].to_pandas()
        problems = problems.head(cfg.limit) if cfg.limit else problems
        for budget in bf.max_thinking_tokens:
            fn = functools.partial(budget_forced_generate, max_thinking_tokens=budget, num_waits=bf.num_waits,
                                   answer_tokens=bf.answer_tokens)
            key = _sha(json.dumps([canonical, spec, cfg.model_dump(mode="json"), budget, recipe.seed], sort_keys=True))
            m, _ = evaluate_benchmark(model, tok, problems, k=cfg.num_samples, params=params,
                                      template=cfg.prompt_template, batch_size=cfg.batch_size,
                                      results_path=_work_dir("eval") / f"{name}-budget{budget}-{key}.jsonl",
                                      progress=_progress(f"budget_forcing/{name}/{budget}"), generate_fn=fn)
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


def canonical_model_uri(uri: str) -> str:
    """``models:/name@alias`` as the version it points at now (``models:/name/3``); other URIs as they are.

    Aliases move; results cached for resumption and comparisons must name the exact version.
    """
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri.removeprefix("models:/").split("@", 1)
        version = MlflowClient().get_model_version_by_alias(name, alias)
        return f"models:/{name}/{version.version}"
    return uri


def logged_model_id(uri: str) -> str | None:
    """The LoggedModel id behind ``models:/m-...``, ``models:/name/3`` or ``models:/name@alias``
    (so evaluation metrics attach to the model); ``None`` for paths and hub ids."""
    if uri.startswith("models:/m-"):
        return uri.removeprefix("models:/")
    if not uri.startswith("models:/"):
        return None
    name, version = canonical_model_uri(uri).removeprefix("models:/").rsplit("/", 1)
    try:
        mv = MlflowClient().get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        return None
    if getattr(mv, "model_id", None):
        return mv.model_id
    # A version registered from "models:/m-..." keeps that URI as its source (model_id may be unset).
    source = mv.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def _standalone_run(recipe: Recipe, name: str):
    exp_id = tracking.setup(recipe.experiment_name)
    return mlflow.start_run(experiment_id=exp_id, run_name=name,
                            tags={**tracking.environment_tags(), tracking.TAG_STAGE: name,
                                  tracking.TAG_RECIPE: recipe.name})


# ---------------------------------------------------------------- register
def register(recipe: Recipe, parent_run_id: str, outputs: dict[str, dict]) -> dict[str, Any]:
    """Register the student as a new model version with lineage tags; set ``challenger``, and
    ``champion`` when there is none or the student beats it on the gate metric by more than
    ``min_margin``. Never deletes a version.
    """
    cfg = recipe.registry
    client = MlflowClient()
    with tracking.stage_run(parent_run_id, "register") as run:
        student = outputs["sft"]
        metrics = outputs["evaluate"]["metrics"]
        gate_value = metrics.get(cfg.gate_metric)
        lineage = {
            "r1.recipe": recipe.name,
            "r1.pipeline_run_id": parent_run_id,
            "r1.parent_model": outputs["sft"].get("student", recipe.model),
            "r1.teacher": outputs["rejection_sampling"].get("teacher", ""),
            "r1.base_model": outputs["base"]["model_uri"],
            "r1.dataset.curated": outputs["curate"]["dataset_uri"],
            "r1.dataset.curated.digest": outputs["curate"].get("digest", ""),
            "r1.dataset.sft_traces": outputs["rejection_sampling"]["dataset_uri"],
            "r1.dataset.sft_traces.digest": outputs["rejection_sampling"].get("digest", ""),
            **{f"r1.run.{stage}": outputs[stage]["run_id"] for stage in
               ("curate", "grpo", "rejection_sampling", "sft", "evaluate") if stage in outputs},
            **{f"r1.metric.{tracking.mlflow_key(k)}": f"{v:.6g}" for k, v in metrics.items()},
        }
        try:
            client.get_registered_model(cfg.model_name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(cfg.model_name, description=f"Students of recipe {recipe.name}.")
        existing = [v for v in client.search_model_versions(f"name='{cfg.model_name}'")
                    if v.source == student["model_uri"] or getattr(v, "model_id", None) == student["model_id"]]
        if existing:  # a re-run over a cached student: same version, no duplicate
            version = existing[0]
        else:
            version = mlflow.register_model(student["model_uri"], cfg.model_name, tags=lineage)
        client.set_registered_model_alias(cfg.model_name, "challenger", version.version)
        decision, champion_value = _gate(client, cfg, version.version, gate_value)
        if decision.startswith("promoted"):
            client.set_registered_model_alias(cfg.model_name, "champion", version.version)
        client.set_model_version_tag(cfg.model_name, version.version, "r1.gate.decision", decision)
        mlflow.set_tags({"r1.registered_model": cfg.model_name, "r1.registered_version": version.version,
                         "r1.gate.decision": decision})
        if gate_value is not None:
            mlflow.log_metric("gate/challenger", gate_value)
        if champion_value is not None:
            mlflow.log_metric("gate/champion", champion_value)
        aliases = client.get_model_version(cfg.model_name, version.version).aliases
        return {"run_id": run.info.run_id, "name": cfg.model_name, "version": str(version.version),
                "aliases": sorted(aliases), "decision": decision}


def _gate(client: MlflowClient, cfg, version: str, value: float | None) -> tuple[str, float | None]:
    """Decide whether ``version`` becomes champion: none yet, or beats it by more than the margin."""
    try:
        champion = client.get_model_version_by_alias(cfg.model_name, "champion")
    except mlflow.exceptions.MlflowException:
        return "promoted: no champion yet", None
    champ_value = champion.tags.get(f"r1.metric.{tracking.mlflow_key(cfg.gate_metric)}")
    if value is None:
        return f"kept champion v{champion.version}: challenger has no {cfg.gate_metric}", None
    if champ_value is None:
        return f"promoted: champion v{champion.version} has no {cfg.gate_metric}", None
    champ = float(champ_value)
    if value > champ + cfg.min_margin:
        return f"promoted: {cfg.gate_metric} {value:.4g} > {champ:.4g} + {cfg.min_margin}", champ
    return f"kept champion v{champion.version}: {cfg.gate_metric} {value:.4g} <= {champ:.4g} + {cfg.min_margin}", champ
