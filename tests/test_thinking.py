"""Under/overthinking metrics (r1core.thinking) on handmade responses, and TIP decoding
(r1core.tip) on the tiny model in the project's engine and in transformers ``generate``."""

from __future__ import annotations

import math
import sys
import types
from enum import Enum, auto

import pandas as pd
import pytest
import torch

from r1core import thinking, tip
from r1core.generation import SamplingParams, _hf_generate, generate, sample_token_ids


def words(text: str) -> int:
    """Token counter for handmade responses: whitespace-separated words."""
    return len(text.split())


# --- splitting and per-response statistics --------------------------------------------------

def test_split_at_markers_splits_before_whole_word_markers_and_covers_the_text():
    text = "Try x = 2. alternatively x = 3. ALTERNATIVELY, nonalternatively 4. Wait, let me double-check."
    spans = thinking.split_at_markers(text, ["alternatively"])
    assert [text[a:b] for a, b in spans] == ["Try x = 2. ", "alternatively x = 3. ",
                                               "ALTERNATIVELY, nonalternatively 4. Wait, let me double-check."]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    # the solution markers also split at re-checks; a marker at the very start opens no empty segment
    assert thinking.split_at_markers("Alternatively 1.", ["alternatively"]) == [(0, 16)]
    assert len(thinking.split_at_markers(text, thinking.SOLUTION_MARKERS)) == 4


def test_analyse_finds_the_first_correct_thought_and_round_by_hand():
    texts = [
        # 18 words; round 1 ("Let me think. 2+3 = 5.", 6 words) is correct; thought 1 ends before "Alternatively" (13 words)
        "Let me think. 2+3 = 5. Wait, let me double-check: 2+3 = 5. Alternatively, count: 5. So \\boxed{5}",
        # 13 words; thought 2 ("Alternatively, x = 5 is possible.") is the first correct one: 3 + 6 = 9 words
        "x = 7. Alternatively, x = 5 is possible. Alternatively, maybe 9. \\boxed{9}",
        "no answer here at all",
        "\\boxed{5}",
    ]
    stats = thinking.analyse(texts, ["5", "5", "5", "5"], correct=[True, False, False, None], count_tokens=words)
    assert stats[0] == thinking.ThinkingStats(num_thoughts=2, first_correct_thought_at=13 / 18, num_solution_rounds=3,
                                              first_correct_solution_at=6 / 18)
    # rounds: "x = 7." (wrong), "x = 5" (right: sigma = 1 although the final answer is wrong), "9"
    assert stats[1] == thinking.ThinkingStats(num_thoughts=3, first_correct_thought_at=9 / 13, num_solution_rounds=3,
                                              first_correct_solution_at=9 / 13)
    assert stats[2] == thinking.ThinkingStats(num_thoughts=1, first_correct_thought_at=None, num_solution_rounds=0,
                                              first_correct_solution_at=None)
    assert stats[3] is None  # gold unparsable: no statistics
    assert thinking.record(None) == dict.fromkeys(thinking.COLUMNS)


def test_analyse_leaves_out_answer_types_it_cannot_check_per_segment():
    stats = thinking.analyse(["def f(): return 1"], ["tests"], correct=[False], count_tokens=words,
                             answer_types=["code"])
    assert stats == [None]
    with pytest.raises(ValueError, match="one of each per completion"):
        thinking.analyse(["a", "b"], ["1"], correct=[True, True], count_tokens=words)


# --- benchmark metrics -----------------------------------------------------------------------

def _rows(rows):
    return pd.DataFrame(rows, columns=["id", "correct", *thinking.COLUMNS])


def test_metrics_match_the_papers_definitions_by_hand():
    samples = _rows([
        ("a", True, 2, 0.50, 3, 0.25),
        ("a", False, 3, 0.40, 2, None),   # a correct thought at 40% of the tokens: 1 - 0.4 = 0.6
        ("b", False, 2, None, 2, 0.50),   # no correct thought: T^ = T, not underthinking (0); sigma = 1
        ("b", False, 4, 0.10, 1, 0.10),   # 1 - 0.1 = 0.9
        ("b", None, 9, 0.99, 9, 0.99),    # gold unparsable: left out
    ])
    m = thinking.metrics(samples)
    assert m["underthinking"] == pytest.approx((0.6 + 0.0 + 0.9) / 3)             # eq. 1 over incorrect responses
    assert m["underthinking_weighted"] == pytest.approx(((0 + 0.6) / 2 + (0 + 0.9) / 2) / 2)  # eq. 3: correct = 0
    assert m["outcome_efficiency"] == pytest.approx(((0.25 + 0) / 2 + (0.5 + 0.1) / 2) / 2)
    assert m["mean_solution_rounds"] == pytest.approx((3 + 2 + 2 + 1) / 4)
    assert m["mean_thoughts"] == pytest.approx((2 + 3 + 2 + 4) / 4)


def test_metrics_reproduce_the_papers_worked_examples():
    # Wang et al. 2025, Figure 2: the first thought is correct at 411 of 7,681 tokens: 1 - 411/7681 = 0.946
    ut = thinking.metrics(_rows([("p", False, 25, 411 / 7681, 1, None)]))["underthinking"]
    assert round(ut, 3) == 0.946
    # Chen et al. 2024, Figure 2: the first solution is correct at 39 of 901 tokens: 4.3%
    eff = thinking.metrics(_rows([("q", True, 1, 39 / 901, 13, 39 / 901)]))["outcome_efficiency"]
    assert round(eff, 3) == 0.043


def test_metrics_are_left_out_rather_than_nan():
    assert "underthinking" not in thinking.metrics(_rows([("a", True, 1, 1.0, 1, 1.0)]))  # no incorrect sample
    assert thinking.metrics(_rows([("a", True, None, None, None, None)])) == {}  # samples from before the columns
    assert thinking.metrics(pd.DataFrame({"id": ["a"], "correct": [True]})) == {}


class _FixedSampler:
    """A sampler that answers every prompt with the next of a fixed list of completions."""

    batch_size = 8

    def __init__(self, texts):
        self.texts = list(texts)

    def render(self, problem):
        return problem

    def count_tokens(self, text):
        return words(text)

    def complete(self, prompts, params):
        from r1core.sampling import Completion

        out = [Completion(t, words(t), False) for t in self.texts[: len(prompts)]]
        self.texts = self.texts[len(prompts):]
        return out


def test_evaluation_logs_the_thinking_metrics_next_to_pass_at_1(tmp_path):
    from r1core.evaluation import evaluate_benchmark

    problems = pd.DataFrame({"id": ["p1", "p2"], "problem": ["2+3?", "1+1?"], "answer": ["5", "2"]})
    texts = ["2+3 = 5. Wait, let me double-check: yes 5. \\boxed{5}",  # correct; 2 rounds, the first right: 3 of 10 words
             "It is 4. Alternatively, 1+1 = 2 maybe. Alternatively 3. \\boxed{3}"]  # wrong; thought 2 right: 8 of 11
    metrics, samples = evaluate_benchmark(_FixedSampler(texts), problems, k=1, params=SamplingParams(),
                                          results_path=tmp_path / "log.jsonl")
    assert metrics["pass@1"] == 0.5
    assert metrics["underthinking"] == pytest.approx(1 - 8 / 11)
    assert metrics["outcome_efficiency"] == pytest.approx((3 / 10 + 8 / 11) / 2)
    assert metrics["mean_solution_rounds"] == pytest.approx((2 + 3) / 2)
    assert list(samples["num_thoughts"]) == [1, 3]
    # the columns are in the resumable log: a second run reads them back, same metrics
    again, _ = evaluate_benchmark(_FixedSampler([]), problems, k=1, params=SamplingParams(),
                                  results_path=tmp_path / "log.jsonl")
    assert again == metrics
    off, _ = evaluate_benchmark(_FixedSampler(texts), problems, k=1, params=SamplingParams(), thinking_metrics=False)
    assert "outcome_efficiency" not in off and off["pass@1"] == 0.5


# --- TIP: the penalty rule -------------------------------------------------------------------

def test_switch_tokens_are_the_first_token_of_each_spelling(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    ids = tip.switch_token_ids(tok, ["alternatively"])
    firsts = {tok(s, add_special_tokens=False)["input_ids"][0]
              for s in ("alternatively", "Alternatively", " alternatively", " Alternatively")}
    assert set(ids) == firsts and len(ids) == 4
    assert tok.decode([tok(" Alternatively", add_special_tokens=False)["input_ids"][0]]) == " Alternatively"
    with pytest.raises(ValueError, match="at least one switch word"):
        tip.switch_token_ids(tok, [" "])


def test_tip_settings_are_checked_with_the_fix():
    with pytest.raises(ValueError, match="tip_alpha >= 0"):
        SamplingParams(tip_alpha=-1.0)
    assert tip.resolve(SamplingParams(tip_alpha=3.0, tip_beta=0)) is None  # beta = 0: standard decoding
    with pytest.raises(ValueError, match="needs the tokenizer"):
        tip.resolve(SamplingParams(tip_alpha=3.0))
    assert tip.resolve(SamplingParams(tip_alpha=3.0, tip_token_ids=(7, 5, 7))) == tip.Tip(3.0, 600, (5, 7))


def test_engine_state_and_logits_processor_penalise_the_same_rows():
    """beta = 3, V^ = {5, 7}; after 3 completion tokens: row 0 never switched (t - 0 = 3: off),
    row 1 switched at position 1 (3 - 1 = 2 < 3: on), row 2 switched at position 0 (off)."""
    rule = tip.Tip(alpha=2.0, beta=3, token_ids=(5, 7))
    completions = torch.tensor([[1, 2, 3], [1, 5, 2], [7, 1, 1]])  # (B, t)
    logits = torch.randn(3, 10)
    expected = logits.clone()
    expected[1, [5, 7]] -= 2.0
    state = tip.TipState(rule, rows=3, device="cpu")
    for step in range(3):
        state.observe(completions[:, step])
    ours = state.penalize(logits.clone())
    prompt = torch.zeros((3, 4), dtype=torch.long)
    theirs = tip.TipLogitsProcessor(rule, prompt_width=4)(torch.cat([prompt, completions], dim=1), logits.clone())
    assert torch.equal(ours, expected) and torch.equal(theirs, expected)
    # at the first step every row is inside its first thought's window
    fresh = tip.TipLogitsProcessor(rule, prompt_width=4)(prompt, logits.clone())
    assert torch.equal(fresh[:, [5, 7]], logits[:, [5, 7]] - 2.0)
    state.keep(torch.tensor([1]))
    assert state.start.tolist() == [1]


# --- TIP on the tiny model -------------------------------------------------------------------

PROMPTS = ["What is 1+1?", "Compute the sum of the first ten odd numbers, please.", "Hi",
           "A longer prompt that makes the left padding matter: " * 3]


def test_engine_and_transformers_give_the_same_tip_completions_when_greedy(tiny):
    """The same adjusted logits in both backends: identical greedy completions with TIP on. V^ is
    what the model says greedily without TIP, so TIP must change every completion, and no V^
    token may appear within the first beta positions (alpha = 100 also keeps Ψ at 0)."""
    model, tok = tiny
    prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    plain = SamplingParams(max_new_tokens=10, temperature=0.0)
    base = sample_token_ids(model, prompt_ids, plain, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    switch = tuple(sorted({i for c in base for i in c.ids[:4]}))
    params = SamplingParams(max_new_tokens=10, temperature=0.0, tip_alpha=100.0, tip_beta=4, tip_token_ids=switch)
    ours = generate(model, tok, PROMPTS, params, batch_size=3, engine="r1")
    theirs = generate(model, tok, PROMPTS, params, batch_size=3, engine="hf")
    assert [o.text for o in ours] == [t.text for t in theirs]
    penalised = sample_token_ids(model, prompt_ids, params, eos_ids=[tok.eos_token_id], pad_id=tok.pad_token_id)
    assert all(not set(c.ids[:4]) & set(switch) for c in penalised)
    assert all(c.ids != b.ids for c, b in zip(penalised, base))


def _switch_frequencies(token_lists, switch: set[int], beta: int) -> tuple[float, int, float, int]:
    """Switch-token frequency at positions inside (t < Ψ + beta) and outside the penalty window,
    with Ψ read from each completion's own history: ``(inside, n_inside, outside, n_outside)``."""
    counts = {True: [0, 0], False: [0, 0]}
    for ids in token_lists:
        start = 0
        for t, token in enumerate(ids):
            cell = counts[t - start < beta]
            cell[0] += token in switch
            cell[1] += 1
            if token in switch:
                start = t
    (a, n), (b, m) = counts[True], counts[False]
    return a / n, n, b / max(m, 1), m


@pytest.mark.parametrize("engine", ["r1", "hf"])
def test_tip_lowers_the_switch_odds_by_exp_alpha_inside_the_window_only(tiny, engine):
    """Temperature 1 on the random tiny model (nearly uniform), V^ = every even token id (about
    half the mass). Inside the window TIP multiplies the switch tokens' probability by e^-alpha
    relative to the others: the odds fall by e^-alpha (log-odds by alpha). Outside it (beta
    tokens after the last switch) the frequency is the untouched one."""
    model, tok = tiny
    switch = tuple(range(0, len(tok), 2))
    prompts = ["What is 1+1?", "Hi there", "Compute 3*4."] * 32  # many short completions: few decoding steps
    alpha, beta = 1.5, 2

    def sample(a: float) -> list[list[int]]:
        params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=1.0, seed=3, tip_alpha=a, tip_beta=beta,
                                tip_token_ids=switch)
        if engine == "r1":
            ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
            return [c.ids for c in sample_token_ids(model, ids, params, eos_ids=[tok.eos_token_id],
                                                    pad_id=tok.pad_token_id, batch_size=96)]
        return [c.ids for c in _hf_generate(model, tok, prompts, params, [tok.eos_token_id], 96, None, None)]

    off_in, n_off, off_out, m_off = _switch_frequencies(sample(0.0), set(switch), beta)
    on_in, n_on, on_out, m_on = _switch_frequencies(sample(alpha), set(switch), beta)
    assert min(n_off, m_off, n_on, m_on) > 500  # positions in each cell (measured: 663-873)
    assert abs(off_in - off_out) < 0.07  # without TIP the window makes no difference (~0.5 both)
    log_odds = math.log(on_in / (1 - on_in)) - math.log(off_in / (1 - off_in))
    assert log_odds == pytest.approx(-alpha, abs=0.4)  # measured: -1.48 (r1), -1.52 (hf); standard error ~0.12
    assert abs(on_out - off_out) < 0.07  # outside the window: untouched (measured: 0.51 vs 0.50-0.51)


# --- TIP in the other backends ----------------------------------------------------------------

def test_endpoint_refuses_tip_with_the_fix():
    from r1core.sampling import EndpointSampler

    sampler = EndpointSampler("http://127.0.0.1:9/v1", "m", template="r1_eval", max_retries=0)
    with pytest.raises(ValueError, match="engine cpu, hf or vllm"):
        next(sampler.sample(["1+1?"], 1, SamplingParams(tip_alpha=3.0)))


@pytest.fixture
def fake_vllm(monkeypatch):
    """The three names r1core.tip_vllm takes from vLLM's logits-processor interface (vLLM is
    not installed here), so the processor's bookkeeping can run."""
    module = types.ModuleType("vllm.v1.sample.logits_processor")

    class MoveDirectionality(Enum):
        UNIDIRECTIONAL = auto()
        SWAP = auto()

    module.LogitsProcessor, module.MoveDirectionality = object, MoveDirectionality
    module.BatchUpdate = types.SimpleNamespace
    for name in ("vllm", "vllm.v1", "vllm.v1.sample"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.v1.sample.logits_processor", module)
    monkeypatch.delitem(sys.modules, "r1core.tip_vllm", raising=False)
    import r1core.tip_vllm

    yield r1core.tip_vllm, MoveDirectionality
    monkeypatch.delitem(sys.modules, "r1core.tip_vllm", raising=False)
    monkeypatch.delattr(sys.modules["r1core"], "tip_vllm", raising=False)


def test_vllm_processor_follows_requests_through_the_persistent_batch(fake_vllm):
    tip_vllm, move = fake_vllm
    rule = tip.Tip(alpha=2.0, beta=3, token_ids=(5, 7))
    params = types.SimpleNamespace(extra_args=tip_vllm.extra_args(rule))
    tip_vllm.ThoughtSwitchPenalty.validate_params(params)
    with pytest.raises(ValueError, match="extra_args"):
        tip_vllm.ThoughtSwitchPenalty.validate_params(types.SimpleNamespace(extra_args={"tip": {"alpha": 1}}))
    proc = tip_vllm.ThoughtSwitchPenalty(None, torch.device("cpu"), False)
    assert proc.is_argmax_invariant() is False
    out0, out1 = [1, 2, 3], [1, 5, 2]  # request 0: never switched, t = 3 (off); request 1: Ψ = 1 (on)
    proc.update_state(types.SimpleNamespace(removed=[], moved=[], added=[
        (0, params, [9], out0), (1, params, [9], out1), (2, types.SimpleNamespace(extra_args=None), [9], [])]))
    logits = torch.zeros(3, 10)
    proc.apply(logits)
    assert logits[:, [5, 7]].tolist() == [[0, 0], [-2, -2], [0, 0]]
    out0.append(7)  # vLLM appends to the same list: request 0 switches at position 3, so it is on again
    proc.update_state(types.SimpleNamespace(removed=[1], added=[], moved=[(0, 2, move.SWAP)]))
    logits = torch.zeros(3, 10)
    proc.apply(logits)
    assert logits[:, [5, 7]].tolist() == [[0, 0], [0, 0], [-2, -2]]  # request 0 now sits at index 2


def test_a_recipe_turns_tip_on_for_its_evaluation():
    from r1core.config import recipe_from_dict

    recipe = recipe_from_dict({"name": "t", "stages": {"evaluate": {"model": "base", "tip": {"alpha": 3}}}})
    kwargs = recipe.stages["evaluate"].tip.sampling_kwargs()
    assert kwargs == {"tip_alpha": 3.0, "tip_beta": 600, "tip_words": ("alternatively",)}
    assert SamplingParams(**kwargs).tip_beta == 600
