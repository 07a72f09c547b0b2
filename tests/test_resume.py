"""A GRPO stage killed with SIGKILL resumes from its last checkpoint, in the same MLflow run,
with every step's metrics logged exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from r1core import stages
from r1core.config import recipe_from_dict
from r1core.settings import state_dir

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from r1core import stages
from r1core.config import recipe_from_dict
recipe = recipe_from_dict(json.loads(sys.argv[1]))
stages.run_stage(recipe, "grpo", sys.argv[2], data=sys.argv[3], model=sys.argv[4])
"""


def test_killed_grpo_resumes_from_checkpoint_without_duplicate_steps(tiny_model_dir, tmp_path):
    recipe_dict = {"name": "resume", "stages": {"curate": {}, "grpo": {
        "rewards": {"tag_count": 1.0}, "num_generations": 2, "max_completion_length": 4, "max_steps": 8,
        "save_steps": 2, "args": {"per_device_train_batch_size": 4}}}}
    recipe = recipe_from_dict(recipe_dict)
    rows = tmp_path / "rows.jsonl"
    pd.DataFrame({"id": list("abcd"), "problem": ["1+1?", "2+2?", "3+3?", "4+4?"],
                  "answer": ["2", "4", "6", "8"]}).to_json(rows, orient="records", lines=True)
    parent = stages.start_pipeline(recipe)
    args = [sys.executable, "-c", CHILD, json.dumps(recipe_dict), parent, str(rows), str(tiny_model_dir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    first = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ready = None
    while time.time() < deadline and first.poll() is None:
        ready = next(iter(state_dir().glob("work/grpo/*/checkpoint-4/trainer_state.json")), None)
        if ready:
            break
        time.sleep(0.2)
    assert ready is not None and first.poll() is None, "the first attempt never reached checkpoint-4"
    first.send_signal(signal.SIGKILL)
    first.wait()

    second = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr and "checkpoint-4" in second.stderr

    client = MlflowClient()
    exp = client.get_run(parent).info.experiment_id
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 1, "the retry must continue the killed attempt's run, not open a new one"
    run = children[0]
    assert run.data.tags.get("r1.resumed") == "true" and run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "rewards/tag_count/mean")]
    assert steps == list(range(1, 9)), steps
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "learning_curve.png" in artifacts


def test_a_pipeline_killed_before_it_finished_is_closed_by_the_next_one(tmp_path):
    """A parent run stays RUNNING while its pipeline runs; one whose process died (kill -9) is
    marked KILLED, with its stage runs still RUNNING, when the next pipeline of the recipe starts."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from r1core import tracking

    recipe = recipe_from_dict({"name": "dangling", "stages": {"curate": {}}})
    code = ("import sys; from r1core import stages, tracking; from r1core.config import recipe_from_dict\n"
            "r = recipe_from_dict({'name': 'dangling', 'stages': {'curate': {}}})\n"
            "p = stages.start_pipeline(r)\n"
            "print(p, flush=True)\n"
            "ctx = tracking.stage_run(p, 'curate'); ctx.__enter__(); print(mlflow.active_run().info.run_id, flush=True)\n"
            "import os; os._exit(9)\n").replace("import sys;", "import sys, mlflow;")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    dead_parent, dead_stage = out.stdout.split()[:2]
    client = MlflowClient()
    assert client.get_run(dead_parent).info.status == "RUNNING" and client.get_run(dead_stage).info.status == "RUNNING"
    live = stages.start_pipeline(recipe)
    assert client.get_run(dead_parent).info.status == "KILLED"
    assert client.get_run(dead_stage).info.status == "KILLED"
    assert client.get_run(live).info.status == "RUNNING"  # this process is alive: left alone
    assert tracking.close_dangling_parents(client.get_run(live).info.experiment_id, "dangling") == []
    tracking.end_parent_run(live, "FAILED")
    assert client.get_run(live).info.status == "FAILED"
    del mlflow


def _rejection_setup(tiny_model_dir):
    """A teacher on the project's engine (deterministic given the seed), 7 problems and the
    stage's settings: k=2, chunks (shards) of 2 problems, 2 problems per generation batch.

    The tiny random model never writes an answer, nor ends on its own: a stop string ("e") ends
    most samples early (not truncated), and the teacher appends an answer computed from what was
    sampled (its length mod 3), so which samples verify against the gold 1, and are kept, depends
    on exactly what was sampled."""
    from dataclasses import replace

    from r1core.config import RejectionSamplingConfig
    from r1core.models import load_model_and_tokenizer
    from r1core.sampling import EngineSampler

    class Answering(EngineSampler):
        def complete(self, prompts, params, *, stop_strings=None):
            outs = super().complete(prompts, params, stop_strings=stop_strings)
            return [replace(o, text=f"{o.text} \\boxed{{{len(o.text) % 3}}}") for o in outs]

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    teacher = Answering(model, tok, str(tiny_model_dir), batch_size=4, stop_strings=["e"])
    cfg = RejectionSamplingConfig(teacher="tiny", num_samples=2, max_new_tokens=12, temperature=1.0, shard_size=2,
                                  min_language_consistency=None, max_repetition=None)
    problems = pd.DataFrame({"id": [f"q{i}" for i in range(7)], "problem": [f"What is {i} + {i}?" for i in range(7)],
                             "answer": ["1"] * 7, "source": ["t"] * 7, "level": [1] * 7})
    return teacher, cfg, problems


def _same(a, b):
    kept_a, samples_a, stats_a = a
    kept_b, samples_b, stats_b = b
    assert samples_a.to_dict("records") == samples_b.to_dict("records")
    assert kept_a.to_dict("records") == kept_b.to_dict("records")
    assert stats_a == stats_b


def test_rejection_sampling_killed_mid_chunk_resumes_to_the_uninterrupted_samples(tiny_model_dir, tmp_path):
    """A teacher that dies after the first chunk and one problem of the second (both drawn in one
    generation batch) and a rerun: the kept traces, every sample and the counts are those of a run
    that was never interrupted; the rerun samples the cut chunk whole and writes each problem once."""
    import pytest

    from r1core.rejection import rejection_sample

    teacher, cfg, problems = _rejection_setup(tiny_model_dir)
    whole = rejection_sample(teacher, problems, cfg, seed=3, folder=tmp_path / "whole")
    _same(rejection_sample(teacher, problems, cfg, seed=3, folder=tmp_path / "again"), whole)  # deterministic
    assert 0 < whole[2]["num_kept"] < 14, "the test needs kept and rejected traces to compare"

    real_sample, given = teacher.sample, []

    def dies_after_three(problems_, k, params):
        for i, samples in real_sample(problems_, k, params):
            if len(given) == 3:
                raise RuntimeError("killed")
            given.append(problems_[i])
            yield i, samples

    teacher.sample = dies_after_three
    with pytest.raises(RuntimeError, match="killed"):
        rejection_sample(teacher, problems, cfg, seed=3, folder=tmp_path / "resumed")
    teacher.sample = real_sample
    lines = [json.loads(x) for f in sorted((tmp_path / "resumed").glob("shard-*.jsonl"))
             for x in f.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["q0", "q1", "q2"]

    calls = []
    teacher.sample = lambda p, k, params: (calls.append(list(p)), real_sample(p, k, params))[1]
    resumed = rejection_sample(teacher, problems, cfg, seed=3, folder=tmp_path / "resumed")
    _same(resumed, whole)
    assert calls == [["What is 2 + 2?", "What is 3 + 3?"], ["What is 4 + 4?", "What is 5 + 5?"], ["What is 6 + 6?"]]
    ids = [json.loads(x)["id"] for f in sorted((tmp_path / "resumed").glob("shard-*.jsonl"))
           for x in f.read_text().splitlines()]
    assert sorted(ids) == [f"q{i}" for i in range(7)]  # each problem written exactly once


def test_rejection_sampling_log_cut_mid_line_resumes_to_the_uninterrupted_samples(tiny_model_dir, tmp_path, caplog):
    """A kill mid-write: the log of an uninterrupted run cut in the middle of its fourth line, the
    later shards gone. The rerun drops the cut line (and counts it), samples that chunk again and
    the rest, and ends with the uninterrupted run's traces, samples and counts."""
    import logging
    import shutil

    from r1core.rejection import rejection_sample

    teacher, cfg, problems = _rejection_setup(tiny_model_dir)
    whole = rejection_sample(teacher, problems, cfg, seed=3, folder=tmp_path / "whole")
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    for shard in sorted(cut.glob("shard-*.jsonl"))[2:]:
        shard.unlink()
    second = cut / "shard-00001.jsonl"
    first_line, fourth_line = second.read_text().splitlines()
    second.write_text(first_line + "\n" + fourth_line[: len(fourth_line) // 2])
    caplog.set_level(logging.INFO, logger="r1core.rejection")
    resumed = rejection_sample(teacher, problems, cfg, seed=3, folder=cut)
    _same(resumed, whole)
    assert "3 of 7 problems already sampled (1 cut line(s) dropped" in caplog.text
    assert second.read_text().splitlines()[0] == first_line and len(second.read_text().splitlines()) == 2
    assert all(json.loads(x) for f in cut.glob("shard-*.jsonl") for x in f.read_text().splitlines())


def test_budget_forced_evaluation_cut_mid_line_resumes_to_the_uninterrupted_samples(tiny_model_dir, tmp_path):
    """Budget forcing keeps no log of its own: it runs inside the evaluation's chunks, seeded from
    each chunk's seed, so a kill mid-write and a rerun give the uninterrupted run's samples."""
    import functools

    from r1core.budget import budget_forced_generate
    from r1core.evaluation import evaluate_benchmark
    from r1core.generation import SamplingParams
    from r1core.models import load_model_and_tokenizer
    from r1core.sampling import EngineSampler

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    sampler = EngineSampler(model, tok, str(tiny_model_dir), batch_size=1)
    problems = pd.DataFrame({"id": ["a", "b", "c"], "problem": ["1+1?", "2+2?", "3+3?"], "answer": ["2", "4", "6"]})
    forced = functools.partial(budget_forced_generate, sampler, max_thinking_tokens=6, num_waits=1, answer_tokens=3)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    path = tmp_path / "budget.jsonl"
    m1, s1 = evaluate_benchmark(sampler, problems, k=2, params=params, results_path=path, generate_fn=forced)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4]) + "\n" + lines[4][: len(lines[4]) // 3])  # chunk 2 cut mid-line
    m2, s2 = evaluate_benchmark(sampler, problems, k=2, params=params, results_path=path, generate_fn=forced)
    assert list(s2["completion"]) == list(s1["completion"]) and m2 == m1
    assert len(path.read_text().splitlines()) == 6
