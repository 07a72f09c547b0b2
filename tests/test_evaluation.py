"""Estimators of the R1 evaluation protocol against hand-computed values."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from r1core.evaluation import majority_vote, pass_at_k, score


def test_pass_at_k_matches_hand_values():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)   # 1 - C(2,2)/C(4,2)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0                          # n - c < k
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_majority_vote():
    assert majority_vote([0, 0, 2], [True, True, False]) is True
    assert majority_vote([0, 1, 1], [False, True, True]) is True
    assert majority_vote([0, 1], [False, True]) is False          # tie: first seen wins
    assert majority_vote([None, None, 2], [False, False, True]) is True  # None does not vote
    assert majority_vote([None], [False]) is False


def test_equivalent_answers_vote_together():
    from r1core.verify import group_equivalent

    groups = group_equivalent(["0.5", "\\frac{1}{2}", "3", None, "1/2"])
    assert groups[0] == groups[1] == groups[4] == 0 and groups[2] == 2 and groups[3] is None
    # "3" appears twice as strings but 0.5 three times by value: the value wins the vote
    samples = pd.DataFrame({"id": ["a"] * 5, "correct": [True, True, False, False, True],
                            "extracted": ["0.5", "\\frac{1}{2}", "3", "3", "1/2"],
                            "num_tokens": [1] * 5, "truncated": [False] * 5})
    assert score(samples, k=5)["cons@5"] == 1.0


def test_score_on_a_small_table():
    samples = pd.DataFrame({
        "id": ["a", "a", "b", "b"],
        "correct": [True, False, False, False],
        "extracted": ["1", "2", "5", None],
        "num_tokens": [10, 20, 30, 40],
        "truncated": [False, False, True, False],
    })
    m = score(samples, k=2)
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx(0.5)
    assert m["cons@2"] == pytest.approx(0.5)         # a: tie -> "1" (correct); b: "5" wrong
    assert m["pass@1_stderr"] == pytest.approx(0.25)  # std of [0.5, 0] / sqrt(2)
    assert m["mean_completion_tokens"] == 25 and m["truncated_fraction"] == 0.25


def test_score_skips_unparsable_gold():
    samples = pd.DataFrame({"id": ["a", "b"], "correct": [True, None], "extracted": ["1", "2"],
                            "num_tokens": [1, 1], "truncated": [False, False]})
    m = score(samples, k=1)
    assert m["num_problems"] == 1 and m["pass@1"] == 1.0 and not math.isnan(m["pass@1_stderr"])


def test_group_equivalent_treats_nan_as_no_answer():
    from r1core.verify import group_equivalent

    assert group_equivalent(["3", float("nan"), None, ""]) == [0, None, None, None]


def test_breakdown_by_subject_and_level():
    from r1core.evaluation import breakdown

    samples = pd.DataFrame({"id": ["a", "a", "b", "b", "c", "c"], "correct": [True, False, True, True, False, False],
                            "subject": ["Algebra", "Algebra", "Geometry", "Geometry", "Counting & Probability"] + ["Counting & Probability"],
                            "level": [1, 1, 1, 1, 5, 5]})
    b = breakdown(samples)
    assert b == {"subject/Algebra/pass@1": 0.5, "subject/Counting & Probability/pass@1": 0.0,
                 "subject/Geometry/pass@1": 1.0, "level/1/pass@1": 0.75, "level/5/pass@1": 0.0}
    from r1core.tracking import mlflow_key

    assert mlflow_key("math500/subject/Counting & Probability/pass@1") == "math500/subject/Counting _ Probability/pass_at_1"


def test_evaluation_resumes_from_written_samples(tiny_model_dir, tmp_path, data_dir):
    from r1core import data
    from r1core.evaluation import evaluate_benchmark
    from r1core.generation import SamplingParams
    from r1core.models import load_model_and_tokenizer
    from r1core.sampling import EngineSampler

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    sampler = EngineSampler(model, tok, str(tiny_model_dir), batch_size=1)
    problems = data.load("aime24")[0].to_pandas().head(3)
    path = tmp_path / "aime24.jsonl"
    params = SamplingParams(max_new_tokens=4, seed=1)
    m1, s1 = evaluate_benchmark(sampler, problems, k=2, params=params, results_path=path)
    assert len(path.read_text().splitlines()) == 6 and len(s1) == 6
    # a kill mid-way through writing the 6th line (the second chunk: samples 5-6): the cut line is
    # dropped, and the rerun samples only that chunk, whole, with its own seed
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][: len(lines[5]) // 2])
    calls = []
    sampler.on_batch = lambda done, total, tps: calls.append(total)
    m2, s2 = evaluate_benchmark(sampler, problems, k=2, params=params, results_path=path)
    assert sum(1 for _ in calls) == 2 and len(s2) == 6
    assert "\n".join(path.read_text().splitlines()).count("}{") == 0  # the cut line was replaced, not joined
    # the resumed evaluation is the uninterrupted one: same samples, same metrics
    assert list(s2["completion"]) == list(s1["completion"]) and m2 == m1
    assert list(s2["completion"][:4]) == list(s1["completion"][:4])   # kept, not re-sampled
    assert set(m2) >= {"pass@1", "pass@2", "cons@2", "pass@1_stderr", "truncated_fraction"}


def test_nightly_report_flags_a_regression_beyond_two_standard_errors():
    from r1core.compare import compare
    from r1core.nightly import report

    assert compare({"m/pass_at_1": 0.45, "m/pass_at_1_stderr": 0.05},
                   {"m/pass_at_1": 0.50, "m/pass_at_1_stderr": 0.05}, "r").regressions == []  # within noise
    results = {
        "champion": {"model_uri": "models:/x@champion", "canonical_model_uri": "models:/x/1", "run_id": "a",
                     "metrics": {"math500/pass@1": 0.30, "math500/pass@1_stderr": 0.01},
                     "deltas": {"math500/pass_at_1": -0.20}, "regressions": ["math500"]},
        "challenger": {"model_uri": "models:/x@challenger", "canonical_model_uri": "models:/x/2", "run_id": "b",
                       "metrics": {"math500/pass@1": 0.35, "math500/pass@1_stderr": 0.01},
                       "deltas": {}, "regressions": []},
    }
    text, regressed = report("x", results)
    assert regressed == ["champion:math500"]
    assert "| champion | models:/x/1 | math500 | 0.3000 | -0.2000 | **yes** |" in text
    assert "Challenger minus champion: math500/pass@1 +0.0500" in text


def test_math500_gold_solutions_score_at_least_99_percent(data_dir):
    """The scoring path itself: MATH-500's reference solutions, read as completions, must verify."""
    from r1core import data
    from r1core.verify import verify_batch

    ds, _ = data.load("math500")
    verdicts = verify_batch(list(ds["solution"]), list(ds["answer"]))
    samples = pd.DataFrame({"id": ds["id"], "correct": [v.correct for v in verdicts],
                            "extracted": [v.answer for v in verdicts], "num_tokens": [0] * len(ds),
                            "truncated": [False] * len(ds)})
    assert score(samples, k=1)["pass@1"] >= 0.99
