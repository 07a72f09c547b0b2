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
