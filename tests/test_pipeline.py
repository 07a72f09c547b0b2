"""The whole r1-pipeline flow on a tiny random model, under Prefect's test harness,
checked through MlflowClient: parent run, one child per stage, datasets, models, registry."""

from __future__ import annotations

import yaml
import pytest
from mlflow.tracking import MlflowClient

from r1core.config import STAGE_TYPES

#: The stage types the tiny pipeline runs: all but compare (tests/test_distill_report.py, and distill in test_graph).
PIPELINE_TYPES = tuple(t for t in STAGE_TYPES if t != "compare")


def tiny_recipe(tmp_path, model_dir, name="tinypipe") -> str:
    recipe = {
        "name": name,
        "model": str(model_dir),
        "stages": {
            "curate": {"dataset": "gsm8k:train", "num_problems": 8},
            "grpo": {"num_generations": 2, "max_completion_length": 8, "max_steps": 1,
                     "args": {"per_device_train_batch_size": 4}},
            "rejection_sampling": {"teacher": "grpo.output", "num_problems": 3, "num_samples": 2,
                                   "max_new_tokens": 8, "prompt_template": "r1_zero", "prefill": "<think>\n",
                                   "fallback": "reference"},
            "sft": {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 256},
            "evaluate": {"model": "sft.output", "benchmarks": ["math500", "aime24"], "limit": 2, "num_samples": 2,
                         "max_new_tokens": 8, "budget_forcing": {"max_thinking_tokens": [2, 4], "answer_tokens": 2}},
            "register": {"model_name": f"{name}-student", "guard_benchmarks": ["aime24"]},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory, tiny_model_dir, data_dir, prefect_harness):
    from flows.pipeline import r1_pipeline

    path = tiny_recipe(tmp_path_factory.mktemp("recipe"), tiny_model_dir)
    first = r1_pipeline(recipe=path)
    second = r1_pipeline(recipe=path)  # same inputs: every cached stage is skipped
    return first, second, path


def test_parent_and_one_child_per_stage(pipeline_runs):
    first, _, _ = pipeline_runs
    client = MlflowClient()
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"]
    assert parent.data.tags["r1.recipe"] == "tinypipe"
    assert "r1.version.trl" in parent.data.tags
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["r1.stage"] for c in children) == sorted(PIPELINE_TYPES)
    assert all(c.data.tags["r1.stage_type"] == c.data.tags["r1.stage"] for c in children)
    assert all(c.data.tags["prefect.flow_run_id"] == parent.data.tags["prefect.flow_run_id"] for c in children)
    assert "math500/pass_at_1" in parent.data.metrics


def test_prefect_orders_the_stages_by_their_inputs(pipeline_runs):
    """Each stage task is submitted with its upstream tasks' futures: Prefect records them as the
    task run's inputs (the edges of the flow run's graph in the UI)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, TaskRunFilter,
                                                TaskRunFilterFlowRunId)

    first, _, _ = pipeline_runs
    pipeline_id = MlflowClient().get_run(first["parent_run_id"]).data.tags["prefect.flow_run_id"]
    with get_client(sync_client=True) as client:
        graph_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline_id])))
        assert [r.name for r in graph_runs] and {r.flow_id for r in graph_runs}
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[r.id for r in graph_runs])))
    by_name = {r.name: r for r in runs}
    assert set(PIPELINE_TYPES) <= set(by_name)

    def upstream(stage):
        return {str(i.id) for i in by_name[stage].task_inputs.get("upstream", [])}

    assert str(by_name["curate"].id) in upstream("grpo")
    assert {str(by_name["grpo"].id), str(by_name["curate"].id)} <= upstream("rejection_sampling")
    assert str(by_name["rejection_sampling"].id) in upstream("sft") and str(by_name["sft"].id) in upstream("evaluate")
    assert str(by_name["evaluate"].id) in upstream("register")


def test_datasets_are_logged_with_contexts(pipeline_runs):
    first, _, _ = pipeline_runs
    client = MlflowClient()

    def inputs(stage):
        run = client.get_run(first[stage]["run_id"])
        return {(d.dataset.name, next((t.value for t in d.tags if t.key == "mlflow.data.context"), ""))
                for d in run.inputs.dataset_inputs}

    assert ("curated", "training") in inputs("curate")
    assert ("sft_traces", "generated") in inputs("rejection_sampling")
    assert ("sft_traces", "training") in inputs("sft")
    assert {("math500", "evaluation"), ("aime24", "evaluation")} <= inputs("evaluate")
    cur = client.get_run(first["curate"]["run_id"]).data.metrics
    assert cur["decontaminated/gsm8k_test"] == 94 and cur["gold_unparsable_removed"] == 0  # 8-gram overlap
    traces = [d for d in client.get_run(first["rejection_sampling"]["run_id"]).inputs.dataset_inputs
              if d.dataset.name == "sft_traces"][0]
    lineage = {t.key: t.value for t in traces.tags}
    assert lineage["r1.teacher"] == first["grpo"]["model_uri"] and lineage["r1.prompts"] == first["curate"]["dataset_uri"]
    rs = client.get_run(first["rejection_sampling"]["run_id"]).data.metrics
    assert rs["num_kept"] >= 1 and rs["num_kept"] == rs["num_kept_teacher"] + rs["num_kept_reference"]


def test_models_and_registry_lineage(pipeline_runs):
    import mlflow

    first, _, _ = pipeline_runs
    client = MlflowClient()
    for stage in ("grpo", "sft"):
        model = mlflow.get_logged_model(first[stage]["model_id"])
        assert model.source_run_id == first[stage]["run_id"]
    student = mlflow.get_logged_model(first["sft"]["model_id"])
    assert any(m.key == "math500/pass_at_1" for m in student.metrics or [])  # eval metrics attached to the model

    reg = first["register"]
    version = client.get_model_version(reg["name"], reg["version"])
    assert set(version.aliases) == {"challenger", "champion"}  # first version: champion too
    tags = version.tags
    assert tags["r1.run.sft"] == first["sft"]["run_id"]
    assert tags["r1.dataset.curate.digest"] and tags["r1.dataset.rejection_sampling.digest"]
    assert tags["r1.teacher.rejection_sampling"] == first["grpo"]["model_uri"]
    assert tags["r1.parent_model"] == first["sft"]["input_model"] == first["base"]["model_uri"]
    assert tags["r1.model.grpo"] == first["grpo"]["model_uri"]
    assert tags["r1.base_model"].startswith("models:/m-")


def test_rerun_skips_completed_stages(pipeline_runs):
    first, second, _ = pipeline_runs
    for stage in ("curate", "grpo", "rejection_sampling", "sft", "evaluate"):
        assert second[stage]["run_id"] == first[stage]["run_id"], stage
    assert second["register"]["version"] == first["register"]["version"]  # idempotent
    assert second["parent_run_id"] != first["parent_run_id"]


def test_stage_flows_run_their_stages_and_reuse_the_cache(pipeline_runs):
    from flows.pipeline import r1_pipeline

    first, _, path = pipeline_runs
    out = r1_pipeline(recipe=path, targets=["grpo"])  # what the r1-pipeline/grpo deployment runs
    assert set(out) == {"parent_run_id", "base", "curate", "grpo"}  # grpo and what it needs, nothing after
    assert out["grpo"]["run_id"] == first["grpo"]["run_id"]  # completed before: from the cache


def test_nightly_eval_compares_with_the_previous_night(pipeline_runs):
    from flows.nightly import nightly_eval

    first, _, path = pipeline_runs
    name = first["register"]["name"]
    night1 = nightly_eval(model_name=name, recipe=path, return_state=True)
    night2 = nightly_eval(model_name=name, recipe=path, return_state=True)
    assert night1.is_completed() and night2.is_completed()
    r1, r2 = night1.result(), night2.result()
    assert set(r2) == {"champion", "challenger"}
    assert r2["champion"]["canonical_model_uri"] == f"models:/{name}/1"
    assert r2["champion"]["previous_run_id"] == r1["champion"]["run_id"]  # same alias, the night before
    assert r2["challenger"]["previous_run_id"] == r1["challenger"]["run_id"]
    assert r2["champion"]["regressions"] == []
    tags = MlflowClient().get_run(r2["champion"]["run_id"]).data.tags
    assert tags["r1.regression"] == "false" and tags["r1.evaluated_model"] == f"models:/{name}@champion"
    assert tags["prefect.flow_run_id"] and tags["prefect.flow_run_url"]  # the nightly flow run, linked back
    import mlflow

    from r1core.models import logged_model_id

    assert logged_model_id(f"models:/{name}@champion") == first["sft"]["model_id"]
    student = mlflow.get_logged_model(first["sft"]["model_id"])   # alias evaluations reach the LoggedModel
    nightly_runs = {r[a]["run_id"] for r in (r1, r2) for a in r}
    assert any(m.key == "math500/pass_at_1" and m.run_id in nightly_runs for m in student.metrics or [])


def test_budget_forcing_sweep_is_logged(pipeline_runs):
    first, _, _ = pipeline_runs
    client = MlflowClient()
    run = client.get_run(first["evaluate"]["run_id"])
    for bench in ("math500", "aime24"):
        for budget in (2, 4):
            assert f"{bench}/budget/{budget}/pass_at_1" in run.data.metrics
    files = {a.path for a in client.list_artifacts(run.info.run_id, "budget_forcing")}
    assert {"budget_forcing/accuracy_vs_budget.png", "budget_forcing/results.json"} <= files


def test_promote_moves_champion_only_through_the_gate_and_is_idempotent(pipeline_runs):
    """Versions with recorded metrics: better on MATH-500 -> promoted; better but AIME down beyond
    noise -> kept; worse -> kept; re-running changes nothing; no version is ever deleted."""
    import mlflow

    from flows.promote import promote

    first, _, path = pipeline_runs
    client = MlflowClient()
    name = "promote-test"
    client.create_registered_model(name)

    def version(math500: float, aime: float) -> str:
        tags = {"r1.metric.math500/pass_at_1": str(math500), "r1.metric.math500/pass_at_1_stderr": "0.02",
                "r1.metric.aime24/pass_at_1": str(aime), "r1.metric.aime24/pass_at_1_stderr": "0.02"}
        return mlflow.register_model(first["sft"]["model_uri"], name, tags=tags).version

    v1 = version(0.30, 0.10)
    client.set_registered_model_alias(name, "champion", v1)
    v2 = version(0.40, 0.10)
    client.set_registered_model_alias(name, "challenger", v2)
    out = promote(model_name=name, recipe=path)
    assert out["promoted"] and client.get_model_version_by_alias(name, "champion").version == v2
    assert client.get_model_version(name, v2).tags["r1.promote.decision"].startswith(f"promoted v{v2}")
    assert client.get_model_version(name, v1).tags["r1.promote.compared_with"] == f"v{v2}"
    again = promote(model_name=name, recipe=path)
    assert not again["promoted"] and "already champion" in again["reason"]
    assert client.get_model_version_by_alias(name, "champion").version == v2

    v3 = version(0.50, 0.00)  # AIME drop 0.10 > 2 * sqrt(0.02^2 + 0.02^2)
    client.set_registered_model_alias(name, "challenger", v3)
    out = promote(model_name=name, recipe=path)
    assert not out["promoted"] and "aime24 regressed beyond noise" in out["reason"]
    v4 = version(0.35, 0.10)
    client.set_registered_model_alias(name, "challenger", v4)
    out = promote(model_name=name, recipe=path, min_margin=0.0)
    assert not out["promoted"] and "0.35 <= 0.4" in out["reason"]
    assert client.get_model_version_by_alias(name, "champion").version == v2
    assert len(client.search_model_versions(f"name='{name}'")) == 4


def test_summary_links_runs_and_the_registered_version(pipeline_runs, monkeypatch):
    from r1core import summary
    from r1core.config import load_recipe

    first, _, path = pipeline_runs
    recipe = load_recipe(path)
    plain = summary.markdown(recipe, first["parent_run_id"], first)  # SQLite store: no UI address
    assert f"| sft | `{first['sft']['run_id']}` |" in plain
    assert f"Registered: `models:/{first['register']['name']}/{first['register']['version']}`" in plain
    monkeypatch.setattr(summary, "mlflow_ui_url", lambda p: f"http://mlflow.test/#/{p}")
    linked = summary.markdown(recipe, first["parent_run_id"], first)
    assert f"/runs/{first['sft']['run_id']})" in linked
    assert f"(http://mlflow.test/#/models/{first['register']['name']}/versions/{first['register']['version']})" in linked


def test_release_memory_returns_freed_heap_to_the_os(caplog):
    """Freed heap below a live allocation stays resident until ``release_memory`` trims it (what
    the pipeline does after each stage, so stages sharing its process do not add up)."""
    import ctypes.util
    import logging

    from r1core.stage_utils import _resident_gb, release_memory

    if not ctypes.util.find_library("c") or _resident_gb() == 0.0:
        pytest.skip("needs glibc and /proc")
    chunks = [bytearray(64 * 1024) for _ in range(4000)]  # ~256 MB of heap (below malloc's mmap threshold)
    for c in chunks:
        c[::4096] = b"x" * len(c[::4096])  # touch every page
    pin = bytearray(64 * 1024)  # a live block above them: free() alone cannot shrink the heap
    del chunks
    held = _resident_gb()
    with caplog.at_level(logging.INFO, logger="r1core.stages"):
        release_memory("test")
    assert held - _resident_gb() > 0.15, "malloc_trim returned less than 150 MB of the ~256 MB freed"
    assert "after stage test: resident memory" in caplog.text
    del pin
