"""The distillation report (R1 Table 5): the gain-recovered fraction on handmade metrics, the
n-gram contamination check, the compare stage's graph checks, and the stage itself with three tiny
models (student, teacher, base) under one protocol, its table, figure and contamination tags."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from r1core.config import RecipeError, recipe_from_dict
from r1core.distill_report import gain_recovered, ngram_overlap, report_table, trace_texts

ROOT = Path(__file__).resolve().parents[1]
GENERAL = ROOT / "recipes" / "data" / "general.jsonl"


def _metrics(p1: float, se: float, tokens: float) -> dict[str, float]:
    return {"math500/pass@1": p1, "math500/pass@1_stderr": se, "math500/mean_completion_tokens": tokens}


def test_gain_recovered_on_handmade_metrics():
    assert gain_recovered(0.5, 0.8, 0.2) == pytest.approx(0.5)
    assert gain_recovered(0.1, 0.8, 0.2) == pytest.approx(-1 / 6)  # the student lost ground
    assert gain_recovered(0.9, 0.8, 0.2) == pytest.approx(7 / 6)  # it beat the teacher
    assert math.isnan(gain_recovered(0.5, 0.4, 0.4)) and math.isnan(gain_recovered(math.nan, 0.8, 0.2))
    table = report_table({"student": _metrics(0.5, 0.1, 300), "teacher": _metrics(0.8, 0.05, 900),
                          "base": _metrics(0.2, 0.08, 120)},
                         {"student": "models:/m-s", "teacher": "t", "base": "models:/m-b"}, ["math500"])
    assert list(table["model"]) == ["student", "teacher", "base"]
    assert table["math500/gain_recovered"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert table["math500/pass@1_stderr"].tolist() == [0.1, 0.05, 0.08]
    assert table["math500/mean_completion_tokens"].tolist() == [300, 900, 120]
    flat = report_table({r: _metrics(0.3, 0.1, 10) for r in ("student", "teacher", "base")},
                        {r: r for r in ("student", "teacher", "base")}, ["math500"])
    assert flat["math500/gain_recovered"].isna().all()


def test_overlap_flags_a_pasted_problem_and_not_a_clean_set():
    problems = {"long": "Let $x$ be the number of ways to arrange the letters of the word BANANA so that no two "
                        "A's are adjacent. Find $x$.",
                "short": "Simplify $\\sqrt{242}$."}
    clean = ["The word APPLE has five letters, and two of them are P.", "I would like a glass of water, please."]
    assert not ngram_overlap(clean, problems).flagged
    pasted = clean + ["Q: let x be the NUMBER of ways to arrange the letters of the word banana so that no two "
                      "(different wording after) ..."]
    o = ngram_overlap(pasted, problems, n=13, benchmark="toy")
    assert o.flagged and o.dirty == ["long"] and o.contaminated_traces == [2]
    assert o.metrics()["contamination/toy/dirty_fraction"] == 0.5
    assert ngram_overlap(["First, simplify sqrt(242) = 11 sqrt 2."], problems).dirty == ["short"]  # shorter: whole
    assert not ngram_overlap(pasted, problems, n=40).flagged  # 40-grams: the problem is matched whole, not found
    rows = pd.DataFrame({"prompt": [[{"role": "user", "content": "a b"}]],
                         "completion": [[{"role": "assistant", "content": "c d"}]]})
    assert trace_texts(rows) == ["a b\nc d"]


def _cmp_recipe(**compare) -> dict:
    return {"name": "cmp", "stages": {
        "curate": {}, "rejection_sampling": {"teacher": "base"}, "sft": {},
        "evaluate": {"model": "sft.output"}, "register": {"model": "sft.output"},
        "compare": {"teacher": "base", **compare}}}


@pytest.mark.parametrize("compare,message", [
    ({"protocol": "sft"}, "stages.compare.protocol: 'sft' is not an evaluate stage of this recipe"),
    ({"student": "base", "registration": "register.output"},
     "stages.compare.registration: stage 'register' registers 'sft.output', but this stage reports on student 'base'"),
    ({"registration": "evaluate.output"}, "stages.compare.registration: 'evaluate.output' is a evaluation"),
    ({"traces": "sft.output"}, "stages.compare.traces: 'sft.output' is a model"),
    ({"overrides": {"limt": 3}}, "stages.compare.overrides: Value error, not evaluate settings: limt: unknown key"),
    ({"overrides": {"model": "x"}}, "model cannot be overridden"),
])
def test_bad_compare_stages_are_named_when_the_recipe_loads(compare, message):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(_cmp_recipe(**compare))
    assert message in str(err.value)


def test_the_report_waits_for_the_registration_it_tags():
    from r1core import graph

    r = recipe_from_dict(_cmp_recipe(registration="register.output"))
    assert graph.waves(r)[-1] == ["compare"] and graph.dependencies(r)["compare"] == ["sft", "register"]
    inputs = graph.resolve_inputs(r, "compare", {"base": {"model_uri": "models:/m-b"}, "sft": {"model_uri": "models:/m-s"},
                                                 "register": {"name": "n", "version": "1"}})
    assert inputs == {"student": "models:/m-s", "teacher": "models:/m-b", "base": "models:/m-b",
                      "registration": {"name": "n", "version": "1"}}


@pytest.fixture(scope="module")
def three_models(tmp_path_factory, tiny_model_dir, smollm2_tokenizer_dir):
    """Base (the session's tiny model, seed 0), student (seed 1) and teacher (seed 2)."""
    from tests.tiny import make_tiny_model

    folder = tmp_path_factory.mktemp("three")
    return {"base": tiny_model_dir, "student": make_tiny_model(folder / "student", smollm2_tokenizer_dir, seed=1),
            "teacher": make_tiny_model(folder / "teacher", smollm2_tokenizer_dir, seed=2)}


@pytest.fixture(scope="module")
def reports(tmp_path_factory, three_models, data_dir):
    """The compare stage twice: a student given clean traces, then a registered student LoggedModel
    whose training traces (its r1.traces tag) have a MATH-500 problem pasted into one completion."""
    import mlflow

    from r1core import data, models, stages, tracking

    folder = tmp_path_factory.mktemp("traces")
    clean = pd.read_json(GENERAL, lines=True)
    clean_path = folder / "clean.jsonl"
    clean.to_json(clean_path, orient="records", lines=True)
    problem = data.load("math500")[0].to_pandas().iloc[40]
    dirty = pd.concat([clean, pd.DataFrame([{
        "id": "pasted", "prompt": [{"role": "user", "content": "Solve it."}],
        "completion": [{"role": "assistant", "content": f"<think>\nRecall: {problem['problem']}\n</think>"}]}])])
    dirty_path = folder / "dirty.jsonl"
    dirty.to_json(dirty_path, orient="records", lines=True)

    recipe = recipe_from_dict({"name": "tiny-compare", "model": str(three_models["base"]), "stages": {
        "evaluate": {"model": "base", "benchmarks": ["math500"], "limit": 2, "num_samples": 2, "max_new_tokens": 8},
        "compare": {"student": str(three_models["student"]), "teacher": str(three_models["teacher"]),
                    "protocol": "evaluate"}}})
    parent = stages.start_pipeline(recipe)
    base_uri = stages.base_model(recipe)["model_uri"]
    refs = {"teacher": str(three_models["teacher"]), "base": base_uri}
    first = stages.run_stage(recipe, "compare", parent, student=str(three_models["student"]), traces=str(clean_path),
                             **refs)
    model, tok = models.load_model_and_tokenizer(str(three_models["student"]))
    with mlflow.start_run(experiment_id=tracking.setup(recipe.experiment_name), run_name="student"):
        info = tracking.log_model(model, tok, name="student", tags={"r1.traces": str(dirty_path)})
    version = mlflow.register_model(f"models:/{info.model_id}", "tiny-compare-student")
    registration = {"name": "tiny-compare-student", "version": str(version.version)}
    second = stages.run_stage(recipe, "compare", parent, student=f"models:/{info.model_id}",
                              registration=registration, **refs)
    return first, second, info.model_id, registration, problem


def test_the_report_has_one_row_per_model_with_the_protocols_metrics(reports):
    import mlflow

    first, _, _, _, _ = reports
    table = pd.DataFrame(first["table"])
    assert list(table["model"]) == ["student", "teacher", "base"]
    assert {"math500/pass@1", "math500/pass@1_stderr", "math500/mean_completion_tokens",
            "math500/gain_recovered"} <= set(table.columns)
    logged = mlflow.artifacts.load_dict(f"runs:/{first['run_id']}/report/distillation.json")
    logged = pd.DataFrame(logged["data"], columns=logged["columns"])
    assert len(logged) == 3 and list(logged["model"]) == ["student", "teacher", "base"]
    client = MlflowClient()
    arts = {a.path for a in client.list_artifacts(first["run_id"], "report")}
    assert {"report/distillation.json", "report/distillation.md", "report/distillation.png"} <= arts
    md = mlflow.artifacts.load_text(f"runs:/{first['run_id']}/report/distillation.md")
    assert "| student |" in md and "| math500 | 500 | 0 (0.0%) |" in md
    # one protocol: each model evaluated by the evaluate stage, as a nested run of the report
    children = client.search_runs([client.get_run(first["run_id"]).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{first['run_id']}'")
    assert sorted(c.data.tags["r1.stage"] for c in children) == ["compare-base", "compare-student", "compare-teacher"]
    assert {c.data.params["evaluate.limit"] for c in children} == {"2"}
    for role, child in ((c.data.tags["r1.stage"].split("-")[1], c) for c in children):
        assert child.data.metrics["math500/pass_at_1"] == table.set_index("model").loc[role, "math500/pass@1"]
        assert child.data.metrics["math500/num_problems"] == 2
    run = client.get_run(first["run_id"])
    assert run.data.metrics["contamination/math500/flagged"] == 0 and run.data.tags["r1.contamination.math500"] == "false"
    assert {k for k in run.data.metrics if k.startswith("student/")} == \
        {"student/math500/pass_at_1", "student/math500/pass_at_1_stderr", "student/math500/mean_completion_tokens"}
    assert first["contaminated"] == []


def test_a_pasted_benchmark_problem_is_flagged_on_the_report_the_model_and_the_version(reports):
    import mlflow

    _, second, model_id, registration, problem = reports
    assert second["traces"].endswith("dirty.jsonl")  # found through the student's r1.traces tag
    assert second["contaminated"] == ["math500"]
    run = MlflowClient().get_run(second["run_id"])
    assert run.data.metrics["contamination/math500/flagged"] == 1
    assert run.data.metrics["contamination/math500/dirty_problems"] >= 1
    assert run.data.metrics["contamination/math500/contaminated_traces"] == 1
    assert mlflow.get_logged_model(model_id).tags["r1.contamination.math500"] == "true"
    version = MlflowClient().get_model_version(registration["name"], registration["version"])
    assert version.tags["r1.contamination.math500"] == "true" and version.tags["r1.contamination"] == "true"
    md = mlflow.artifacts.load_text(f"runs:/{second['run_id']}/report/distillation.md")
    assert "**yes**" in md and str(problem["id"]) in md
