"""R1-Zero on procedural tasks: reasoning-gym curation with a disjoint held-out set, evaluation
during GRPO logged against the step, the self-evolution signals and figures (tiny model)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from r1core import procedural, stages
from r1core.config import ReasoningGymConfig, recipe_from_dict
from r1core.data import DataError
from r1core.signals import ReflectionRate, self_evolution_signals

ARITHMETIC = {"tasks": [{"name": "chain_sum", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                          "max_digits": 1}}],
              "size": 300, "seed": 1, "heldout_size": 16, "heldout_seed": 2}


def test_training_and_heldout_problems_are_disjoint_and_scored_by_the_task():
    from r1core.verify import checks_of, verify_batch

    train, heldout, counts = procedural.train_and_heldout(ReasoningGymConfig(**ARITHMETIC))
    assert counts["heldout_problems"] == len(heldout) > 0 and counts["generated"] == 300
    assert counts["heldout_overlap_removed"] > 0          # easy settings: two seeds overlap, and it is caught
    assert not set(train["problem"]) & set(heldout["problem"])
    assert set(train["answer_type"]) == {"reasoning_gym"}
    entry = json.loads(heldout["metadata"][0])
    assert entry["answer"] == heldout["answer"][0] and entry["metadata"]["source_dataset"] == "chain_sum"
    golds = [f"<think>x</think><answer>{a}</answer>" for a in heldout["answer"]]
    wrong = [f"<answer>{int(a) + 1}</answer>" for a in heldout["answer"]]
    assert all(v.correct for v in verify_batch(golds, list(heldout["answer"]), **checks_of(heldout)))
    assert not any(v.correct for v in verify_batch(wrong, list(heldout["answer"]), **checks_of(heldout)))


def test_unknown_task_and_bad_settings_fail_before_work():
    with pytest.raises(DataError, match="unknown task 'chain_summ'"):
        procedural.check_tasks(ReasoningGymConfig(tasks=[{"name": "chain_summ"}]))
    with pytest.raises(DataError, match="rejected by reasoning-gym"):
        procedural.check_tasks(ReasoningGymConfig(tasks=[{"name": "chain_sum", "config": {"min_terms": 0}}]))
    with pytest.raises(DataError, match="must differ"):
        procedural.train_and_heldout(ReasoningGymConfig(**{**ARITHMETIC, "heldout_seed": 1}))


def test_heldout_evaluation_needs_a_procedural_curate_stage(tiny_model_dir):
    recipe = recipe_from_dict({"name": "t", "model": str(tiny_model_dir), "stages": {
        "curate": {"dataset": "gsm8k:train"}, "grpo": {"eval": {"benchmarks": ["heldout"]}}}})
    with pytest.raises(ValueError, match="not a curate stage with procedural tasks"):
        stages.validate(recipe)


def test_reflection_rate_and_language_consistency():
    reflection = ReflectionRate()
    assert reflection.flags(["Wait, 3 + 4 = 7.", "3 + 4 = 7", "await the result", "let me check: 7"]) == \
        [True, False, False, True]                        # whole words only: "await" is not "wait"
    signals = self_evolution_signals(["<think>two plus 是</think>", "<think>ok</think>"], reflection)
    assert signals["signals/reflection_rate"] == 0.0
    assert signals["signals/language_consistency"] == pytest.approx((2 / 3 + 1) / 2)
    assert ReflectionRate(["hmm"]).flags(["Hmm.", "Wait."]) == [True, False]


def test_grpo_evaluates_during_training_and_logs_the_r1_figures(tiny_model_dir):
    recipe = recipe_from_dict({"name": "learning-signals", "model": str(tiny_model_dir), "seed": 3, "stages": {
        "curate": {"dataset": "reasoning_gym", "reasoning_gym": ARITHMETIC, "num_problems": 8, "decontaminate": []},
        "grpo": {"rewards": {"accuracy": 1.0, "format": 0.25}, "num_generations": 2, "max_completion_length": 6,
                 "max_steps": 3, "completions_log_steps": 0,
                 "eval": {"eval_steps": 2, "benchmarks": ["heldout", "math500"], "limit": 3, "num_samples": 2},
                 "args": {"per_device_train_batch_size": 4}}}})
    stages.validate(recipe)
    parent = stages.start_pipeline(recipe)
    cur = stages.run_stage(recipe, "curate", parent)
    assert cur["heldout_problems"] == 16
    out = stages.run_stage(recipe, "grpo", parent, data=cur["dataset_uri"], model=str(tiny_model_dir))
    client = MlflowClient()
    for name in ("heldout", "math500"):
        history = client.get_metric_history(out["run_id"], f"eval/{name}/pass_at_1")
        assert sorted(m.step for m in history) == [0, 2, 3]   # step 0, every 2 steps, and the end
        assert all(0.0 <= m.value <= 1.0 for m in history)
        assert client.get_metric_history(out["run_id"], f"eval/{name}/pass_at_1_stderr")
        assert client.get_metric_history(out["run_id"], f"eval/{name}/mean_completion_tokens")
    assert [m.step for m in client.get_metric_history(out["run_id"], "signals/reflection_rate")] == [1, 2, 3]
    assert client.get_metric_history(out["run_id"], "signals/language_consistency")
    figures = {a.path for a in client.list_artifacts(out["run_id"], "figures")}
    assert figures == {"figures/pass_at_1.png", "figures/completion_length.png", "figures/reflection_rate.png"}
    tables = {a.path for a in client.list_artifacts(out["run_id"], "eval_completions/heldout")}
    assert "eval_completions/heldout/step_00000.json" in tables
    inputs = {(d.dataset.name, d.tags[0].value) for d in client.get_run(out["run_id"]).inputs.dataset_inputs}
    assert ("heldout", "evaluation") in inputs and ("math500", "evaluation") in inputs
    assert out["eval/heldout/step_first"] == 0 and out["eval/heldout/step_last"] == 3

    # the evaluate stage takes the curate stage's held-out set as a benchmark (quickstart's evaluate stage)
    ev = recipe_from_dict({**recipe.model_dump(mode="json"), "stages": {
        **recipe.model_dump(mode="json")["stages"],
        "evaluate": {"model": "grpo.output", "heldout": "curate.output", "benchmarks": ["math500"], "limit": 2,
                     "num_samples": 2, "max_new_tokens": 4, "stop_strings": ["</answer>"]}}})
    result = stages.run_stage(ev, "evaluate", parent, model=out["model_uri"], heldout=cur["dataset_uri"])
    assert result["metrics"]["heldout/num_problems"] == 16 and result["metrics"]["math500/num_problems"] == 2
    assert 0.0 <= result["metrics"]["heldout/pass@1"] <= 1.0


def test_sft_on_an_empty_trace_set_fails_with_the_fix(tiny_model_dir, tmp_path):
    import mlflow
    import pandas as pd

    from r1core import tracking

    recipe = recipe_from_dict({"name": "empty-traces", "model": str(tiny_model_dir), "stages": {
        "sft": {"data": "rejection_sampling.output"}, "rejection_sampling": {"teacher": "base"},
        "curate": {}}})
    parent = stages.start_pipeline(recipe)
    with tracking.stage_run(parent, "rejection_sampling"):
        uri, _ = tracking.log_dataset(pd.DataFrame(), "sft_traces", "generated")
    with pytest.raises(ValueError, match="holds no traces"):
        stages.run_stage(recipe, "sft", parent, data=uri, student=str(tiny_model_dir))
    assert mlflow.active_run() is None
