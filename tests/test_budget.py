"""s1 budget forcing on a tiny model: the cap holds, "Wait" extends, the answer phase is forced."""

from __future__ import annotations

import pytest

from r1core.budget import ANSWER_PREFIX, END_THINK, budget_forced_generate
from r1core.generation import SamplingParams
from r1core.prompts import render
from r1core.sampling import Completion, EngineSampler


def test_thinking_is_capped_and_the_answer_forced(tiny):
    model, tok = tiny
    prompts = [render(tok, "What is 2+2?", "r1_eval")] * 3
    out = budget_forced_generate(EngineSampler(model, tok, "tiny", batch_size=3), prompts, SamplingParams(seed=0),
                                 max_thinking_tokens=6, answer_tokens=4)
    for s in out:
        assert s.text.startswith("<think>") and f"{END_THINK}{ANSWER_PREFIX}" in s.text
        assert s.num_tokens <= 6 + 4


def test_wait_replaces_an_early_end_of_thinking(tiny, monkeypatch):
    model, tok = tiny
    calls = []
    sampler = EngineSampler(model, tok, "tiny")

    def scripted(prompts, params, **kwargs):
        calls.append((list(prompts), kwargs.get("stop_strings")))
        if kwargs.get("stop_strings"):  # thinking phase: end thinking after 2 tokens
            return [Completion(text="hmm " + END_THINK, num_tokens=2, truncated=False) for _ in prompts]
        return [Completion(text="4", num_tokens=1, truncated=False) for _ in prompts]

    monkeypatch.setattr(sampler, "complete", scripted)
    out = budget_forced_generate(sampler, ["P"], SamplingParams(), max_thinking_tokens=100, num_waits=2)
    thinking_calls = [c for c in calls if c[1]]
    assert len(thinking_calls) == 3                       # the first try + 2 "Wait" extensions
    assert thinking_calls[1][0][0].endswith("hmm Wait,")   # the delimiter was suppressed
    assert out[0].text.count("Wait,") == 2 and out[0].text.endswith(END_THINK + ANSWER_PREFIX + "4")
    assert out[0].num_tokens == 3 * 2 + 1


def test_bad_budget_raises(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="max_thinking_tokens"):
        budget_forced_generate(EngineSampler(model, tok, "tiny"), ["p"], SamplingParams(), max_thinking_tokens=0)
