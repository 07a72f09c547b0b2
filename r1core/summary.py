"""The pipeline's closing summary: metrics and tags on the parent run, and a table for people."""

from __future__ import annotations

import os

import mlflow
from mlflow.tracking import MlflowClient

from r1core.config import Recipe

HEADLINE = {
    "curate": lambda o: f"{o['num_problems']} problems",
    "grpo": lambda o: _grpo_headline(o),
    "rejection_sampling": lambda o: f"{o['num_kept']} traces kept, teacher acceptance {o['acceptance_rate']:.1%}",
    "sft": lambda o: f"loss {o.get('loss_first', float('nan')):.3f}->{o.get('loss_last', float('nan')):.3f}",
    "evaluate": lambda o: _evaluation_headline(o["metrics"]),
    "register": lambda o: f"{o['name']} v{o['version']} {o['aliases']}",
}


def _grpo_headline(o: dict) -> str:
    """Each in-training evaluation set's pass@1 first -> last (with the steps), then the rewards first -> last."""
    sets = [k.split("/")[1] for k in o if k.startswith("eval/") and k.endswith("/pass@1_first")]
    parts = [f"{s} pass@1 {o[f'eval/{s}/pass@1_first']:.2f}->{o[f'eval/{s}/pass@1_last']:.2f} "
             f"(steps {o[f'eval/{s}/step_first']:.0f}->{o[f'eval/{s}/step_last']:.0f})" for s in sets]
    parts += [f"{k} {o[k + '_first']:.2f}->{o[k + '_last']:.2f}" for k in ("accuracy", "format", "tag_count")
              if k + "_first" in o]
    return ", ".join(parts) or "trained"


def _evaluation_headline(metrics: dict[str, float]) -> str:
    """pass@1 and cons@k per benchmark; a benchmark where every pass@1 is 0 says why, in a word."""
    shown = {k: v for k, v in metrics.items() if k.count("/") == 1
             and k.split("/")[1].startswith(("pass@1", "cons@")) and not k.endswith("_stderr")}
    parts = []
    for bench in dict.fromkeys(k.split("/")[0] for k in shown):
        text = ", ".join(f"{k} {v:.3f}" for k, v in shown.items() if k.startswith(bench + "/"))
        if all(v == 0 for k, v in shown.items() if k.startswith(bench + "/")):
            text += " (too hard for this model" + ("; heldout shows the gain)" if "heldout/pass@1" in shown else ")")
        parts.append(text)
    return ", ".join(parts)


def headline_evaluation(recipe: Recipe) -> str | None:
    """The evaluate stage whose metrics are the pipeline's headline: the one a register stage
    reads, else the last evaluate stage; None when the recipe evaluates nothing."""
    from r1core.graph import upstream

    for name in recipe.stages_of_type("register"):
        if (ev := upstream(recipe.stages[name].evaluation)) in recipe.stages:
            return ev
    evals = recipe.stages_of_type("evaluate")
    return evals[-1] if evals else None


def finish_pipeline(recipe: Recipe, parent_run_id: str, out: dict[str, dict]) -> None:
    """Copy metrics and output URIs onto the parent run: the headline evaluation's metrics under
    their own names (``math500/pass@1``, so runs of every recipe line up in MLflow's compare view),
    every stage's under ``<stage>/...``."""
    from r1core.tracking import mlflow_key

    client = MlflowClient()
    metrics = {}
    headline = headline_evaluation(recipe)
    for name, stage in recipe.stages.items():
        o = out.get(name, {})
        if stage.type == "evaluate":
            metrics.update({f"{name}/{k}": v for k, v in o.get("metrics", {}).items()} if name != headline
                           else o.get("metrics", {}))
        elif stage.type in ("grpo", "sft"):
            metrics.update({f"{name}/{k}": v for k, v in o.items() if isinstance(v, float)})
        elif stage.type == "rejection_sampling" and o:
            metrics[f"{name}/num_kept"] = o["num_kept"]
            metrics[f"{name}/acceptance_rate"] = o["acceptance_rate"]
    for k, v in metrics.items():
        client.log_metric(parent_run_id, mlflow_key(k), float(v))
    tags = {f"r1.run.{s}": o["run_id"] for s, o in out.items() if isinstance(o, dict) and "run_id" in o}
    tags.update({f"r1.model.{s}": o["model_uri"] for s, o in out.items() if isinstance(o, dict) and "model_uri" in o})
    for name in (n for n in recipe.stages_of_type("register") if n in out):
        tags["r1.registered"] = f"models:/{out[name]['name']}/{out[name]['version']}"
    for k, v in tags.items():
        client.set_tag(parent_run_id, k, v)
    client.set_terminated(parent_run_id, "FINISHED")


def rows(recipe: Recipe, out: dict[str, dict]) -> list[tuple[str, str, str]]:
    """``(stage, MLflow run id, headline)`` for each stage that ran, in recipe order."""
    table = []
    for name, stage in recipe.stages.items():
        if name in out:
            try:
                headline = HEADLINE[stage.type](out[name])
            except (KeyError, TypeError, ValueError):
                headline = ""
            table.append((name, out[name].get("run_id", ""), headline))
    return table


def mlflow_ui_url(path: str) -> str | None:
    """A link into the MLflow UI (``#/experiments/...``) when tracking talks to an MLflow server
    (``MLFLOW_TRACKING_URI=http...``); ``None`` for a local SQLite store, which has no UI address."""
    uri = mlflow.get_tracking_uri()
    return f"{uri.rstrip('/')}/#/{path}" if uri.startswith(("http://", "https://")) else None


def markdown(recipe: Recipe, parent_run_id: str, out: dict[str, dict]) -> str:
    """A markdown table of the run (published as a Prefect artifact), linked to the MLflow UI."""
    client = MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id

    def run_link(run_id: str) -> str:
        url = mlflow_ui_url(f"experiments/{exp}/runs/{run_id}") if run_id else None
        return f"[`{run_id}`]({url})" if url else f"`{run_id}`"

    lines = [f"# R1 pipeline: {recipe.name}", "", f"MLflow experiment `{recipe.experiment_name}`, "
             f"parent run {run_link(parent_run_id)}", "", "| stage | MLflow run | headline |", "|---|---|---|"]
    lines += [f"| {s} | {run_link(r)} | {h} |" for s, r, h in rows(recipe, out)]
    for name in (n for n in recipe.stages_of_type("register") if n in out):
        reg = out[name]
        url = mlflow_ui_url(f"models/{reg['name']}/versions/{reg['version']}")
        label = f"`models:/{reg['name']}/{reg['version']}`"
        lines += ["", f"Registered: {f'[{label}]({url})' if url else label} (aliases: {', '.join(reg['aliases'])})"]
    return "\n".join(lines)


def text_table(recipe: Recipe, parent_run_id: str, out: dict[str, dict]) -> str:
    """The closing table the CLI prints, with the command that opens the MLflow UI on this store."""
    body = rows(recipe, out)
    w0 = max(len("stage"), *(len(s) for s, _, _ in body))
    w1 = max(len("MLflow run id"), *(len(r) for _, r, _ in body))
    lines = [f"{'stage':<{w0}}  {'MLflow run id':<{w1}}  headline", f"{'-' * w0}  {'-' * w1}  {'-' * 8}"]
    lines += [f"{s:<{w0}}  {r:<{w1}}  {h}" for s, r, h in body]
    uri = mlflow.get_tracking_uri()
    lines += ["", f"parent run: {parent_run_id}  (experiment {recipe.experiment_name})"]
    if uri.startswith("sqlite:"):
        art = os.path.join(os.path.dirname(uri.removeprefix("sqlite:///")), "mlartifacts")
        lines.append(f"open the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri} "
                     f"--default-artifact-root {art} --port 5000")
    else:
        lines.append(f"MLflow: {uri}")
    return "\n".join(lines)
