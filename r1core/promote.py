"""Promotion through the MLflow registry: ``challenger`` becomes ``champion`` when it passes the gate.

The gate: the challenger's gate metric (e.g. ``math500/pass@1``) beats the champion's by more
than ``min_margin``, and no guard benchmark (e.g. ``aime24``) regressed beyond noise (a pass@1
drop larger than two standard errors of the difference, :func:`r1core.compare.compare`).

Each version's numbers are those of its latest evaluation of the exact version (a run tagged
``r1.evaluated_model_canonical = models:/<name>/<version>``, as the nightly evaluation writes),
else those recorded on the version when it was registered (tags ``r1.metric.<name>``). The
decision and the numbers are written as tags on both versions; no version is ever deleted, and
re-running with nothing changed decides the same and moves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mlflow
from mlflow.tracking import MlflowClient

from r1core.compare import compare
from r1core.tracking import mlflow_key


@dataclass
class Decision:
    """What :func:`promote` decided.

    Attributes:
        promoted: whether ``champion`` moved to the challenger.
        reason: the decision in words (also the ``r1.promote.decision`` tag).
        challenger, champion: the versions compared (champion ``None`` when there was none).
        numbers: the gate metric and the guard deltas that decided it.
    """

    promoted: bool
    reason: str
    challenger: str
    champion: str | None
    numbers: dict[str, float] = field(default_factory=dict)


def version_metrics(client: MlflowClient, name: str, version) -> tuple[dict[str, float], str]:
    """A version's metrics (MLflow names) and where they come from (a run id, or ``registration``)."""
    uri = f"models:/{name}/{version.version}"
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`r1.evaluated_model_canonical` = '{uri}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if runs:
        return dict(runs[0].data.metrics), runs[0].info.run_id
    prefix = "r1.metric."
    tags = {k[len(prefix):]: float(v) for k, v in version.tags.items() if k.startswith(prefix)}
    return tags, "registration"


def promote(name: str, gate_metric: str = "math500/pass@1", min_margin: float = 0.0,
            guard_benchmarks: tuple[str, ...] = ("aime24",)) -> Decision:
    """Compare ``challenger`` with ``champion`` of registered model ``name`` and move ``champion``
    when the challenger passes the gate (module docstring). Tags both versions with the decision.

    Raises:
        ValueError: the model has no ``challenger`` alias (register a version first).
    """
    client = MlflowClient()
    try:
        challenger = client.get_model_version_by_alias(name, "challenger")
    except mlflow.exceptions.MlflowException:
        raise ValueError(f"Registered model {name!r} has no 'challenger' alias: run a pipeline that registers "
                         "a version (its register stage sets challenger), or set the alias in the MLflow UI.") from None
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        champion = None
    gate = mlflow_key(gate_metric)
    challenger_v, champion_v = str(challenger.version), (str(champion.version) if champion else None)
    now, now_source = version_metrics(client, name, challenger)
    if champion is None:
        decision = Decision(True, "promoted: no champion yet", challenger_v, None, {gate: now.get(gate, float("nan"))})
    elif champion_v == challenger_v:
        decision = Decision(False, f"no change: v{challenger_v} is already champion", challenger_v, champion_v,
                            {gate: now.get(gate, float("nan"))})
    else:
        before, before_source = version_metrics(client, name, champion)
        decision = _decide(challenger_v, champion_v, now, before, gate, gate_metric, min_margin,
                           guard_benchmarks)
        client.set_model_version_tag(name, champion.version, "r1.promote.compared_with", f"v{challenger.version}")
        client.set_model_version_tag(name, champion.version, "r1.promote.metrics_source", before_source)
    if decision.promoted:
        client.set_registered_model_alias(name, "champion", challenger.version)
    tags = {"r1.promote.decision": decision.reason, "r1.promote.metrics_source": now_source,
            **{f"r1.promote.{k}": f"{v:.6g}" for k, v in decision.numbers.items()}}
    for key, value in tags.items():
        client.set_model_version_tag(name, challenger.version, key, value)
    if champion is not None and champion_v != challenger_v:
        client.set_model_version_tag(name, champion.version, "r1.promote.decision", decision.reason)
    return decision


def _decide(challenger: str, champion: str, now: dict, before: dict, gate: str, gate_metric: str, min_margin: float,
            guards: tuple[str, ...]) -> Decision:
    if gate not in now or gate not in before:
        missing = f"v{challenger}" if gate not in now else f"v{champion}"
        return Decision(False, f"kept v{champion}: {missing} has no {gate_metric}", challenger, champion)
    numbers = {f"challenger/{gate}": now[gate], f"champion/{gate}": before[gate]}
    guard_now = {k: v for k, v in now.items() if k.split("/")[0] in guards}
    guard_before = {k: v for k, v in before.items() if k.split("/")[0] in guards}
    guard = compare(guard_now, guard_before, None)
    numbers.update({f"delta/{k}": v for k, v in guard.deltas.items()})
    if guard.regressions:
        return Decision(False, f"kept v{champion}: {', '.join(guard.regressions)} regressed beyond noise",
                        challenger, champion, numbers)
    if now[gate] > before[gate] + min_margin:
        return Decision(True, f"promoted v{challenger}: {gate_metric} {now[gate]:.4g} > {before[gate]:.4g} + {min_margin}",
                        challenger, champion, numbers)
    return Decision(False, f"kept v{champion}: {gate_metric} {now[gate]:.4g} <= {before[gate]:.4g} + {min_margin}",
                    challenger, champion, numbers)
