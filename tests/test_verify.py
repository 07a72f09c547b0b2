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


# Word and sentence golds (cases others' tests found): math-verify would read them as products of
# symbols, so anagrams verified. They are matched as strings now.
@pytest.mark.parametrize("completion,gold", [("<answer>on</answer>", "no"), ("<answer>nEvely</answer>", "Evelyn"),
                                             ("<answer>three forty</answer>", "forty three"),
                                             ("\\boxed{\\text{veEnly}}", "\\text{Evelyn}")])
def test_word_golds_do_not_accept_anagrams(completion, gold):
    v = verify_one(completion, gold)
    assert v.correct is False and v.status == "ok", v


@pytest.mark.parametrize("completion,gold", [("<answer>No</answer>", "no"), ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}"),
                                             ("<answer> Forty three. </answer>", "forty three")])
def test_word_golds_match_the_same_words(completion, gold):
    assert verify_one(completion, gold).correct is True


def test_answer_types_string_and_multiple_choice():
    assert verify_one("<answer>Paris</answer>", "paris", "string").correct is True
    assert verify_one("<answer>Lyon</answer>", "paris", "string").correct is False
    assert verify_one("<answer>  </answer>", "", "string").status == "gold_unparsable"
    assert verify_one("so the answer is \\boxed{(B)}", "B", "multiple_choice").correct is True
    assert verify_one("<answer>C) 12</answer>", "(b)", "multiple_choice").correct is False
    with pytest.raises(ValueError, match="Unknown answer type"):
        verify_batch(["x"], ["1"], answer_types=["chemistry"])


def test_reasoning_gym_rows_use_the_tasks_own_scorer():
    import json

    entry = json.dumps({"question": "3 + 4 =", "answer": "7", "metadata": {"source_dataset": "chain_sum"}})
    assert verify_one("<think>3 + 4 = 7</think><answer>7</answer>", "7", "reasoning_gym", entry).correct is True
    assert verify_one("<answer>+07.00</answer>", "7", "reasoning_gym", entry).correct is True  # the task's tolerance
    assert verify_one("<answer>8</answer>", "7", "reasoning_gym", entry).correct is False
    assert verify_one("3 + 4 = 7", "7", "reasoning_gym", entry).answer == "7"      # no tag: last expression
    words = json.dumps({"question": "q", "answer": "cat", "metadata": {"source_dataset": "spell_backward"}})
    assert verify_one("<answer>cat</answer>", "cat", "reasoning_gym", words).score == 1.0
    assert verify_one("<answer>x</answer>", "7", "reasoning_gym", "").status == "gold_unparsable"


def test_many_unclosed_answer_tags_are_checked_in_linear_time():
    import time

    hostile = "<answer>" * 25_000 + "7"                 # 200 KB: the old regex took quadratic time (hung)
    neighbours = [f"<answer>{i}</answer>" for i in range(15)]
    t0 = time.perf_counter()
    verdicts = verify_batch([hostile, *neighbours], ["7", *[str(i) for i in range(15)]])
    assert time.perf_counter() - t0 < 30
    assert verdicts[0].status != "timeout" and all(v.correct for v in verdicts[1:])


def test_cons_at_k_groups_string_answers_by_normalised_text():
    from r1core.verify import group_equivalent

    assert group_equivalent(["Yes", "yes.", "no", None], answer_type="string") == [0, 0, 2, None]
    assert group_equivalent(["(A)", "A", "B"], answer_type="multiple_choice") == [0, 0, 2]


def test_every_math500_gold_solution_verifies_against_its_answer(data_dir):
    """No regression from the per-domain checks: all 500 worked solutions (each ends in \\boxed{})
    verify against MATH-500's gold answers, word answers such as \\text{Evelyn} included."""
    from r1core import data

    rows = data.load("math500")[0].to_pandas()
    verdicts = verify_batch(list(rows["solution"]), list(rows["answer"]))
    wrong = [(a, v) for a, v in zip(rows["answer"], verdicts) if not v.correct]
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("how", ["script without a main guard", "program read from stdin"])
def test_workers_that_cannot_start_raise_instead_of_scoring_zero(tmp_path, how):
    """Spawned workers re-import the main module: without a main guard (or from stdin) they die at
    start-up. That must stop the caller with the fix, not score every sample 0 (MATH-500's gold
    solutions scored 0.000 that way)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (f"import sys; sys.path.insert(0, {str(root)!r})\n"
            "from r1core.verify import verify_batch\n"
            "print('verdicts', verify_batch(['\\\\boxed{4}'], ['4']))\n")
    script = tmp_path / "no_guard.py"
    script.write_text(code)
    args = [sys.executable, str(script)] if how.startswith("script") else [sys.executable, "-"]
    proc = subprocess.run(args, input=None if how.startswith("script") else code, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode != 0 and "verdicts" not in proc.stdout
    assert "VerifierUnavailable" in proc.stderr and '__name__ == "__main__"' in proc.stderr
