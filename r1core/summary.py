"""The pipeline's closing summary: metrics and tags on the parent run, and a table for people."""

from __future__ import annotations

import os

import mlflow
from mlflow.tracking import MlflowClient

from r1core.config import Recipe

HEADLINE = {
    "curate": lambda o: f"{o['num_problems']} problems",
    "grpo": lambda o: ", ".join(f"{k} {o[k + '_first']:.2f}->{o[k + '_last']:.2f}"
                                for k in ("accuracy", "format", "tag_count") if k + "_first" in o) or "trained",
    "rejection_sampling": lambda o: f"{o['num_kept']} traces kept, teacher acceptance {o['acceptance_rate']:.1%}",
    "sft": lambda o: f"loss {o.get('loss_first', float('nan')):.3f}->{o.get('loss_last', float('nan')):.3f}",
    "evaluate": lambda o: ", ".join(f"{k} {v:.3f}" for k, v in o["metrics"].items()
                                    if k.count("/") == 1 and k.split("/")[1].startswith(("pass@1", "cons@"))
                                    and not k.endswith("_stderr")),
    "register": lambda o: f"{o['name']} v{o['version']} {o['aliases']}",
}


def finish_pipeline(parent_run_id: str, out: dict[str, dict]) -> None:
    """Copy headline metrics and output URIs onto the parent run."""
    client = MlflowClient()
    metrics = {}
    for k, v in out.get("evaluate", {}).get("metrics", {}).items():
        metrics[k] = v
    for stage in ("grpo", "sft"):
        for k, v in out.get(stage, {}).items():
            if isinstance(v, float):
                metrics[f"{stage}/{k}"] = v
    rs = out.get("rejection_sampling", {})
    if rs:
        metrics["rejection_sampling/num_kept"] = rs["num_kept"]
        metrics["rejection_sampling/acceptance_rate"] = rs["acceptance_rate"]
    from r1core.tracking import mlflow_key

    for k, v in metrics.items():
        client.log_metric(parent_run_id, mlflow_key(k), float(v))
    tags = {f"r1.run.{s}": o["run_id"] for s, o in out.items() if isinstance(o, dict) and "run_id" in o}
    for stage in ("base", "grpo", "sft"):
        if stage in out:
            tags[f"r1.model.{stage}"] = out[stage]["model_uri"]
    if "register" in out:
        tags["r1.registered"] = f"models:/{out['register']['name']}/{out['register']['version']}"
    for k, v in tags.items():
        client.set_tag(parent_run_id, k, v)
    client.set_terminated(parent_run_id, "FINISHED")


def rows(out: dict[str, dict]) -> list[tuple[str, str, str]]:
    """``(stage, MLflow run id, headline)`` for each stage that ran."""
    table = []
    for stage, fmt in HEADLINE.items():
        if stage in out:
            try:
                headline = fmt(out[stage])
            except (KeyError, TypeError, ValueError):
                headline = ""
            table.append((stage, out[stage].get("run_id", ""), headline))
    return table


def markdown(recipe: Recipe, parent_run_id: str, out: dict[str, dict]) -> str:
    """A markdown table of the run (published as a Prefect artifact)."""
    lines = [f"# R1 pipeline: {recipe.name}", "", f"MLflow experiment `{recipe.experiment_name}`, "
             f"parent run `{parent_run_id}`", "", "| stage | MLflow run | headline |", "|---|---|---|"]
    lines += [f"| {s} | `{r}` | {h} |" for s, r, h in rows(out)]
    return "\n".join(lines)


def text_table(recipe: Recipe, parent_run_id: str, out: dict[str, dict]) -> str:
    """The closing table the CLI prints, with the command that opens the MLflow UI on this store."""
    body = rows(out)
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
