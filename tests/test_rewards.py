"""Rewards: values, the registry's names and errors, picklability."""

from __future__ import annotations

import pickle

import pytest

from r1core.prompts import THINK_PREFILL
from r1core.rewards import REGISTRY, AccuracyReward, FormatReward, TagCountReward, accuracy_reward, get_rewards


def test_registry_names_are_the_logged_names():
    assert set(REGISTRY) == {"accuracy", "format", "tag_count"}
    for name, factory in REGISTRY.items():
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
    with pytest.raises(ValueError, match="accuracy, format, tag_count"):
        get_rewards({"acuracy": 1.0})


def test_rewards_are_picklable():
    funcs, weights = get_rewards({"accuracy": 1.0, "format": 0.5, "tag_count": 0.5})
    assert weights == [1.0, 0.5, 0.5]
    for f in funcs:
        assert pickle.loads(pickle.dumps(f)).__name__ == f.__name__
