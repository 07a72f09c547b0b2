"""Does R1-Zero make SmolLM2-135M better at reasoning on this CPU? (issue "R1-Zero that visibly learns")

Runs the curate and GRPO stages of ``recipes/r1_zero_procedural.yaml`` (tracked in MLflow like any
pipeline run: held-out pass@1 evaluated during RL, R1's figures in the GRPO run) and writes
``benchmarks/results/grpo_learning.json`` and ``grpo_learning.png`` (held-out pass@1 against step,
band of one standard error).

Targets: held-out pass@1 (k >= 4 samples, >= 64 held-out problems never trained on) rises by
>= 0.15 absolute and by >= 3 standard errors of the difference (paired over problems), within
<= 60 GRPO steps and <= 45 minutes for the whole benchmark.

    python -m benchmarks.grpo_learning [--set grpo.max_steps=40 ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import write_result

from mlflow.tracking import MlflowClient

from r1core import stages
from r1core.config import load_recipe
from r1core.settings import configure_environment
from r1core.tracking import mlflow_key

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "r1_zero_procedural.yaml"
RESULTS = Path(__file__).parent / "results" / "grpo_learning.json"
CURVE = RESULTS.with_suffix(".png")


def plot(curves: dict[str, list[tuple[int, float, float]]], path: Path, title: str) -> None:
    """pass@1 against step per evaluation set, with a band of one standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, points in curves.items():
        steps, p1, se = zip(*points)
        ax.plot(steps, p1, marker="o", label=name)
        ax.fill_between(steps, [a - b for a, b in zip(p1, se)], [a + b for a, b in zip(p1, se)], alpha=0.2)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("pass@1 (k samples, T=0.6)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    configure_environment()
    recipe = load_recipe(RECIPE, args.overrides)
    stages.validate(recipe)
    cfg = recipe.stages["grpo"]
    t0 = time.perf_counter()
    parent = stages.start_pipeline(recipe)
    base = stages.base_model(recipe)
    cur = stages.run_stage(recipe, "curate", parent)
    out = stages.run_stage(recipe, "grpo", parent, data=cur["dataset_uri"], model=base["model_uri"])
    seconds = time.perf_counter() - t0
    client = MlflowClient()
    tasks = recipe.stages["curate"].reasoning_gym.tasks
    result = {"recipe": RECIPE.name, "task": ", ".join(f"{t.name} {json.dumps(t.config)}" for t in tasks),
              "model": recipe.model, "k": cfg.eval.num_samples, "steps": cfg.max_steps, "seconds": seconds,
              "grpo_run_id": out["run_id"], "model_uri": out["model_uri"]}
    curves = {}
    for spec in cfg.eval.benchmarks:
        name = spec.split(":")[0]
        prefix = "heldout" if name == "heldout" else name
        hist = sorted(client.get_metric_history(out["run_id"], mlflow_key(f"eval/{name}/pass@1")), key=lambda m: m.step)
        errs = {m.step: m.value for m in client.get_metric_history(out["run_id"], mlflow_key(f"eval/{name}/pass@1_stderr"))}
        curves[name] = [(m.step, m.value, errs.get(m.step, 0.0)) for m in hist]
        gain, gain_se = out.get(f"eval/{name}/pass@1_gain", float("nan")), out.get(f"eval/{name}/pass@1_gain_stderr", float("nan"))
        result.update({f"{prefix}_pass_at_1_start": out[f"eval/{name}/pass@1_first"],
                       f"{prefix}_pass_at_1_end": out[f"eval/{name}/pass@1_last"],
                       f"{prefix}_stderr_start": out[f"eval/{name}/pass@1_stderr_first"],
                       f"{prefix}_stderr_end": out[f"eval/{name}/pass@1_stderr_last"],
                       f"{prefix}_gain": gain, f"{prefix}_gain_stderr": gain_se,
                       f"{prefix}_gain_in_stderrs": gain / gain_se if gain_se else float("nan"),
                       f"{prefix}_curve": [{"step": s, "pass_at_1": v, "stderr": e} for s, v, e in curves[name]]})
    result["heldout_problems"] = cur.get("heldout_problems", 0)
    for key in ("mean_length", "reflection_rate", "format", "accuracy"):
        for end in ("first", "last"):
            if f"{key}_{end}" in out:
                result[f"train_{key}_{end}"] = out[f"{key}_{end}"]
    result["target_met"] = bool(result.get("heldout_gain", 0) >= 0.15 and result.get("heldout_gain_in_stderrs", 0) >= 3
                                and result["steps"] <= 60 and result["heldout_problems"] >= 64 and result["k"] >= 4
                                and seconds <= 45 * 60)
    plot(curves, CURVE, f"R1-Zero on {recipe.model}, 2-core CPU\nheld-out {' + '.join(t.name for t in tasks)}")
    return write_result(RESULTS, result)


if __name__ == "__main__":
    main()
