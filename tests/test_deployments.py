"""Deployments: names, schedule and parameters that the Prefect UI shows."""

from __future__ import annotations


def test_deployments_have_names_schedule_and_typed_parameters():
    from deployments.serve import NIGHTLY_CRON, deployments

    deps = {d.name: d for d in deployments()}
    assert set(deps) == {"r1-pipeline", "curate", "grpo", "distill", "evaluate", "nightly-eval", "promote"}
    nightly = deps["nightly-eval"]
    assert nightly.schedules and nightly.schedules[0].schedule.cron == NIGHTLY_CRON == "0 2 * * *"
    assert nightly.parameters["model_name"] == "r1-quickstart-student"
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import r1_pipeline

    props = parameter_schema(r1_pipeline.fn).model_dump()["properties"]
    assert {"recipe", "overrides", "fresh"} <= set(props)
    assert props["recipe"]["description"]
