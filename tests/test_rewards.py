"""Rewards: values, the registry's names and errors, picklability."""

from __future__ import annotations

import pickle

import pytest

from r1core.prompts import THINK_PREFILL
from r1core.rewards import REGISTRY, AccuracyReward, FormatReward, TagCountReward, accuracy_reward, get_rewards


#: Model-based rewards (r1core.judge) need an endpoint or a model: tests/test_judge.py runs them.
MODEL_BASED = {"judge", "reward_model"}


def test_registry_names_are_the_logged_names():
    assert set(REGISTRY) == {"accuracy", "format", "tag_count", "language_consistency", "length", "cosine",
                             "repetition", "soft_overlong", "thought_switch", *MODEL_BASED}
    for name, factory in REGISTRY.items():
        if name not in MODEL_BASED:
            assert factory().__name__ == name


def test_accuracy_reward():
    completions = ["<think>2+2</think><answer>4</answer>", "<answer>5</answer>", "\\boxed{7}"]
    assert accuracy_reward(completions, answer=["4", "4", ""]) == [1.0, 0.0, None]


def test_accuracy_reward_reads_chat_messages():
    msgs = [[{"role": "assistant", "content": "\\boxed{12}"}]]
    assert AccuracyReward()(msgs, answer=["12"]) == [1.0]


@pytest.mark.parametrize("text,expected", [
    ("<think>\nreason\n</think>\n<answer>4</answer>", 1.0),
    ("  <think>a</think> <answer>4</answer>\n", 1.0),
    ("<think>a</think>", 0.0),
    ("<answer>4</answer><think>a</think>", 0.0),
    ("<think>a<think>b</think><answer>4</answer>", 0.0),
    ("<think>a</think><answer>4</answer> trailing text", 0.0),
])
def test_format_reward(text, expected):
    assert FormatReward()([text]) == [expected]


def test_format_reward_counts_the_prefilled_think_tag():
    prompt = "<|im_start|>assistant\n" + THINK_PREFILL
    assert FormatReward()(["reason</think><answer>4</answer>"], prompts=[prompt]) == [1.0]
    assert FormatReward()(["reason</think><answer>4</answer>"], prompts=["no prefill"]) == [0.0]


def test_tag_count_reward_gives_partial_credit():
    r = TagCountReward()
    assert r(["nothing", "<think>x</think>", "<think>x</think><answer>4</answer>",
              "<think><think></think>"]) == [0.0, 0.5, 1.0, 0.25]


def test_unknown_reward_lists_known_names():
    with pytest.raises(ValueError, match="known rewards: accuracy, format, tag_count, language_consistency"):
        get_rewards({"acuracy": 1.0})


def test_rewards_are_picklable():
    funcs, weights = get_rewards({"accuracy": 1.0, "format": 0.5, "tag_count": 0.5})
    assert weights == [1.0, 0.5, 0.5]
    for f in funcs:
        assert pickle.loads(pickle.dumps(f)).__name__ == f.__name__


# ---------------------------------------------------------------- the rest of the suite (issue #3)
from r1core.rewards import (  # noqa: E402
    CosineReward,
    LanguageConsistencyReward,
    LengthReward,
    RepetitionReward,
    SoftOverlongReward,
    ThoughtSwitchReward,
)


@pytest.mark.parametrize("text,language,expected", [
    ("<think>two plus two is four</think><answer>4</answer>", "en", 1.0),
    ("<think>so two plus 是 4</think>", "en", 0.75),
    ("<think>so 2 plus 2 是 4</think>", "en", 2 / 3),
    ("<think>二加二等于四</think>", "zh", 1.0),
    ("<think>二加二 equals 四</think>", "zh", 0.8),
    ("<think>2 + 2 = 4</think>", "en", 1.0),                 # no words: nothing mixed
    ("two plus two, no tags", "en", 1.0),                     # no think block: whole response
])
def test_language_consistency(text, language, expected):
    assert LanguageConsistencyReward(language)([text]) == [pytest.approx(expected)]


def test_language_consistency_rejects_unknown_language():
    with pytest.raises(ValueError, match="supports"):
        LanguageConsistencyReward("fr")


def test_length_reward_per_group_in_tokens():
    r = LengthReward()
    comps = ["\\boxed{4}", "\\boxed{4}", "\\boxed{5}", "\\boxed{4}", "\\boxed{9}"]
    out = r(comps, answer=["4"] * 5, prompts=["p", "p", "p", "q", "q"],
            completion_ids=[[0] * 10, [0] * 30, [0] * 20, [0] * 5, [0] * 5])
    # group p: lengths 10, 30, 20 -> lambdas 0.5, -0.5, 0.0; the wrong one gets min(0, 0.0)
    assert out[:3] == [pytest.approx(0.5), pytest.approx(-0.5), pytest.approx(0.0)]
    assert out[3:] == [0.0, 0.0]                                   # equal lengths: no signal


def test_cosine_reward_endpoints_and_monotonicity():
    r = CosineReward(max_len=100)
    ids = lambda n: [0] * n  # noqa: E731
    right = r(["\\boxed{4}"] * 3, answer=["4"] * 3, completion_ids=[ids(0), ids(50), ids(100)])
    wrong = r(["\\boxed{5}"] * 3, answer=["4"] * 3, completion_ids=[ids(0), ids(50), ids(100)])
    assert right == [pytest.approx(1.0), pytest.approx(0.75), pytest.approx(0.5)]
    assert wrong == [pytest.approx(-1.0), pytest.approx(-0.75), pytest.approx(-0.5)]
    assert r(["\\boxed{4}"], answer=["4"], completion_ids=[ids(500)]) == [pytest.approx(0.5)]  # capped


def test_repetition_reward():
    r = RepetitionReward(ngram_size=2, max_penalty=-1.0)
    assert r(["a b a b a b", "a b c d", "a"]) == [pytest.approx(-0.6), 0.0, 0.0]
    with pytest.raises(ValueError):
        RepetitionReward(max_penalty=0.5)


def test_repetition_counts_token_ngrams_when_trl_passes_ids():
    """Text without spaces (Chinese) is one "word"; its token n-grams still show the loop."""
    r = RepetitionReward(ngram_size=2, max_penalty=-1.0)
    loop = "好的好的好的好的好的好的"
    assert r([loop]) == [0.0]                                       # one word: nothing to count
    assert r([loop], completion_ids=[[7, 8] * 6]) == [pytest.approx(-(1 - 2 / 11))]
    assert r(["a b c d"], completion_ids=[[1, 2, 3, 4]]) == [0.0]


def test_length_and_cosine_skip_samples_whose_gold_is_unparsable():
    """TRL skips ``None``; scoring such samples as wrong would reward longer completions on bad rows."""
    comps = ["\\boxed{4}", "\\boxed{4}", "\\boxed{4}"]
    ids = [[0] * 10, [0] * 30, [0] * 20]
    length = LengthReward()(comps, answer=["4", "4", ""], prompts=["p"] * 3, completion_ids=ids)
    assert length[2] is None and length[:2] == [pytest.approx(0.5), pytest.approx(-0.5)]  # range from parsable ones
    cosine = CosineReward(max_len=100)(comps, answer=["4", "", "4"], completion_ids=ids)
    assert cosine[1] is None and cosine[0] > 0.5 and cosine[2] > 0.5


def test_accuracy_reward_reads_the_rows_answer_type():
    import json

    entry = json.dumps({"question": "q", "answer": "7", "metadata": {"source_dataset": "chain_sum"}})
    out = AccuracyReward()(["<answer>7</answer>", "<answer>on</answer>", "<answer>no</answer>"],
                           answer=["7", "no", "no"], answer_type=["reasoning_gym", "math", "string"],
                           metadata=[entry, "", ""])
    assert out == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("n,expected", [(0, 0.0), (6, 0.0), (7, -0.25), (8, -0.5), (10, -1.0), (11, -1.0)])
def test_soft_overlong_reward_dapo_eq13(n, expected):
    assert SoftOverlongReward(max_len=10, cache_len=4)(["x"], completion_ids=[[0] * n]) == [pytest.approx(expected)]


def test_soft_overlong_reward_is_trls_and_counts_words_without_ids():
    from trl.rewards import get_soft_overlong_punishment

    ids = [[0] * n for n in range(14)]
    assert SoftOverlongReward(max_len=10, cache_len=4)(["x"] * 14, completion_ids=ids) == \
        get_soft_overlong_punishment(max_completion_len=10, soft_punish_cache=4)(ids)
    assert SoftOverlongReward(max_len=10, cache_len=4)([" ".join(["w"] * 8)]) == [pytest.approx(-0.5)]
    with pytest.raises(ValueError, match="cache_len"):
        SoftOverlongReward(max_len=4, cache_len=8)


def test_thought_switch_reward():
    r = ThoughtSwitchReward(min_tokens=5, penalty=0.25)
    long_thought = "one two three four five six"
    assert r([f"<think>{long_thought}. Alternatively {long_thought}</think>"]) == [0.0]
    assert r(["<think>try x. Alternatively y. Wait, let me try another approach z</think>"]) == [-0.5]
    assert r(["<think>a. alternatively b. alternatively c. alternatively d. alternatively e. alternatively f</think>"]) == [-1.0]
    assert r(["<think>no switches at all</think>"]) == [0.0]


def test_reward_args_are_validated():
    funcs, _ = get_rewards({"cosine": 1.0}, {"cosine": {"max_len": 512}})
    assert funcs[0].max_len == 512
    with pytest.raises(ValueError, match="not in rewards"):
        get_rewards({"accuracy": 1.0}, {"cosine": {"max_len": 512}})
    with pytest.raises(ValueError, match="reward_args for 'cosine'"):
        get_rewards({"cosine": 1.0}, {"cosine": {"max_length": 512}})


def test_every_registered_reward_runs_on_a_trl_batch():
    """TRL calls each reward with prompts, completions, completion_ids and the dataset columns."""
    batch = dict(prompts=["p", "p"], completions=["<think>a</think><answer>4</answer>", "\\boxed{5}"],
                 completion_ids=[[1, 2, 3], [1]], answer=["4", "4"], id=["x", "x"],
                 trainer_state=None, log_extra=lambda *a: None, log_metric=lambda *a: None)
    for name, factory in REGISTRY.items():
        if name in MODEL_BASED:
            continue
        out = factory()(**batch)
        assert len(out) == 2 and all(v is None or isinstance(v, float) for v in out), name


def test_docstring_examples_run():
    import doctest

    import r1core.evaluation
    import r1core.rewards
    import r1core.sampling

    for module in (r1core.rewards, r1core.evaluation, r1core.sampling):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
