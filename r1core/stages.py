"""The pipeline's stages as plain functions: each opens its MLflow child run, reads its inputs
by URI, runs one stage of the recipe, logs its outputs and returns small values (URIs, ids, metrics).

Every stage function is ``fn(recipe, name, parent_run_id, **inputs)``: ``name`` is the stage's
key in ``recipe.stages`` (its settings, and its MLflow run's name), and ``inputs`` are the
stage's input fields resolved to URIs by :func:`r1core.graph.resolve_inputs`. These are what
``tasks/`` wraps; they never import Prefect, so a notebook can call them directly::

    parent = start_pipeline(recipe)
    base = base_model(recipe)
    cur = curate(recipe, "curate", parent)
    pol = grpo(recipe, "grpo", parent, data=cur["dataset_uri"], model=base["model_uri"])
    ...
"""

from __future__ import annotations

import json
import logging
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
from r1core.evaluate_stage import canonical_model_uri, evaluate, logged_model_id  # noqa: F401 (the evaluate stage)
from r1core.stage_utils import finite, progress, sha, work_dir

logger = logging.getLogger(__name__)

TAG_BASE_REF = "r1.base_ref"
TAG_MODEL_ROLE = "r1.model_role"
TAG_STAGE_TYPE = "r1.stage_type"


def validate(recipe: Recipe) -> None:
    """Check everything that can be checked before expensive work: data sets, models, rewards
    (the stage graph itself is checked when the recipe loads, :func:`r1core.graph.check_graph`).

    Raises:
        r1core.data.DataError, r1core.models.ModelNotFoundError, ValueError: with the fix.
    """
    from r1core.graph import upstream
    from r1core.rewards import get_rewards

    refs = [recipe.model]
    for name, st in recipe.stages.items():
        if st.type == "curate":
            if st.reasoning_gym is not None:
                from r1core.procedural import check_tasks

                check_tasks(st.reasoning_gym)
            for spec in [*([] if st.reasoning_gym else [st.dataset]), *st.decontaminate]:
                data.check_available(spec)
        elif st.type == "evaluate":
            for spec in st.benchmarks:
                data.check_available(spec)
            if st.heldout is not None:
                _check_heldout_source(recipe, f"stages.{name}.heldout", st.heldout)
        elif st.type == "grpo":
            get_rewards(st.rewards, st.reward_args)
            _check_grpo_eval(recipe, name)
        refs += [ref for ref, kind in st.input_refs().values()
                 if kind == "model" and ref != "base" and upstream(ref) is None]
    for ref in refs:
        resolved = models.resolve_model(ref)  # raises ModelNotFoundError with the fix
        if resolved.is_hub and data.data_dir() is not None:
            logger.info("model %s will be read from the hub", ref)


def _check_grpo_eval(recipe: Recipe, name: str) -> None:
    """A GRPO stage's in-training evaluation must name benchmarks that exist: catalog benchmarks
    in the mirror, and ``heldout`` only when ``grpo.data`` is a curate stage with procedural tasks."""
    ev = recipe.stages[name].eval
    if ev is None:
        return
    for spec in ev.benchmarks:
        if spec != HELDOUT:
            data.check_available(spec)
            continue
        _check_heldout_source(recipe, f"stages.{name}.eval.benchmarks names 'heldout', but stages.{name}.data",
                              recipe.stages[name].data)


def _check_heldout_source(recipe: Recipe, what: str, ref: str) -> None:
    """``ref`` must be the output of a curate stage that writes a held-out set (procedural tasks)."""
    from r1core.graph import upstream

    source = recipe.stages.get(upstream(ref) or "")
    if source is None or source.type != "curate" or source.reasoning_gym is None or not source.reasoning_gym.heldout_size:
        raise ValueError(f"{what} ({ref}) is not a curate stage with procedural tasks and a held-out set: curate with "
                         "dataset: reasoning_gym (and reasoning_gym.heldout_size > 0), or name catalog benchmarks "
                         "such as math500.")


#: The name ``grpo.eval.benchmarks`` uses for the held-out problems of the curate stage feeding the GRPO stage.
HELDOUT = "heldout"


def heldout_uri(dataset_uri: str) -> str:
    """The held-out set a curate stage logged beside the training set ``dataset_uri``.

    Raises:
        ValueError: the curate run of ``dataset_uri`` logged no held-out set.
    """
    if dataset_uri.startswith("runs:/"):
        run_id = dataset_uri.split("/")[1]
        if any(a.path == "data/heldout.jsonl" for a in MlflowClient().list_artifacts(run_id, "data")):
            return f"runs:/{run_id}/data/heldout.jsonl"
    raise ValueError(f"{dataset_uri} has no held-out set beside it (only a curate stage with procedural tasks "
                     "writes one); name catalog benchmarks in grpo.eval.benchmarks instead of 'heldout'.")


def start_pipeline(recipe: Recipe, flow_run_id: str | None = None, flow_run_url: str | None = None) -> str:
    """Create the pipeline's parent MLflow run (tagged with recipe and Prefect ids); return its id."""
    tags = {tracking.TAG_RECIPE: recipe.name, "r1.recipe_json_sha": sha(recipe.to_json())}
    if flow_run_id:
        tags[tracking.TAG_FLOW_RUN] = flow_run_id
    if flow_run_url:
        tags[tracking.TAG_FLOW_RUN_URL] = flow_run_url
    run_id = tracking.start_parent_run(recipe.experiment_name, f"{recipe.name}-pipeline", tags,
                                       {"recipe": recipe.name, "model": recipe.model, "seed": recipe.seed})
    client = MlflowClient()
    client.log_text(run_id, recipe.to_json(), "recipe.json")
    return run_id




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


def _stage_run(recipe: Recipe, name: str, parent_run_id: str, **kwargs):
    """The stage's nested MLflow run, named after the stage and tagged with its type."""
    return tracking.stage_run(parent_run_id, name, tags={TAG_STAGE_TYPE: recipe.stages[name].type}, **kwargs)


# ---------------------------------------------------------------- curate
def curate(recipe: Recipe, name: str, parent_run_id: str, reference_model: str | None = None) -> dict[str, Any]:
    """Load the training set, normalise, then filter (see :mod:`r1core.curation`):
    duplicates (same words after normalisation), n-gram overlap with every benchmark in ``curate.decontaminate``, unparsable gold
    answers, over-long problems, optionally a pass-rate band; then sample N (uniformly or
    stratified). Every count is a metric of the stage run; pass rates are a column of the dataset.
    ``reference_model`` is the pass-rate filter's model (a URI), when the stage has that filter.
    """
    from r1core import curation

    cfg = recipe.stages[name]
    with _stage_run(recipe, name, parent_run_id) as run:
        heldout = None
        if cfg.reasoning_gym is not None:  # procedural tasks: training pool and held-out set from disjoint seeds
            from r1core.procedural import train_and_heldout

            df, heldout, counts = train_and_heldout(cfg.reasoning_gym)
            metrics: dict[str, float] = {f"procedural/{k}": v for k, v in counts.items()}
            metrics["duplicates_removed"] = counts["duplicates_removed"]
            mlflow.log_params({"curate.reasoning_gym": json.dumps(cfg.reasoning_gym.model_dump(mode="json"))[:6000]})
        else:
            ds, counts = data.load(cfg.dataset)
            df = ds.to_pandas()
            n0 = len(df)
            df["_norm"] = df["problem"].map(lambda p: " ".join(curation.normalise(p)))  # same words as decontamination
            df = df.drop_duplicates("_norm").drop(columns="_norm")
            metrics = {"rows_read": counts["rows_read"], "rows_skipped_malformed": counts["rows_skipped"],
                       "duplicates_removed": n0 - len(df)}
        for spec in cfg.decontaminate:
            bench, _ = data.load(spec)
            hit = curation.contaminated(list(df["problem"]), list(bench["problem"]), cfg.ngram)
            metrics[f"decontaminated/{spec.replace(':', '_')}"] = int(sum(hit))
            df = df[[not h for h in hit]]
        if cfg.drop_unparsable_gold:
            ok = curation.parsable_gold(df)
            metrics["gold_unparsable_removed"] = int(len(ok) - sum(ok))
            df = df[ok]
        if cfg.max_problem_chars:
            metrics["too_long_removed"] = int((df["problem"].str.len() > cfg.max_problem_chars).sum())
            df = df[df["problem"].str.len() <= cfg.max_problem_chars]
        metrics["pool_after_filters"] = len(df)
        if cfg.pass_rate is not None:
            df = _pass_rate_band(recipe, cfg, df, metrics, reference_model or recipe.model)
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
        source = _procedural_source(cfg) if cfg.reasoning_gym is not None else data.source_uri(cfg.dataset)
        src, _ = tracking.log_dataset(df, "curated", "training", source=source, targets="answer")
        out = {"run_id": run.info.run_id, "dataset_uri": src, "digest": tracking.dataset_digest(src) or "",
               "num_problems": len(df)}
        if heldout is not None and len(heldout):
            out["heldout_uri"], _ = tracking.log_dataset(heldout, HELDOUT, "evaluation", targets="answer",
                                                         source=_procedural_source(cfg, heldout=True))
            out["heldout_problems"] = len(heldout)
        return out


def _procedural_source(cfg, heldout: bool = False) -> str:
    """Where procedural problems come from: the generator, its tasks and seed (they are regenerated from these)."""
    rg = cfg.reasoning_gym
    tasks = ",".join(t.name for t in rg.tasks)
    return f"reasoning_gym://composite/{tasks}?seed={rg.heldout_seed if heldout else rg.seed}"


def _pass_rate_band(recipe: Recipe, cfg, df: pd.DataFrame, metrics: dict, ref: str) -> pd.DataFrame:
    """Score ``candidates`` problems by a reference model's pass rate over k samples; keep the band."""
    from r1core.generation import SamplingParams, generate
    from r1core.prompts import render
    from r1core.verify import checks_of, verify_batch

    pr = cfg.pass_rate
    model, tok = models.load_model_and_tokenizer(ref, for_inference=True)
    cand = df.sample(n=min(pr.candidates, len(df)), random_state=recipe.seed).reset_index(drop=True)
    prompts = [render(tok, p, "r1_eval") for p in cand["problem"] for _ in range(pr.num_samples)]
    outs = generate(model, tok, prompts, SamplingParams(max_new_tokens=pr.max_new_tokens, seed=recipe.seed),
                    on_batch=progress("curate/pass_rate"))
    golds = [str(a) for a in cand["answer"] for _ in range(pr.num_samples)]
    checks = checks_of(cand.loc[cand.index.repeat(pr.num_samples)])
    correct = [bool(v.correct) for v in verify_batch([o.text for o in outs], golds, **checks)]
    k = pr.num_samples
    cand["pass_rate"] = [sum(correct[i * k : (i + 1) * k]) / k for i in range(len(cand))]
    keep = cand[(cand["pass_rate"] >= pr.min_pass_rate) & (cand["pass_rate"] <= pr.max_pass_rate)]
    metrics.update({"pass_rate/candidates": len(cand), "pass_rate/kept": len(keep),
                    "pass_rate/mean": float(cand["pass_rate"].mean())})
    return keep


# ---------------------------------------------------------------- grpo
def grpo(recipe: Recipe, name: str, parent_run_id: str, data: str, model: str) -> dict[str, Any]:
    """GRPO on the problems of data set ``data`` (a URI) from policy ``model`` (a model URI or
    reference), see :mod:`r1core.grpo`; the trained policy becomes a LoggedModel."""
    from r1core.grpo import train_grpo

    cfg = recipe.stages[name]
    dataset_uri, policy_ref = data, model
    # The work folder is keyed by the stage's inputs: a retry of a killed run finds its checkpoints
    # and its MLflow run there, and continues both.
    out_dir = work_dir("grpo", sha(json.dumps([name, cfg.model_dump(mode="json"), dataset_uri, policy_ref,
                                                 recipe.seed], sort_keys=True)))
    run_file = out_dir / "mlflow_run_id"
    resume = run_file.read_text().strip() if run_file.exists() and any(out_dir.glob("checkpoint-*")) else None
    with _stage_run(recipe, name, parent_run_id, resume_run_id=resume) as run:
        run_file.write_text(run.info.run_id)
        rows = tracking.read_dataset(dataset_uri)
        tracking.log_input(tracking.pandas_dataset(rows, dataset_uri, "curated", "answer"), "training")
        mlflow.set_tags({"r1.input_model": policy_ref, "r1.rewards": json.dumps(cfg.rewards)})
        if cfg.accelerate_config or cfg.num_processes > 1:  # multi-GPU: accelerate launch subprocesses
            from r1core.launch import LaunchSpec, launch

            summary = launch(LaunchSpec(recipe.to_json(), dataset_uri, policy_ref, str(out_dir), name), run.info.run_id,
                             accelerate_config=cfg.accelerate_config, num_processes=cfg.num_processes)
            policy, tok = models.load_model_and_tokenizer(str(out_dir))
        else:
            policy, tok = models.load_model_and_tokenizer(policy_ref)
            summary = train_grpo(policy, tok, rows, cfg, str(out_dir), seed=recipe.seed,
                                 eval_sets=grpo_eval_sets(cfg, dataset_uri))
        mlflow.log_metrics({tracking.mlflow_key(f"summary/{k}"): v for k, v in finite(summary).items()})
        info = tracking.log_model(policy, tok, name="grpo-policy",
                                  params={"rewards": json.dumps(cfg.rewards), "max_steps": cfg.max_steps},
                                  tags={TAG_MODEL_ROLE: "grpo", "r1.parent_model": policy_ref})
        shutil.rmtree(out_dir, ignore_errors=True)
        return {"run_id": run.info.run_id, "model_uri": f"models:/{info.model_id}", "model_id": info.model_id,
                "input_model": policy_ref, **{k: float(v) for k, v in finite(summary).items()}}


def grpo_eval_sets(cfg, dataset_uri: str) -> list:
    """The evaluation sets of a GRPO stage's ``eval`` section: ``heldout`` (the held-out problems
    logged beside ``dataset_uri``) and catalog benchmarks, each cut to ``eval.limit`` problems and
    logged as an input of the active run (context ``evaluation``)."""
    from r1core.training_eval import EvalSet

    if cfg.eval is None:
        return []
    sets = []
    for spec in cfg.eval.benchmarks:
        if spec == HELDOUT:
            uri = heldout_uri(dataset_uri)
            problems, name = tracking.read_dataset(uri), HELDOUT
        else:
            name, _ = data.parse_spec(spec)
            problems, uri = data.load(spec)[0].to_pandas(), data.source_uri(spec)
        problems = problems.head(cfg.eval.limit) if cfg.eval.limit else problems
        if mlflow.active_run() is not None:
            tracking.log_input(tracking.pandas_dataset(problems, uri, name, "answer"), "evaluation")
        sets.append(EvalSet(name, problems.reset_index(drop=True)))
    return sets


# ---------------------------------------------------------------- rejection sampling
def rejection_sampling(recipe: Recipe, name: str, parent_run_id: str, data: str, teacher: str | None = None
                       ) -> dict[str, Any]:
    """Sample k responses per problem of data set ``data`` (a URI) from the teacher: ``teacher``
    (a model URI or reference) or the stage's ``endpoint``; keep the ones that pass every filter
    as SFT traces (a data set whose lineage names the teacher and the prompt set).

    Sampling is resumable: the sample log lives in a work folder keyed by the teacher, the
    problems and the sampling settings, so a rerun after a crash or an endpoint outage samples only
    the problems not yet done; the folder is removed when the stage succeeds.
    """
    from r1core.rejection import rejection_sample
    from r1core.teachers import build_teacher

    cfg = recipe.stages[name]
    dataset_uri = data
    with _stage_run(recipe, name, parent_run_id) as run:
        problems = tracking.read_dataset(dataset_uri).head(cfg.num_problems)
        tracking.log_input(tracking.pandas_dataset(problems, dataset_uri, "curated", "answer"), "training")
        teacher_obj = build_teacher(cfg, teacher, base_model=recipe.model)
        if hasattr(teacher_obj, "on_batch"):
            teacher_obj.on_batch = progress(name)
        mlflow.set_tags({"r1.teacher": teacher_obj.id, "r1.prompts": dataset_uri})
        mlflow.log_params({f"rejection.{k}": v for k, v in _loggable(cfg.model_dump()).items()})
        settings = cfg.model_dump(mode="json", include={"num_samples", "max_new_tokens", "temperature", "top_p",
                                                         "prompt_template", "prefill", "shard_size",
                                                         "stop_strings"})
        folder = work_dir("rejection", sha(json.dumps([teacher_obj.id, dataset_uri, cfg.num_problems, settings,
                                                       recipe.seed], sort_keys=True)))
        t0 = time.perf_counter()
        kept, samples, stats = rejection_sample(
            teacher_obj, problems, cfg, seed=recipe.seed, folder=folder,
            progress=lambda d, t: logger.info("%s: %d/%d problems sampled", name, d, t))
        stats["sampling_seconds"] = time.perf_counter() - t0
        mlflow.log_metrics(finite(stats))
        tracking.log_table(samples.drop(columns=["response"]).assign(response=samples["response"].str[:2000]),
                           "samples/rejection_samples.json")
        for column in ("source", "level"):
            rates = samples.groupby(column)["kept"].mean().to_dict() if len(samples) else {}
            mlflow.log_metrics({f"acceptance_rate/{column}_{k}" if column == "level" else f"acceptance_rate/{k}":
                                float(v) for k, v in rates.items()})
        uri, _ = tracking.log_dataset(kept, "sft_traces", "generated", targets="answer",
                                      tags={"r1.teacher": teacher_obj.id, "r1.prompts": dataset_uri})
        shutil.rmtree(folder, ignore_errors=True)
        return {"run_id": run.info.run_id, "dataset_uri": uri, "digest": tracking.dataset_digest(uri) or "",
                "num_kept": int(stats["num_kept"]), "acceptance_rate": float(stats["acceptance_rate"]),
                "teacher": teacher_obj.id}


def _loggable(settings: dict) -> dict:
    """Flatten the endpoint settings for ``log_params`` (its API key is never in them: only the
    name of the variable that holds it)."""
    flat = {k: v for k, v in settings.items() if k != "endpoint"}
    for k, v in (settings.get("endpoint") or {}).items():
        flat[f"endpoint.{k}"] = v
    return flat


# ---------------------------------------------------------------- sft
def sft(recipe: Recipe, name: str, parent_run_id: str, data: str, student: str) -> dict[str, Any]:
    """Fine-tune ``student`` (a model URI or reference) with TRL's SFTTrainer on data set ``data``
    (a URI): SFT traces from rejection sampling (distillation), or curated problems whose worked
    solutions become traces (R1's cold start, :func:`r1core.rejection.reference_traces`; only
    those that verify). The result becomes a LoggedModel."""
    from r1core.sft import train_sft

    cfg = recipe.stages[name]
    traces_uri, student_uri = data, student
    with _stage_run(recipe, name, parent_run_id) as run:
        traces = tracking.read_dataset(traces_uri)
        if traces.empty:
            raise ValueError(f"stages.{name}: {traces_uri} holds no traces (the teacher kept none). Sample more "
                             "(rejection_sampling.num_samples, num_problems), use a stronger teacher, or set "
                             "rejection_sampling.fallback: reference where the problems have worked solutions.")
        model_obj, tok = models.load_model_and_tokenizer(student_uri)
        if "completion" in traces:
            tracking.log_input(tracking.pandas_dataset(traces, traces_uri, "sft_traces"), "training")
        else:  # problems with worked solutions: the cold-start traces
            from r1core.rejection import reference_traces

            tracking.log_input(tracking.pandas_dataset(traces, traces_uri, "curated", "answer"), "training")
            traces, stats = reference_traces(traces, cfg.prompt_template, tok)
            mlflow.log_metrics({f"cold_start/{k}": v for k, v in stats.items()})
            traces_uri, _ = tracking.log_dataset(traces, "cold_start_traces", "generated", targets="answer")
        mlflow.set_tags({"r1.input_model": student_uri, "r1.traces": traces_uri})
        out_dir = work_dir("sft", run.info.run_id)
        summary = train_sft(model_obj, tok, traces, cfg, str(out_dir), seed=recipe.seed)
        mlflow.log_metrics({f"summary/{k}": v for k, v in finite(summary).items()})
        info = tracking.log_model(model_obj, tok, name="student" if name == "sft" else name.replace("_", "-"),
                                  params={"num_traces": len(traces), "max_steps": cfg.max_steps},
                                  tags={TAG_MODEL_ROLE: "student", "r1.parent_model": student_uri,
                                        "r1.traces": traces_uri})
        shutil.rmtree(out_dir, ignore_errors=True)
        return {"run_id": run.info.run_id, "model_uri": f"models:/{info.model_id}", "model_id": info.model_id,
                "input_model": student_uri, "traces": traces_uri,
                **{k: float(v) for k, v in finite(summary).items()}}


# ---------------------------------------------------------------- register
def lineage_tags(recipe: Recipe, upstream_outputs: dict[str, dict]) -> dict[str, str]:
    """Tags naming every upstream stage's MLflow run and output, so a registered version leads
    back through each stage to the data: ``r1.run.<stage>``, ``r1.model.<stage>``,
    ``r1.dataset.<stage>`` (+ ``.digest``), ``r1.teacher.<stage>``, and ``r1.base_model``.
    ``upstream_outputs`` maps stage names (and ``base``) to their results."""
    tags = {"r1.recipe": recipe.name}
    for stage, out in upstream_outputs.items():
        if stage == "base":
            tags["r1.base_model"] = out["model_uri"]
            continue
        tags[f"r1.run.{stage}"] = out["run_id"]
        if "model_uri" in out:
            tags[f"r1.model.{stage}"] = out["model_uri"]
        if "dataset_uri" in out:
            tags[f"r1.dataset.{stage}"] = out["dataset_uri"]
            tags[f"r1.dataset.{stage}.digest"] = out.get("digest", "")
        if "teacher" in out:
            tags[f"r1.teacher.{stage}"] = out["teacher"]
    return tags


def register(recipe: Recipe, name: str, parent_run_id: str, model: str, evaluation: dict | None = None,
             lineage: dict[str, dict] | None = None) -> dict[str, Any]:
    """Register ``model`` (a ``models:/m-...`` URI) as a new model version tagged with its lineage
    (:func:`lineage_tags` of ``lineage``, the upstream stages' outputs) and ``evaluation``'s metrics;
    set ``challenger``, and ``champion`` when there is none or the model beats it on the gate
    metric by more than ``min_margin``. Never deletes a version; re-registering the same model
    returns its existing version.
    """
    cfg = recipe.stages[name]
    client = MlflowClient()
    with _stage_run(recipe, name, parent_run_id) as run:
        metrics = (evaluation or {}).get("metrics", {})
        gate_value = metrics.get(cfg.gate_metric)
        producer = next((o for o in (lineage or {}).values() if o.get("model_uri") == model), {})
        tags = {
            **lineage_tags(recipe, lineage or {}),
            "r1.pipeline_run_id": parent_run_id,
            "r1.parent_model": producer.get("input_model", ""),
            **{f"r1.metric.{tracking.mlflow_key(k)}": f"{v:.6g}" for k, v in metrics.items()},
        }
        model_id = model.removeprefix("models:/") if model.startswith("models:/m-") else None
        try:
            client.get_registered_model(cfg.model_name)
        except mlflow.exceptions.MlflowException:
            client.create_registered_model(cfg.model_name, description=f"Models of recipe {recipe.name}.")
        existing = [v for v in client.search_model_versions(f"name='{cfg.model_name}'")
                    if v.source == model or (model_id and getattr(v, "model_id", None) == model_id)]
        if existing:  # a re-run over a cached model: same version, no duplicate
            version = existing[0]
        else:
            version = mlflow.register_model(model, cfg.model_name, tags=tags)
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


STAGE_FUNCTIONS = {"curate": curate, "grpo": grpo, "rejection_sampling": rejection_sampling, "sft": sft,
                   "evaluate": evaluate, "register": register}
