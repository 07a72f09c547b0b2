"""The nightly evaluation's report: each alias against its previous evaluation, and the
challenger against the champion (markdown, for a Prefect artifact)."""

from __future__ import annotations

from r1core.compare import compare


def report(model_name: str, results: dict[str, dict]) -> tuple[str, list[str]]:
    """Markdown table of pass@1 per benchmark and alias with deltas; returns ``(markdown, regressed)``
    where ``regressed`` lists ``"<alias>:<benchmark>"`` that dropped beyond two standard errors
    against that alias's previous evaluation."""
    lines = [f"# Nightly evaluation: {model_name}", "",
             "| alias | model version | benchmark | pass@1 | vs previous | regression |", "|---|---|---|---|---|---|"]
    regressed = []
    for alias, res in results.items():
        for key, value in sorted(res["metrics"].items()):
            if not key.endswith("/pass@1"):
                continue
            bench = key.split("/")[0]
            delta = res.get("deltas", {}).get(f"{bench}/pass_at_1")
            flag = bench in res.get("regressions", [])
            if flag:
                regressed.append(f"{alias}:{bench}")
            lines.append(f"| {alias} | {res.get('canonical_model_uri', res['model_uri'])} | {bench} | {value:.4f} | "
                         f"{'' if delta is None else f'{delta:+.4f}'} | {'**yes**' if flag else 'no'} |")
    if "champion" in results and "challenger" in results:
        def mlflow_names(m):
            return {k.replace("@", "_at_"): v for k, v in m.items()}
        c = compare(mlflow_names(results["challenger"]["metrics"]), mlflow_names(results["champion"]["metrics"]),
                    results["champion"]["run_id"])
        lines += ["", "Challenger minus champion: " + (", ".join(
            f"{k.replace('_at_', '@')} {v:+.4f}" for k, v in sorted(c.deltas.items())) or "no common benchmark")]
    return "\n".join(lines), regressed
