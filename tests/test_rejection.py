"""Rejection sampling's filters and its resumable sample log, with a scripted teacher (the
endpoint path against a real server is in tests/test_endpoint.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from r1core.config import RejectionSamplingConfig
from r1core.generation import SamplingParams
from r1core.rejection import rejection_sample, sample_with_resume
from r1core.sampling import Completion

GOOD = "<think>\n2 plus 2 makes 4\n</think>\n<answer>4</answer>"
RESPONSES = {
    "good": Completion(GOOD, 20, False),
    "mixed": Completion("<think>\n2 加 2 等于 4 所以 答案 是 4\n</think>\n<answer>4</answer>", 20, False),
    "loop": Completion("<think>\n" + "two plus two " * 40 + "\n</think>\n<answer>4</answer>", 200, False),
    "cut": Completion("<think>\n2 plus 2 makes", 64, True),
    "wrong": Completion("<think>\n2 plus 2 makes 5\n</think>\n<answer>5</answer>", 20, False),
    "again": Completion(GOOD, 20, False),
}


class ScriptedTeacher:
    """Answers each problem with the responses named in it (``"good,mixed"``); counts what it was asked."""

    id = "scripted"

    def __init__(self, fail_after: int | None = None):
        self.asked: list[str] = []
        self.fail_after = fail_after

    def sample(self, problems, k, params):
        for i, p in enumerate(problems):
            if self.fail_after is not None and len(self.asked) >= self.fail_after:
                raise ConnectionError("teacher went away")
            self.asked.append(p)
            yield i, [RESPONSES[name] for name in p.split(",")][:k]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def _problems(*specs: str) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"p{i}" for i in range(len(specs))], "problem": list(specs),
                         "answer": ["4"] * len(specs), "source": ["gsm8k"] * len(specs), "level": [1] * len(specs)})


def test_each_filter_counts_its_rejections(tmp_path):
    cfg = RejectionSamplingConfig(teacher="x", num_samples=6, max_completion_tokens=150)
    kept, samples, stats = rejection_sample(ScriptedTeacher(), _problems("good,mixed,loop,cut,wrong,again"), cfg,
                                            folder=tmp_path)
    assert list(samples["reason"]) == ["", "language_mixed", "too_long", "truncated", "incorrect", "duplicate"]
    cfg = RejectionSamplingConfig(teacher="x", num_samples=6)  # no length cap: the loop meets the repetition filter
    _, samples, stats = rejection_sample(ScriptedTeacher(), _problems("good,mixed,loop,cut,wrong,again"), cfg,
                                         folder=tmp_path / "b")
    assert samples["reason"].tolist()[2] == "repetition"
    assert stats["num_kept"] == 1 and stats["rejected/language_mixed"] == 1 and stats["rejected/repetition"] == 1
    assert stats["acceptance_rate"] == pytest.approx(1 / 6)
    row = kept.iloc[0]
    assert row["messages"] == [*row["prompt"], *row["completion"]] and row["messages"][-1]["content"] == GOOD


def test_filters_can_be_switched_off(tmp_path):
    cfg = RejectionSamplingConfig(teacher="x", num_samples=3, min_language_consistency=None, max_repetition=None)
    _, samples, _ = rejection_sample(ScriptedTeacher(), _problems("good,mixed,loop"), cfg, folder=tmp_path)
    assert samples["kept"].tolist() == [True, True, True]  # all three verify; nothing else is checked


def test_a_crash_keeps_every_finished_problem_and_the_rerun_samples_only_the_rest(tmp_path):
    problems = _problems(*["good,wrong"] * 5)
    params = SamplingParams()
    crashing = ScriptedTeacher(fail_after=3)
    with pytest.raises(ConnectionError):
        sample_with_resume(crashing, problems, 2, params, tmp_path, shard_size=2)
    assert len(crashing.asked) == 3
    again = ScriptedTeacher()
    done = sample_with_resume(again, problems, 2, params, tmp_path, shard_size=2)
    assert len(again.asked) == 2 and set(done) == set(problems["id"])  # p3 and p4 only
    assert all(len(v) == 2 for v in done.values())
    assert sorted(p.name for p in tmp_path.glob("shard-*.jsonl")) == [
        "shard-00000.jsonl", "shard-00001.jsonl", "shard-00002.jsonl"]


def test_a_stage_has_exactly_one_teacher():
    from r1core.config import RecipeError, recipe_from_dict

    ep = {"base_url": "http://127.0.0.1:1/v1", "model": "m"}
    r = recipe_from_dict({"name": "t", "stages": {"curate": {}, "rejection_sampling": {"endpoint": ep}}})
    st = r.stages["rejection_sampling"]
    assert st.teacher is None and "teacher" not in st.input_refs()  # no model input: the graph has no edge
    with pytest.raises(RecipeError, match="exactly one of teacher"):
        recipe_from_dict({"name": "t", "stages": {"curate": {}, "rejection_sampling": {"endpoint": ep,
                                                                                    "teacher": "base"}}})
