"""The accelerate launcher: command, environment, and (slow) a real one-process launch on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from r1core.launch import LaunchSpec, build_command, child_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["ddp", "zero2", "zero3"])
def test_command_uses_the_shipped_config(config):
    path = str(ROOT / "recipes" / "accelerate" / f"{config}.yaml")
    cmd = build_command("/tmp/spec.json", accelerate_config=path, num_processes=8)
    assert cmd[0] == str(Path(sys.executable).with_name("accelerate")) and cmd[1] == "launch"
    assert cmd[cmd.index("--config_file") + 1] == path
    assert cmd[cmd.index("--num_processes") + 1] == "8"
    assert cmd[-3:] == ["-m", "r1core.launch", "/tmp/spec.json"]


def test_command_errors():
    with pytest.raises(ValueError, match="recipes/accelerate"):
        build_command("s.json", accelerate_config="nope.yaml", num_processes=2)
    with pytest.raises(ValueError, match="num_processes"):
        build_command("s.json", accelerate_config=None, num_processes=0)


def test_child_environment_carries_the_stage_run():
    env = child_env("abc123", {"PATH": "/bin", "MLFLOW_NESTED_RUN": "true", "MLFLOW_TRACKING_URI": "sqlite:///x.db"})
    assert env["MLFLOW_RUN_ID"] == "abc123" and env["MLFLOW_TRACKING_URI"] == "sqlite:///x.db"
    assert "MLFLOW_NESTED_RUN" not in env and env["PATH"] == "/bin"


@pytest.mark.slow
def test_one_process_cpu_launch_logs_into_the_stage_run(tiny_model_dir, tmp_path):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from r1core import tracking
    from r1core.config import recipe_from_dict
    from r1core.launch import launch

    recipe = recipe_from_dict({"name": "launch", "stages": {"curate": {}, "policy": {
        "type": "grpo", "rewards": {"tag_count": 1.0}, "num_generations": 2, "max_completion_length": 4,
        "max_steps": 2, "args": {"per_device_train_batch_size": 4}}}})
    data = tmp_path / "rows.jsonl"
    pd.DataFrame({"id": ["a", "b"], "problem": ["1+1?", "2+2?"], "answer": ["2", "4"]}).to_json(
        data, orient="records", lines=True)
    exp = tracking.setup("test-launch")
    with mlflow.start_run(experiment_id=exp) as run:
        summary = launch(LaunchSpec(recipe.to_json(), str(data), str(tiny_model_dir), str(tmp_path / "out"),
                                    stage="policy"),
                         run.info.run_id, accelerate_config=None, num_processes=1, cpu=True)
    assert "train_loss" in summary and (tmp_path / "out" / "model.safetensors").exists()
    steps = [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "rewards/tag_count/mean")]
    assert steps == [1, 2]
