"""The one verifier: equivalences, unparsable gold, hostile input, threads."""

from __future__ import annotations

import concurrent.futures as cf

import pytest

from r1core.verify import extract_answer_span, verify_batch, verify_one

EQUIVALENT = [
    ("<think>x</think><answer>25</answer>", "025"),           # AIME leading zero
    ("The answer is \\boxed{\\frac{1}{2}}", "0.5"),           # fraction vs decimal
    ("so they have 1,000 apples", "1000"),                     # thousands separator
    ("<answer>\\left( 3, \\frac{\\pi}{2} \\right)</answer>", "\\left( 3, \\frac{\\pi}{2} \\right)"),  # tuple
    ("<answer>$18</answer>", "18"),
    ("\\boxed{50\\%}", "50"),                                  # percentage
    ("\\boxed{90^\\circ}", "90"),                              # degrees
    ("\\boxed{\\text{(C)}}", "C"),                             # multiple choice
    ("\\boxed{[0, 1)}", "[0,1)"),                              # interval
    ("first \\boxed{3} then finally \\boxed{7}", "7"),         # last boxed wins
    ("\\boxed{5\\text{ cm}}", "5"),                             # \text{} units
    ("\\boxed{12{,}000}", "12000"),                             # LaTeX thousands separator
]
NOT_EQUIVALENT = [
    ("<answer>42</answer>", "43"),
    ("<think>the answer is 25</think><answer>26</answer>", "25"),  # <answer> beats the reasoning
    ("\\boxed{\\frac{1}{3}}", "0.5"),
]


@pytest.mark.parametrize("completion,gold", EQUIVALENT)
def test_equivalent_answers_verify(completion, gold):
    v = verify_one(completion, gold)
    assert v.correct is True, v


@pytest.mark.parametrize("completion,gold", NOT_EQUIVALENT)
def test_different_answers_do_not_verify(completion, gold):
    v = verify_one(completion, gold)
    assert v.correct is False and v.status == "ok", v


def test_no_answer_is_incorrect_with_status():
    v = verify_one("I am not sure.", "5")
    assert v.correct is False and v.status == "no_answer"


def test_unparsable_gold_gives_none():
    v = verify_one("\\boxed{7}", "")
    assert v.correct is None and v.status == "gold_unparsable"


def test_answer_span_prefers_last_answer_tag():
    assert extract_answer_span("<answer>1</answer> ... <answer>2</answer>") == "2"
    assert extract_answer_span("no tags") == "no tags"


def test_hostile_completions_are_scored_without_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hostile = [
        "{" * 100_000,
        "\\boxed{" + "1" * 50,
        "\\boxed{__import__('os').system('touch pwned')}",
        "<answer>__import__('os').system('touch pwned')</answer>",
        "\\boxed{" + "9" * 1_000_000 + "}",                   # a number with a million digits
        "\ud800\udfff broken surrogates \\boxed{3}",
    ]
    verdicts = verify_batch(hostile, ["3"] * len(hostile))
    assert len(verdicts) == len(hostile)
    assert all(v.correct in (True, False) for v in verdicts)
    assert not (tmp_path / "pwned").exists()


def test_threads_agree_with_a_single_caller():
    cases = EQUIVALENT + NOT_EQUIVALENT
    comps, golds = [c for c, _ in cases], [g for _, g in cases]
    expected = [v.correct for v in verify_batch(comps, golds)]
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: [v.correct for v in verify_batch(comps, golds)], range(8)))
    assert all(r == expected for r in results)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="gold"):
        verify_batch(["a", "b"], ["1"])


def test_missed_deadline_scores_timeout_and_the_pool_recovers(monkeypatch):
    from r1core import verify

    verify._POOL.close()                      # a new pool needs ~1 s to spawn: longer than the deadline below
    monkeypatch.setattr(verify, "TIMEOUT_S", 0)
    monkeypatch.setattr(verify, "_GRACE_S", 0.01)
    verdicts = verify_batch(["\\boxed{4}"] * 3, ["4"] * 3)
    assert [(v.correct, v.status) for v in verdicts] == [(False, "timeout")] * 3
    monkeypatch.undo()
    assert verify_one("\\boxed{4}", "4").correct is True   # the stuck pool was replaced
