"""Flow ``promote``: move a registered model's ``champion`` alias to its ``challenger`` when the
challenger passes the recipe's gate (see :mod:`r1core.promote`)."""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from r1core.config import load_recipe
from r1core.promote import promote as decide


@flow(name="promote")
def promote(
    model_name: Annotated[str, Field(description="Registered model whose aliases are compared.")] = "r1-quickstart-student",
    recipe: Annotated[str, Field(description="Recipe whose register stage sets the gate.")] = "recipes/quickstart.yaml",
    gate_metric: Annotated[str | None, Field(description="Metric to beat (default: the recipe's).")] = None,
    min_margin: Annotated[float | None, Field(description="Margin to beat it by (default: the recipe's).", ge=0)] = None,
    guard_benchmarks: Annotated[list[str] | None, Field(description="Benchmarks that must not regress beyond noise "
                                                        "(default: the recipe's).")] = None,
) -> dict:
    """Promote ``challenger`` to ``champion`` if it beats the champion on the gate metric by more
    than the margin without a regression beyond noise on the guard benchmarks. Idempotent.

    Args:
        model_name: Registered model whose challenger and champion aliases are compared.
        recipe: Recipe whose register stage sets gate_metric and min_margin.
        gate_metric: Metric to beat, e.g. math500/pass@1 (default: the recipe's).
        min_margin: Margin the challenger must beat the champion by (default: the recipe's).
        guard_benchmarks: Benchmarks whose pass@1 must not drop beyond two standard errors (default: the
            recipe's register.guard_benchmarks).
    """
    cfg = load_recipe(recipe)
    registers = [cfg.stages[n] for n in cfg.stages_of_type("register")]
    gate = gate_metric or (registers[-1].gate_metric if registers else "math500/pass@1")
    margin = min_margin if min_margin is not None else (registers[-1].min_margin if registers else 0.0)
    guards = guard_benchmarks if guard_benchmarks is not None else (registers[-1].guard_benchmarks if registers else [])
    d = decide(model_name, gate, margin, tuple(guards))
    get_run_logger().info("%s: %s", model_name, d.reason)
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in d.numbers.items())
    create_markdown_artifact(key=f"promote-{model_name}".lower().replace("_", "-"), description="Promotion decision",
                             markdown=f"# Promotion: {model_name}\n\n**{d.reason}** (challenger v{d.challenger}, "
                                      f"champion {'v' + d.champion if d.champion else 'none'})\n\n"
                                      f"| number | value |\n|---|---|\n{rows}")
    return {"promoted": d.promoted, "reason": d.reason, "challenger": d.challenger, "champion": d.champion,
            "numbers": d.numbers}
