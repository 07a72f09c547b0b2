"""Model-based rewards (r1core.judge): score parsing, routing by the row's domain, general rows through
curation, an LLM judge against the real llama.cpp server (marker ``endpoint``) in a GRPO step and in
the r1_all_scenarios recipe's stage, and a reward model (a tiny random sequence classifier) in a GRPO step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from r1core import curation, data, tracking
from r1core.config import CurateConfig, GRPOStageConfig
from r1core.judge import (GENERAL, JudgeReward, OnDomains, RewardModelReward, parse_score, route_by_domain,
                          row_domains)
from r1core.rewards import AccuracyReward, FormatReward, get_rewards
from tests.test_endpoint import server  # noqa: F401  (the llama.cpp server fixture, shared)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-r1-judge-secret-do-not-log"
GRAMMAR = {"grammar": 'root ::= "Score: " ([0-9] | "10") "/10"'}  # llama.cpp: the reply is always a score
MIXED = pd.DataFrame({"id": ["m0", "g0"], "problem": ["What is 2+2?", "Write a haiku about the first snow."],
                      "answer": ["4", ""], "answer_type": ["math", ""], "domain": ["", GENERAL]})


def _missing(v) -> bool:
    """TRL's None as it comes back: None, or NaN (a JSON null, or a float)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


# ------------------------------------------------------------------------------------------ unit

@pytest.mark.parametrize("reply,score", [
    ("Clear and correct.\nScore: 7/10", 0.7),
    ("**Score:** 8", 0.8),
    ("score: 3 out of 5", 0.6),
    ("Score: 7.5 / 10", 0.75),
    ("Score: 0/10", 0.0),
    ("Score: 10/10", 1.0),
    ("First thought: Score: 2/10. On reflection... Score: 9/10", 0.9),  # the last verdict counts
    ("Scores range from 0 to 10. Score: 6", 0.6),
    ("Score: 11/10", None),       # outside its own scale
    ("Score: -3/10", None),       # a minus sign is not skipped
    ("A lovely haiku, well done.", None),
    ("", None),
])
def test_parse_score(reply, score):
    got = parse_score(reply)
    assert (got is None and score is None) or got == pytest.approx(score)


def test_docstring_examples_run():
    import doctest

    import r1core.judge

    assert doctest.testmod(r1core.judge).failed == 0


def test_row_domains_come_from_domain_then_answer_type():
    assert row_domains(4, [GENERAL, "", None, "science"], ["", "code", None, "math"]) == \
        [GENERAL, "code", "math", "science"]
    assert row_domains(2) == ["math", "math"]


def test_rewards_that_need_the_answer_skip_general_rows_and_are_not_called_for_them(tmp_path, tiny_model_dir):
    seen = []

    class Spy:
        __name__ = "spy"

        def __call__(self, completions, answer, **kwargs):
            seen.append(list(answer))
            return [1.0] * len(completions)

    def no_answer(completions, **kwargs):
        return [0.5] * len(completions)

    rm, fmt = RewardModelReward(model=str(tiny_model_dir)), FormatReward()
    funcs, models = route_by_domain([Spy(), AccuracyReward(), fmt, no_answer, rm])
    assert [type(f).__name__ for f in funcs[:2]] == ["OnDomains", "OnDomains"]
    assert funcs[2] is fmt and funcs[3] is no_answer  # they need no answer: every row
    assert funcs[4] == rm.path and models == {4: rm}  # TRL loads the model from its path
    assert [f.__name__ for f in funcs[:3]] == ["spy", "accuracy", "format"]  # TRL logs these names
    batch = dict(completions=["<think>x</think><answer>4</answer>"] * 3, answer=["4", "", "4"],
                 domain=["math", GENERAL, ""], answer_type=["math", "", "math"], prompts=["a", "b", "c"])
    assert funcs[0](**batch) == [1.0, None, 1.0] and seen == [["4", "4"]]
    assert funcs[1](**batch) == [1.0, None, 1.0]
    assert funcs[2](**batch) == [1.0, 1.0, 1.0]  # format applies to every row
    assert OnDomains(Spy(), domains=[GENERAL])(**batch) == [None, 1.0, None]


def test_general_rows_of_a_user_file_survive_curation():
    ds, counts = data.load(str(ROOT / "recipes" / "data" / "all_scenarios.jsonl"))
    rows = ds.to_pandas()
    assert counts == {"rows_read": 28, "rows_skipped": 0}
    general = rows[rows["domain"] == GENERAL]
    assert len(general) == 12 and set(general["answer"]) == {""} and set(general["answer_type"]) == {""}
    assert row_domains(len(rows), list(rows["domain"]), list(rows["answer_type"])).count("code") == 4
    cfg = CurateConfig(dataset="x.jsonl", decontaminate=[], drop_unparsable_gold=True)
    bad_gold = pd.concat([rows, pd.DataFrame([{**rows.iloc[0].to_dict(), "id": "bad", "answer": ""}])])
    kept, metrics = curation.filter_pool(bad_gold, cfg, {})
    assert metrics["gold_unparsable_removed"] == 1 and len(kept) == 28  # the math row with no gold, not the prompts


def test_model_based_reward_settings_fail_with_the_fix(tiny_model_dir, monkeypatch):
    with pytest.raises(ValueError, match=r"reward_args\.judge\.endpoint: Field required"):
        get_rewards({"judge": 1.0})
    with pytest.raises(ValueError, match=r"reward_args\.judge\.rubrik: unknown key"):
        get_rewards({"judge": 1.0}, {"judge": {"endpoint": {"base_url": "http://x/v1", "model": "m"}, "rubrik": "x"}})
    monkeypatch.delenv("R1_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$R1_TEST_JUDGE_KEY, which is not set"):
        JudgeReward(endpoint={"base_url": "http://x/v1", "model": "m", "api_key_env": "R1_TEST_JUDGE_KEY"})
    with pytest.raises(ValueError, match="reward_model needs the model"):
        get_rewards({"reward_model": 1.0})
    with pytest.raises(ValueError, match="domains must be a non-empty list"):
        RewardModelReward(model=str(tiny_model_dir), domains=[])
    with pytest.raises(TypeError, match="scored by TRL's GRPOTrainer itself"):
        RewardModelReward(model=str(tiny_model_dir))(["x"])


# ------------------------------------------------------------------------------------------ GRPO steps

def _tiny_reward_model(out_dir: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer random Llama sequence classifier with one output (a reward model) and the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, num_labels=1,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    LlamaForSequenceClassification(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _grpo_step(tiny_model_dir, tmp_path, rows, **cfg) -> tuple[str, dict]:
    """One GRPO step (2 prompts x 2 completions) through r1core.grpo.train_grpo in a fresh MLflow run."""
    from r1core.grpo import train_grpo
    from r1core.models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    stage = GRPOStageConfig(num_generations=2, max_completion_length=8, max_steps=1, engine="cpu",
                            args={"per_device_train_batch_size": 4}, **cfg)
    with mlflow.start_run(experiment_id=tracking.setup("test-judge")) as run:
        summary = train_grpo(model, tok, rows, stage, str(tmp_path / "out"), seed=0)
    return run.info.run_id, summary


def _completions(run_id: str) -> list[dict]:
    path = MlflowClient().download_artifacts(run_id, "completions/step_00001.json")
    table = json.loads(Path(path).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def test_reward_model_reward_is_scored_by_trl_on_general_rows(tiny_model_dir, smollm2_tokenizer_dir, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm_dir = _tiny_reward_model(tmp_path / "rm", smollm2_tokenizer_dir)
    run_id, summary = _grpo_step(tiny_model_dir, tmp_path, MIXED, rewards={"accuracy": 1.0, "reward_model": 0.5},
                                 reward_args={"reward_model": {"model": str(rm_dir)}})
    history = MlflowClient().get_metric_history(run_id, "rewards/reward_model/mean")  # the recipe's name, not "rm"
    assert [m.step for m in history] == [1] and math.isfinite(history[0].value)
    assert summary["reward_model_first"] == pytest.approx(history[0].value)
    rows = _completions(run_id)
    general = [r for r in rows if "haiku" in r["prompt"]]
    checked = [r for r in rows if "2+2" in r["prompt"]]
    assert len(general) == len(checked) == 2
    assert all(_missing(r["reward/reward_model"]) for r in checked)      # masked: not its domain
    assert all(_missing(r["reward/accuracy"]) for r in general)          # no gold answer on a general row
    assert all(not _missing(r["reward/accuracy"]) for r in checked)
    # TRL's score is the classifier's logit of prompt + completion: the same number, recomputed here
    tok = AutoTokenizer.from_pretrained(rm_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for r in general:
        ids = tok(r["prompt"] + r["completion"], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            assert rm(**ids).logits[0, 0].item() == pytest.approx(r["reward/reward_model"], abs=1e-4)
    assert history[0].value == pytest.approx(sum(r["reward/reward_model"] for r in general) / 2, abs=1e-5)


def _judge_args(url: str, **settings) -> dict:
    return {"endpoint": {"base_url": url, "model": "smollm2", "max_concurrency": 2, "timeout_s": 120,
                         "max_retries": 1}, **settings}


@pytest.mark.endpoint
def test_judge_asks_the_server_for_general_rows_only(server):
    judge = JudgeReward(**_judge_args(server.url, max_tokens=16, extra_body=GRAMMAR))
    metrics: dict[str, float] = {}
    before = server.requests_served()
    out = judge(["<think>\nsnow</think>\n<answer>Soft flakes drift down</answer>", "<answer>4</answer>",
                 "```python\ndef add(a, b):\n    return a + b\n```", "asdf qwer zxcv"],
                prompts=["p<think>\n", "q", "r", "s"], problem=["Write a haiku about snow.", "2+2?", "Write add.",
                                                               "Give me a sleep tip."],
                domain=[GENERAL, "", "", GENERAL], answer_type=["", "math", "code", ""],
                log_metric=lambda k, v: metrics.__setitem__(k, v))
    assert server.requests_served() - before == 2
    assert out[1] is None and out[2] is None and all(0.0 <= s <= 1.0 for s in (out[0], out[3]))
    assert metrics == {"judge/requests": 2.0, "judge/unparsable": 0.0, "judge/errors": 0.0}


@pytest.mark.endpoint
def test_an_unconstrained_small_judge_is_counted_unparsable_never_a_silent_zero(server):
    judge = JudgeReward(**_judge_args(server.url, max_tokens=48))  # the default rubric, no grammar
    problems = ["Write a haiku about snow.", "What is the capital of France?", "Give me a sleep tip."]
    responses = ["Soft flakes drift down", "The capital of France is Paris.", "asdf qwer zxcv"]
    verdicts = judge.judge(problems, responses)
    metrics: dict[str, float] = {}
    scores = judge(responses, problem=problems, domain=[GENERAL] * 3, log_metric=lambda k, v: metrics.__setitem__(k, v))
    assert all(v.error is None and v.reply for v in verdicts)
    assert [v.score for v in verdicts] == [parse_score(v.reply) for v in verdicts]
    assert scores == [v.score for v in verdicts]  # temperature 0, seed 0: the same verdicts
    assert metrics["judge/unparsable"] == sum(s is None for s in scores)


@pytest.mark.endpoint
def test_judge_reward_grpo_step_scores_general_rows_through_the_trainer(server, tiny_model_dir, tmp_path):
    before = server.requests_served()
    run_id, summary = _grpo_step(tiny_model_dir, tmp_path, MIXED, rewards={"accuracy": 1.0, "format": 0.5, "judge": 1.0},
                                 reward_args={"judge": _judge_args(server.url, max_tokens=16, extra_body=GRAMMAR)})
    assert server.requests_served() - before == 2  # the general prompt's two completions, nothing else
    client = MlflowClient()
    metrics = client.get_run(run_id).data.metrics
    assert metrics["judge/requests"] == 2 and metrics["judge/unparsable"] == 0 and metrics["judge/errors"] == 0
    rows = _completions(run_id)
    general = [r for r in rows if "haiku" in r["prompt"]]
    checked = [r for r in rows if "2+2" in r["prompt"]]
    assert len(general) == len(checked) == 2
    assert all(_missing(r["reward/judge"]) for r in checked)              # the judge's None on rule-based rows
    assert all(0.0 <= r["reward/judge"] <= 1.0 for r in general)
    assert all(_missing(r["reward/accuracy"]) for r in general) and all(not _missing(r["reward/accuracy"]) for r in checked)
    assert all(not _missing(r["reward/format"]) for r in rows)
    judged = sum(r["reward/judge"] for r in general) / 2
    assert metrics["rewards/judge/mean"] == pytest.approx(judged) == pytest.approx(summary["judge_first"])


@pytest.mark.endpoint
def test_all_scenarios_recipe_stage_runs_with_the_judge(server, tiny_model_dir, data_dir, tmp_path, monkeypatch):
    from r1core import stages
    from r1core.config import recipe_from_dict
    from tests.tiny import shrink_recipe

    monkeypatch.setenv("R1_TEST_JUDGE_KEY", SECRET)  # llama.cpp ignores it; it must not reach MLflow
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in [
        {"problem": "What is 2+2?", "answer": "4"}, {"problem": "Write a haiku about the first snow.", "domain": GENERAL}]))
    raw = shrink_recipe(yaml.safe_load((ROOT / "recipes" / "r1_all_scenarios.yaml").read_text()), tiny_model_dir,
                        "tiny-all-scenarios")
    raw["stages"]["curate"]["dataset"] = str(mixed)
    judge = raw["stages"]["grpo_final"]["reward_args"]["judge"]
    judge["endpoint"].update(base_url=server.url, api_key_env="R1_TEST_JUDGE_KEY")
    recipe = recipe_from_dict(raw)
    stages.validate(recipe)
    parent = stages.start_pipeline(recipe)
    cur = stages.run_stage(recipe, "curate", parent)
    assert cur["num_problems"] == 2
    before = server.requests_served()
    out = stages.run_stage(recipe, "grpo_final", parent, data=cur["dataset_uri"], model=str(tiny_model_dir))
    assert server.requests_served() - before == 2
    run = MlflowClient().get_run(out["run_id"])
    assert 0.0 <= run.data.metrics["rewards/judge/mean"] <= 1.0 and run.data.metrics["judge/unparsable"] == 0
    assert math.isfinite(run.data.metrics["rewards/accuracy/mean"])
    assert SECRET not in json.dumps([run.data.params, run.data.tags])
