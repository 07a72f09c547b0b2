"""The one sampler interface (r1core.sampling) and the one resumable sample log (r1core.samplelog)."""

from __future__ import annotations

import json

import pytest

from r1core.generation import SamplingParams
from r1core.samplelog import SampleLog
from r1core.sampling import ENGINES, EngineSampler, build_sampler, resolve_engine


def test_engine_sampler_gives_k_completions_per_problem_reproducibly(tiny):
    model, tok = tiny
    sampler = EngineSampler(model, tok, "tiny", template="r1_zero", prefill="<think>\n", batch_size=4)
    params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=3)
    first = sampler.sample_all(["1+1?", "2+2?", "3+3?"], 2, params)
    again = sampler.sample_all(["1+1?", "2+2?", "3+3?"], 2, params)
    assert [len(c) for c in first] == [2, 2, 2]
    assert [[c.text for c in cs] for cs in first] == [[c.text for c in cs] for cs in again]
    assert all(0 < c.num_tokens <= 5 for cs in first for c in cs)
    assert sampler.render("1+1?").endswith("<think>\n")


def test_cpu_and_hf_engines_agree_when_greedy(tiny):
    model, tok = tiny
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    prompts = [EngineSampler(model, tok, "t").render(p) for p in ("1+1?", "what is 7*8?")]
    ours = EngineSampler(model, tok, "t", engine="cpu").complete(prompts, params)
    theirs = EngineSampler(model, tok, "t", engine="hf").complete(prompts, params)
    assert [c.text for c in ours] == [c.text for c in theirs]


def test_engine_choice_fails_with_the_fix_where_it_cannot_run():
    assert resolve_engine("auto") == "cpu"  # no CUDA here
    with pytest.raises(ValueError, match=r"pip install '\.\[vllm\]'"):
        resolve_engine("vllm")
    with pytest.raises(ValueError, match="Unknown engine"):
        resolve_engine("trt")
    with pytest.raises(ValueError, match="endpoint section"):
        build_sampler("endpoint", None)
    assert set(ENGINES) == {"auto", "cpu", "hf", "vllm", "endpoint"}


def test_sample_log_drops_a_cut_last_line_and_never_joins_it(tmp_path):
    log = SampleLog(tmp_path / "samples.jsonl")
    log.append([{"id": "a", "sample": 0}, {"id": "a", "sample": 1}])
    log.path.write_bytes(log.path.read_bytes() + b'{"id": "b", "sam')  # a kill mid-write
    assert [r["sample"] for r in log.read()] == [0, 1] and log.dropped == 1
    log.append([{"id": "b", "sample": 0}])
    lines = log.path.read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"id": "a", "sample": 0}, {"id": "a", "sample": 1}, {"id": "b", "sample": 0}]
    assert SampleLog(tmp_path / "none.jsonl").read() == []


def test_sample_log_handles_a_cut_first_line_and_invalid_bytes(tmp_path):
    log = SampleLog(tmp_path / "s.jsonl")
    log.path.write_bytes(b'{"id": "a"')  # killed while writing the very first record
    assert log.read() == [] and log.dropped == 1
    log.append([{"id": "a"}])
    assert log.read() == [{"id": "a"}]
    log.path.write_bytes(log.path.read_bytes() + b"\xff\xfe\n")
    assert log.read() == [{"id": "a"}] and log.dropped == 1
