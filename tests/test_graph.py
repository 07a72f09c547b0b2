"""Recipes as stage graphs: checks before anything runs, run order, and the shipped CPU recipes
end to end (on the tiny model, same graphs) with lineage from the registered model to the data."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from r1core import graph
from r1core.config import RecipeError, evaluation_recipe, load_recipe, recipe_from_dict
from tests.tiny import shrink_recipe

ROOT = Path(__file__).resolve().parents[1]


def _recipe(stages: dict, **kw):
    return recipe_from_dict({"name": "g", "stages": stages, **kw})


@pytest.mark.parametrize("stages,message", [
    ({"curate": {}, "grpo": {"model": "sft_coldstart.output"}},
     "stages.grpo.model: 'sft_coldstart.output' names no stage of this recipe (its stages: curate, grpo)"),
    ({"curate": {}, "grpo": {}, "sft": {"data": "grpo.output"}},
     "stages.sft.data: 'grpo.output' is a model (stage 'grpo' is a grpo stage); this input takes a dataset"),
    ({"curate": {}, "grpo": {}, "evaluate": {"model": "grpo"}},
     "stages.evaluate.model: 'grpo' is a stage; its output is 'grpo.output'"),
    ({"curate": {}, "sft": {"data": "gsm8k:train"}}, "stages.sft.data: 'gsm8k:train' is not a stage output"),
    ({"curate": {}, "warmup": {"data": "curate.output"}}, "stages.warmup: give the stage a type"),
    ({"curate": {}, "grpo": {}, "sft": {"type": "sft", "data": "curate.output"},
      "evaluate": {"model": "sft.output"}, "register": {"model": "grpo.output"}},
     "stages.register.evaluation: stage 'evaluate' evaluates 'sft.output', but this stage registers 'grpo.output'"),
    ({"curate": {"pass_rate": {"model": "grpo.output"}}, "grpo": {}}, "stages form a cycle: curate -> grpo -> curate"),
    ({"curate": {}, "a": {"type": "sft", "data": "curate.output", "student": "b.output"},
      "b": {"type": "sft", "data": "curate.output", "student": "a.output"}}, "stages form a cycle: a -> b -> a"),
    ({"curate": {}, "grpo": {"max_stepz": 1}}, "stages.grpo.max_stepz: unknown key"),
    ({}, "stages: Value error, list at least one stage"),
])
def test_bad_graphs_are_named_before_anything_runs(stages, message):
    with pytest.raises(RecipeError) as err:
        _recipe(stages)
    assert message in str(err.value)


def test_waves_run_independent_stages_together_and_overrides_find_stages():
    r = _recipe({"curate": {}, "grpo": {}, "rejection_sampling": {"teacher": "base"},
                 "sft": {}, "eval_policy": {"type": "evaluate", "model": "grpo.output"},
                 "evaluate": {"model": "sft.output"}})
    assert graph.waves(r) == [["curate"], ["grpo", "rejection_sampling"], ["sft", "eval_policy"], ["evaluate"]]
    assert graph.ancestors(r, "evaluate") == ["curate", "rejection_sampling", "sft"]
    r2 = recipe_from_dict(r.model_dump(mode="json"), ["grpo.max_steps=2", "eval_policy.limit=null"])
    assert r2.stages["grpo"].max_steps == 2 and r2.stages["eval_policy"].limit is None
    inputs = graph.resolve_inputs(r, "sft", {"base": {"model_uri": "models:/m-b"},
                                             "rejection_sampling": {"dataset_uri": "runs:/x/data"}})
    assert inputs == {"data": "runs:/x/data", "student": "models:/m-b"}


def test_evaluation_recipe_takes_the_protocol_of_the_evaluate_stage():
    r = load_recipe(ROOT / "recipes" / "s1.yaml")
    ev, name = evaluation_recipe(r, "models:/x@champion", settings={"limit": 3, "budget_forcing": {"num_waits": 0}})
    assert name == "evaluate" and list(ev.stages) == ["evaluate"]
    st = ev.stages["evaluate"]
    assert st.model == "models:/x@champion" and st.limit == 3 and st.prompt_template == "r1_zero"
    assert st.budget_forcing.num_waits == 0 and st.budget_forcing.max_thinking_tokens == [32, 64, 128]
    with pytest.raises(RecipeError, match="not an evaluate stage"):
        evaluation_recipe(r, "x", stage="sft")


# quickstart's graph is checked in test_learning_signals: its rejection sampling needs a teacher that
# solves some problems (procedural rows have no worked solutions to fall back on), which a random model is not.
CPU_RECIPES = ["r1_zero", "r1", "distill", "s1"]


@pytest.fixture(scope="module")
def shipped_runs(tmp_path_factory, tiny_model_dir, data_dir, prefect_harness):
    from flows.pipeline import r1_pipeline

    folder = tmp_path_factory.mktemp("shipped")
    runs = {}
    for name in CPU_RECIPES:
        recipe = shrink_recipe(yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text()), tiny_model_dir,
                               f"tiny-{name.replace('_', '-')}")
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        runs[name] = (load_recipe(path), r1_pipeline(recipe=str(path)))
    return runs


@pytest.mark.parametrize("name", CPU_RECIPES)
def test_shipped_recipe_runs_every_stage_as_a_nested_run(shipped_runs, name):
    recipe, out = shipped_runs[name]
    client = MlflowClient()
    parent = client.get_run(out["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["r1.stage"] for c in children) == sorted(recipe.stages)
    assert {c.data.tags["r1.stage"]: c.data.tags["r1.stage_type"] for c in children} == \
        {n: s.type for n, s in recipe.stages.items()}
    assert all(c.info.status == "FINISHED" for c in children)
    assert "math500/pass_at_1" in parent.data.metrics


def test_r1_lineage_walks_back_through_every_stage_to_the_data(shipped_runs):
    """The registered model of the four-stage R1 recipe leads back, tag by tag, to the curated set."""
    import mlflow

    recipe, out = shipped_runs["r1"]
    client = MlflowClient()
    reg = out["register"]
    version = client.get_model_version(reg["name"], reg["version"])
    assert version.source == out["grpo_final"]["model_uri"]
    tags = version.tags
    for stage in ("curate", "sft_coldstart", "grpo", "rejection_sampling", "sft", "grpo_final", "evaluate"):
        assert tags[f"r1.run.{stage}"] == out[stage]["run_id"], stage
    # model by model: grpo_final <- sft <- base; grpo <- sft_coldstart <- base; teacher = grpo
    chain = {s: mlflow.get_logged_model(out[s]["model_id"]).tags.get("r1.parent_model")
             for s in ("grpo_final", "sft", "grpo", "sft_coldstart")}
    assert chain == {"grpo_final": out["sft"]["model_uri"], "sft": out["base"]["model_uri"],
                     "grpo": out["sft_coldstart"]["model_uri"], "sft_coldstart": out["base"]["model_uri"]}
    assert tags["r1.teacher.rejection_sampling"] == out["grpo"]["model_uri"]
    # the cold start trained on traces written from the curated set's worked solutions
    cold = client.get_run(out["sft_coldstart"]["run_id"])
    assert cold.data.metrics["cold_start/num_kept"] >= 1
    assert {d.dataset.name for d in cold.inputs.dataset_inputs} >= {"curated", "cold_start_traces"}
    assert tags["r1.dataset.curate"] == out["curate"]["dataset_uri"]


def test_s1_recipe_filters_by_pass_rate_and_sweeps_budgets(shipped_runs):
    _, out = shipped_runs["s1"]
    client = MlflowClient()
    cur = client.get_run(out["curate"]["run_id"]).data.metrics
    assert cur["pass_rate/candidates"] == 8 and "pass_rate/kept" in cur
    ev = client.get_run(out["evaluate"]["run_id"]).data.metrics
    assert {"math500/budget/2/pass_at_1", "math500/budget/4/pass_at_1"} <= set(ev)


def test_independent_stages_run_concurrently(tmp_path, tiny_model_dir, data_dir, prefect_harness):
    """Two evaluations of one model share a wave; with concurrency 2 their MLflow runs overlap."""
    from flows.pipeline import r1_pipeline

    tiny = {"benchmarks": ["aime24"], "limit": 2, "num_samples": 1, "max_new_tokens": 16}
    recipe = {"name": "tiny-concurrent", "model": str(tiny_model_dir), "concurrency": 2,
              "stages": {"eval_a": {"type": "evaluate", "model": "base", **tiny},
                         "eval_b": {"type": "evaluate", "model": "base", "temperature": 1.0, **tiny}}}
    path = tmp_path / "concurrent.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = r1_pipeline(recipe=str(path))
    client = MlflowClient()
    a, b = (client.get_run(out[s]["run_id"]).info for s in ("eval_a", "eval_b"))
    assert a.start_time < b.end_time and b.start_time < a.end_time
