"""SFT on a weighted mixture (R1 section 2.3.3: reasoning traces plus non-reasoning data): counts
by weight, a deterministic draw, stage sources as graph edges, bad sources named before a run,
and the mixed SFT stage on the tiny model with its composition and digest in MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from r1core import graph
from r1core.config import RecipeError, recipe_from_dict
from r1core.data import DataError
from r1core.sft import MixtureSource, draw_mixture, mixture_counts, read_conversational

ROOT = Path(__file__).resolve().parents[1]
GENERAL = ROOT / "recipes" / "data" / "general.jsonl"


def _traces(n: int) -> pd.DataFrame:
    """``n`` reasoning traces in the rejection-sampling stage's format."""
    return pd.DataFrame([{
        "id": f"toy/{i}", "answer": str(i + 3),
        "prompt": [{"role": "system", "content": "Think, then answer."}, {"role": "user", "content": f"What is {i} + 3?"}],
        "completion": [{"role": "assistant", "content": f"<think>\n{i} + 3 = {i + 3}\n</think>\n<answer>{i + 3}</answer>"}],
    } for i in range(n)])


def test_counts_split_the_size_by_weight():
    assert mixture_counts([16, 10], [0.75, 0.25]) == [16, 5]  # the scarce source (relative to its weight) whole
    assert mixture_counts([16, 10], [3, 1]) == [16, 5]  # weights are proportions
    assert mixture_counts([100, 100], [0.75, 0.25], size=10) == [8, 2]  # 7.5 / 2.5: the tie goes to the first
    assert mixture_counts([5, 5, 5], [1, 1, 1], size=7) == [3, 2, 2]
    assert mixture_counts([4, 100], [0.5, 0.5], size=20) == [10, 10]  # the first source repeats
    with pytest.raises(ValueError, match="every source needs rows"):
        mixture_counts([0, 5], [1, 1])


def test_draw_is_deterministic_in_the_seed_and_repeats_a_short_source():
    general = read_conversational(GENERAL)
    sources = [MixtureSource("traces", "t", 3.0, _traces(4)), MixtureSource("general", str(GENERAL), 1.0, general)]
    a, comp = draw_mixture(sources, size=16, seed=7)
    b, _ = draw_mixture(sources, size=16, seed=7)
    c, _ = draw_mixture(sources, size=16, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert list(a["id"]) != list(c["id"])
    assert a["mixture_source"].value_counts().to_dict() == {"traces": 12, "general": 4}
    assert [(e["rows"], e["available"], e["epochs"]) for e in comp] == [(12, 4, 3.0), (4, 12, 4 / 12)]
    assert a[a["mixture_source"] == "traces"]["id"].value_counts().tolist() == [3, 3, 3, 3]  # whole repeats
    assert a[a["mixture_source"] == "general"]["id"].is_unique  # drawn without replacement


def _recipe(model: str, mixture: list[dict], **sft) -> dict:
    return {"name": "mix", "model": model, "stages": {
        "curate": {}, "rejection_sampling": {"teacher": "base"},
        "sft": {"mixture": mixture, "max_steps": 1, "per_device_train_batch_size": 2, "max_length": 128, **sft}}}


def test_stage_sources_are_graph_edges_and_files_are_not():
    r = recipe_from_dict(_recipe("m", [{"data": "rejection_sampling.output", "weight": 3},
                                       {"data": str(GENERAL), "weight": 1}]))
    assert r.stages["sft"].data is None
    assert graph.dependencies(r)["sft"] == ["rejection_sampling"]
    assert graph.waves(r) == [["curate"], ["rejection_sampling"], ["sft"]]
    inputs = graph.resolve_inputs(r, "sft", {"base": {"model_uri": "models:/m-b"},
                                             "rejection_sampling": {"dataset_uri": "runs:/x/data/sft_traces.jsonl"}})
    assert inputs == {"student": "models:/m-b", "mixture.0.data": "runs:/x/data/sft_traces.jsonl"}
    with pytest.raises(RecipeError, match=r"stages.sft.mixture.0.data: 'rs.output' names no stage"):
        recipe_from_dict(_recipe("m", [{"data": "rs.output", "weight": 1}]))


@pytest.mark.parametrize("source,message", [
    ({"data": "general", "weight": 1}, "stages.sft.mixture.1.data: Value error, 'general' is neither a stage output"),
    ({"data": "x.jsonl", "weight": 0}, "stages.sft.mixture.1.weight: Input should be greater than 0"),
])
def test_bad_sources_fail_when_the_recipe_loads(source, message):
    with pytest.raises(RecipeError) as err:
        recipe_from_dict(_recipe("m", [{"data": "rejection_sampling.output", "weight": 1}, source]))
    assert message in str(err.value)
    with pytest.raises(RecipeError, match="give data .* or mixture .*, not both"):
        recipe_from_dict(_recipe("m", [{"data": "rejection_sampling.output", "weight": 1}],
                                 data="rejection_sampling.output"))


def test_bad_files_fail_at_validation_naming_the_source(tmp_path, tiny_model_dir):
    from r1core import stages

    missing = tmp_path / "nope.jsonl"
    r = recipe_from_dict(_recipe(str(tiny_model_dir), [{"data": "rejection_sampling.output", "weight": 1},
                                                       {"data": str(missing), "weight": 1}]))
    with pytest.raises(DataError, match=r"stages.sft.mixture.1.data: .*nope.jsonl does not exist"):
        stages.validate(r)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GENERAL.read_text().splitlines()[0] + "\n" +
                   json.dumps({"prompt": [{"role": "user", "content": "Hi"}],
                               "completion": [{"role": "user", "content": "Hi"}]}) + "\n")
    r = recipe_from_dict(_recipe(str(tiny_model_dir), [{"data": str(bad), "weight": 1}]))
    with pytest.raises(DataError, match=r"stages.sft.mixture.0.data: .*bad.jsonl:2: completion has a message whose role"):
        stages.validate(r)
    stages.validate(recipe_from_dict(_recipe(str(tiny_model_dir), [{"data": str(GENERAL), "weight": 1}])))


@pytest.fixture(scope="module")
def mixed_runs(tmp_path_factory, tiny_model_dir):
    """Two one-step mixed SFT stages (weights 3:1, then 1:1) on the tiny model."""
    from r1core import stages

    folder = tmp_path_factory.mktemp("mixture")
    traces = folder / "sft_traces.jsonl"
    _traces(9).to_json(traces, orient="records", lines=True)
    runs = []
    for weights in ((0.75, 0.25), (0.5, 0.5)):
        recipe = recipe_from_dict(_recipe(str(tiny_model_dir), [{"data": "rejection_sampling.output", "weight": weights[0]},
                                                                {"data": str(GENERAL), "weight": weights[1]}]))
        parent = stages.start_pipeline(recipe)
        out = stages.run_stage(recipe, "sft", parent, student=str(tiny_model_dir), **{"mixture.0.data": str(traces)})
        runs.append(out)
    return runs


def test_mixed_sft_runs_and_logs_its_composition(mixed_runs):
    import mlflow

    out = mixed_runs[0]
    run = MlflowClient().get_run(out["run_id"])
    # 9 traces at 0.75, 12 general rows at 0.25: N = min(9 / 0.75, 12 / 0.25) = 12 -> 9 + 3
    assert run.data.metrics["mixture/rejection_sampling/rows"] == 9 == out["mixture/rejection_sampling/rows"]
    assert run.data.metrics["mixture/general/rows"] == 3 and run.data.metrics["mixture/rows"] == 12
    assert run.data.params["mixture/rejection_sampling/share"] == "0.75"
    assert run.data.metrics["summary/num_traces"] == 12 and math.isfinite(out["train_loss"])
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert {"rejection_sampling", "general", "sft_mixture"} <= set(inputs)
    mix = inputs["sft_mixture"]
    assert {t.key: t.value for t in mix.tags}["mlflow.data.context"] == "training"
    assert mix.dataset.digest == run.data.tags["r1.mixture.digest"]
    composition = mlflow.artifacts.load_dict(f"runs:/{out['run_id']}/mixture/composition.json")
    assert [(s["source"], s["rows"], s["available"]) for s in composition["sources"]] == \
        [("rejection_sampling", 9, 9), ("general", 3, 12)]
    rows = pd.read_json(mlflow.artifacts.download_artifacts(out["traces"]), lines=True)
    assert rows["mixture_source"].value_counts().to_dict() == {"rejection_sampling": 9, "general": 3}
    student = mlflow.get_logged_model(out["model_id"])
    assert student.tags["r1.traces"] == out["traces"] and out["traces"].endswith("data/sft_mixture.jsonl")


def test_the_digest_changes_when_a_weight_changes(mixed_runs):
    first, second = (MlflowClient().get_run(o["run_id"]) for o in mixed_runs)
    assert second.data.metrics["mixture/general/rows"] == 9  # 1:1 -> N = min(18, 24) = 18
    assert first.data.tags["r1.mixture.digest"] != second.data.tags["r1.mixture.digest"]
