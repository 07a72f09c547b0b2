"""Multi-process training: the GRPO stage as an ``accelerate launch`` subprocess.

The stage keeps its MLflow run open and starts ``accelerate launch ... -m r1core.launch SPEC``
(:func:`r1core.child_process.run_child`) with ``MLFLOW_RUN_ID`` (and the tracking URI) in the environment. In the children, TRL's MLflow
callback resumes that run on the main process only, so every rank's metrics land in the stage's
run once; the trained policy is saved to the spec's output folder, which the stage then logs as
a LoggedModel. Accelerate configs for DDP, ZeRO-2 and ZeRO-3 ship in ``recipes/accelerate/``.

    python -m r1core.launch SPEC.json     # what each launched process runs
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class LaunchSpec:
    """What a launched GRPO run needs (written as JSON next to its outputs).

    Attributes:
        recipe_json: the recipe (``Recipe.to_json()``).
        dataset_uri: the curated problems (``runs:/...`` or a path).
        model_ref: the policy to start from (any model reference).
        output_dir: where the policy is saved (the launch's spec, result and log in ``launch/`` under it).
        stage: the GRPO stage's name in ``recipe.stages``.
    """

    recipe_json: str
    dataset_uri: str
    model_ref: str
    output_dir: str
    stage: str = "grpo"


def build_command(spec_path: str, *, accelerate_config: str | None, num_processes: int,
                  cpu: bool = False) -> list[str]:
    """The ``accelerate launch`` command line for one GRPO run.

    Raises:
        ValueError: ``num_processes < 1`` or an ``accelerate_config`` file that does not exist.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}.")
    if accelerate_config and not Path(accelerate_config).is_file():
        raise ValueError(f"accelerate config {accelerate_config} not found; use one of recipes/accelerate/*.yaml.")
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    cmd = [accelerate, "launch"]
    if accelerate_config:
        cmd += ["--config_file", str(accelerate_config)]
    if cpu:
        cmd += ["--cpu"]
    cmd += ["--num_processes", str(num_processes), "-m", "r1core.launch", spec_path]
    return cmd


def child_env(run_id: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The launched processes' environment: the parent's, plus the stage's MLflow run and store."""
    env = dict(os.environ if base is None else base)
    env["MLFLOW_RUN_ID"] = run_id
    env.pop("MLFLOW_NESTED_RUN", None)
    if "MLFLOW_TRACKING_URI" not in env:
        from r1core.settings import tracking_uri

        env["MLFLOW_TRACKING_URI"] = tracking_uri()
    return env


def launch(spec: LaunchSpec, run_id: str, *, accelerate_config: str | None, num_processes: int,
           cpu: bool = False) -> dict[str, float]:
    """Run GRPO as ``accelerate launch`` subprocesses; return the summary rank 0 wrote.

    Raises:
        RuntimeError: the launched run failed (the message carries the end of its output).
    """
    from r1core.child_process import SPEC_FILE, run_child

    folder = Path(spec.output_dir) / "launch"
    cmd = build_command(str(folder / SPEC_FILE), accelerate_config=accelerate_config, num_processes=num_processes,
                        cpu=cpu)[:-1]
    return run_child(cmd, asdict(spec), folder, env=child_env(run_id), what="accelerate launch")


def main(argv: list[str] | None = None) -> None:
    """Entry point of each launched process: train GRPO from a spec file."""
    from r1core import models, tracking
    from r1core.config import Recipe
    from r1core.grpo import train_grpo
    from r1core.training_eval import eval_sets

    from r1core.child_process import read_spec, write_result

    spec_path = (argv or sys.argv[1:])[0]
    spec = LaunchSpec(**read_spec(spec_path))
    recipe = Recipe.model_validate_json(spec.recipe_json)
    rows = tracking.read_dataset(spec.dataset_uri)
    model, tok = models.load_model_and_tokenizer(spec.model_ref)
    cfg = recipe.stages[spec.stage]
    sets = eval_sets(cfg, spec.dataset_uri) if int(os.environ.get("RANK", "0")) == 0 else []
    summary = train_grpo(model, tok, rows, cfg, spec.output_dir, seed=recipe.seed, eval_sets=sets)
    if int(os.environ.get("RANK", "0")) == 0:
        write_result(spec_path, summary)


if __name__ == "__main__":
    main()
