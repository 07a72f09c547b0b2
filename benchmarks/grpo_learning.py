"""Does GRPO teach SmolLM2-135M the R1 format on this CPU? (issue #4's target)

Runs the curate and GRPO stages of ``recipes/grpo_smollm2_gsm8k.yaml`` (tracked in MLflow like
any pipeline run) and writes ``benchmarks/results/grpo_learning.json`` with the mean rewards over
the first and last 5 logged steps. Target: ``format_last5 - format_first5 >= 0.3`` within 40
steps, with accuracy not falling.

    python -m benchmarks.grpo_learning [--set grpo.max_steps=40 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import write_result

from mlflow.tracking import MlflowClient

from r1core import stages
from r1core.config import load_recipe
from r1core.settings import configure_environment
from r1core.tracking import mlflow_key

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "grpo_smollm2_gsm8k.yaml"
RESULTS = Path(__file__).parent / "results" / "grpo_learning.json"
CURVE = RESULTS.with_suffix(".png")


def plot(hist: dict[str, list], path: Path) -> None:
    """Each reward's mean against step (the curve the README shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, h in hist.items():
        h = sorted(h, key=lambda m: m.step)
        ax.plot([m.step for m in h], [m.value for m in h], marker=".", label=name)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.set_title("SmolLM2-135M on GSM8K, 2-core CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mean_of(history: list, n: int, last: bool) -> float:
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    part = values[-n:] if last else values[:n]
    return sum(part) / len(part) if part else float("nan")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    configure_environment()
    recipe = load_recipe(RECIPE, args.overrides)
    stages.validate(recipe)
    t0 = time.perf_counter()
    parent = stages.start_pipeline(recipe)
    base = stages.base_model(recipe)
    cur = stages.curate(recipe, "curate", parent)
    out = stages.grpo(recipe, "grpo", parent, data=cur["dataset_uri"], model=base["model_uri"])
    seconds = time.perf_counter() - t0
    client = MlflowClient()
    hist = {name: client.get_metric_history(out["run_id"], mlflow_key(f"rewards/{name}/mean"))
            for name in recipe.stages["grpo"].rewards}
    result = {"recipe": str(RECIPE.name), "steps": len(hist["format"]), "seconds": seconds,
              "grpo_run_id": out["run_id"], "model_uri": out["model_uri"]}
    for name in ("format", "accuracy", "tag_count"):
        if name in hist:
            result[f"{name}_first5"] = mean_of(hist[name], 5, last=False)
            result[f"{name}_last5"] = mean_of(hist[name], 5, last=True)
    result["format_gain"] = result["format_last5"] - result["format_first5"]
    result["target_met"] = bool(result["format_gain"] >= 0.3 and result["accuracy_last5"] >= result["accuracy_first5"]
                                and result["steps"] <= 40)
    plot(hist, CURVE)
    return write_result(RESULTS, result)


if __name__ == "__main__":
    main()
