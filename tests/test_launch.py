"""The accelerate launcher: command, environment, and (slow) a real one-process launch on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from r1core.launch import LaunchSpec, build_command, child_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["ddp", "fsdp", "zero2", "zero3"])
def test_command_uses_the_shipped_config(config):
    path = str(ROOT / "recipes" / "accelerate" / f"{config}.yaml")
    cmd = build_command("/tmp/spec.json", accelerate_config=path, num_processes=8, cuda_devices=8)
    assert cmd[0] == str(Path(sys.executable).with_name("accelerate")) and cmd[1] == "launch"
    assert cmd[cmd.index("--config_file") + 1] == path
    assert cmd[cmd.index("--num_processes") + 1] == "8"
    assert cmd[cmd.index("--mixed_precision") + 1] == "no", "the recipe's precision, not the config's bf16"
    assert "--cpu" not in cmd and "--multi_gpu" not in cmd, "the config says how"
    assert cmd[-3:] == ["-m", "r1core.launch", "/tmp/spec.json"]


def test_command_on_a_machine_without_gpus():
    two = build_command("s.json", accelerate_config=None, num_processes=2, cuda_devices=0)
    assert "--multi_gpu" in two and "--cpu" not in two, "2 DDP ranks (gloo), not one --cpu process"
    one = build_command("s.json", accelerate_config=None, num_processes=1, cuda_devices=0)
    assert "--cpu" in one and "--multi_gpu" not in one
    ddp = build_command("s.json", accelerate_config=str(ROOT / "recipes/accelerate/ddp.yaml"), num_processes=2,
                        cuda_devices=0)
    assert ddp[ddp.index("--num_processes") + 1] == "2"


def test_command_takes_the_recipes_precision():
    from r1core.launch import mixed_precision

    assert mixed_precision({"bf16": True}) == "bf16" and mixed_precision({"fp16": True}) == "fp16"
    assert mixed_precision({}) == "no" and mixed_precision({"bf16": False}) == "no"
    cmd = build_command("s.json", accelerate_config=None, num_processes=2, precision="bf16", cuda_devices=2)
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16"


def test_command_errors():
    with pytest.raises(ValueError, match="recipes/accelerate"):
        build_command("s.json", accelerate_config="nope.yaml", num_processes=2)
    with pytest.raises(ValueError, match="num_processes"):
        build_command("s.json", accelerate_config=None, num_processes=0)
    with pytest.raises(ValueError, match="has 1 GPU"):
        build_command("s.json", accelerate_config=None, num_processes=8, cuda_devices=1)
    for config in ("zero3", "fsdp"):
        with pytest.raises(ValueError, match="needs CUDA"):
            build_command("s.json", accelerate_config=str(ROOT / f"recipes/accelerate/{config}.yaml"),
                          num_processes=2, cuda_devices=0)


def test_validation_checks_launches_where_the_stage_runs():
    """``r1 pipeline`` (here=True) rejects a ZeRO-3 stage on a CPU machine before anything runs; a stage
    placed on another work pool is checked there, and ``r1 recipe`` checks only what no device changes."""
    from r1core import stages
    from r1core.config import recipe_from_dict

    def recipe(**sft):
        return recipe_from_dict({"name": "launchcheck", "model": "smollm2-135m-instruct", "stages": {
            "curate": {"dataset": "gsm8k:train"}, "sft": {"data": "curate.output", **sft}}})

    zero3 = {"accelerate_config": str(ROOT / "recipes/accelerate/zero3.yaml"), "num_processes": 8}
    with pytest.raises(ValueError, match="stages.sft: .*needs CUDA"):
        stages.validate(recipe(**zero3), here=True)
    stages.validate(recipe(**zero3))  # r1 recipe: the GPU twin is valid
    stages.validate(recipe(**zero3, work_pool="gpu"), here=True)  # checked on the gpu pool's machine
    with pytest.raises(ValueError, match="stages.sft: accelerate config nope.yaml not found"):
        stages.validate(recipe(accelerate_config="nope.yaml"))


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
                         run.info.run_id, accelerate_config=None, num_processes=1)
    assert "train_loss" in summary and (tmp_path / "out" / "model.safetensors").exists()
    steps = [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "rewards/tag_count/mean")]
    assert steps == [1, 2]
