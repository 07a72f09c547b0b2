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
