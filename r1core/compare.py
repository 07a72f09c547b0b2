"""Comparing evaluations: deltas against the previous evaluation of the same model reference,
and the regression rule nightly evaluation uses.

A regression is a pass@1 drop larger than two standard errors of the difference,
``delta < -2 * sqrt(se_now^2 + se_before^2)`` (each ``se`` is pass@1's standard error over
problems, ``<bench>/pass_at_1_stderr``). Works on metric names as MLflow stores them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlflow.tracking import MlflowClient

PASS1 = "/pass_at_1"


@dataclass
class Comparison:
    """Deltas of ``<bench>/pass_at_1`` between a run and a baseline run.

    Attributes:
        baseline_run_id: the run compared against (``None``: nothing to compare).
        deltas: ``<bench>/pass_at_1`` -> now minus before.
        regressions: the benchmarks whose drop exceeds two standard errors of the difference.
    """

    baseline_run_id: str | None
    deltas: dict[str, float] = field(default_factory=dict)
    regressions: list[str] = field(default_factory=list)


def compare(now: dict[str, float], before: dict[str, float], baseline_run_id: str | None) -> Comparison:
    """Compare two metric dicts (MLflow names) by the regression rule in the module docstring.

    >>> c = compare({"m/pass_at_1": 0.40, "m/pass_at_1_stderr": 0.02},
    ...             {"m/pass_at_1": 0.50, "m/pass_at_1_stderr": 0.02}, "r0")
    >>> round(c.deltas["m/pass_at_1"], 2), c.regressions
    (-0.1, ['m'])
    """
    out = Comparison(baseline_run_id)
    for key, value in now.items():
        if not key.endswith(PASS1) or key not in before:
            continue
        delta = value - before[key]
        out.deltas[key] = delta
        se = math.sqrt(now.get(key + "_stderr", 0.0) ** 2 + before.get(key + "_stderr", 0.0) ** 2)
        if delta < -2 * se and delta < 0:
            out.regressions.append(key[: -len(PASS1)])
    return out


def previous_evaluation(experiment_id: str, model_ref: str, exclude_run_id: str) -> tuple[str | None, dict[str, float]]:
    """The latest finished evaluation run of ``model_ref`` (tag ``r1.evaluated_model``) before this one."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`r1.evaluated_model` = '{model_ref}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=10)
    for run in runs:
        if run.info.run_id != exclude_run_id:
            return run.info.run_id, dict(run.data.metrics)
    return None, {}
