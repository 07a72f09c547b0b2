"""Multi-process training: a GRPO or SFT stage as ``accelerate launch`` subprocesses.

The stage keeps its MLflow run open and starts ``accelerate launch ... -m r1core.launch SPEC``
(:func:`r1core.child_process.run_child`) with ``MLFLOW_RUN_ID`` (and the tracking URI) in the
environment. Rank 0 reopens that run, so every rank's metrics land in the stage's run once
(TRL's MLflow callback logs on the main process only) and so do its figures
(``learning_curve.png``...); the launch's output becomes the run's ``launch/output.log``. The
trained model is saved to the spec's output folder, which the stage then logs as a LoggedModel.

How it is launched (:func:`build_command`): with an accelerate config from
``recipes/accelerate/`` (DDP, FSDP, DeepSpeed ZeRO-2/3) or none; on a machine without CUDA,
several processes are DDP on torch's ``gloo`` backend and one process is ``--cpu``; the recipe's
precision (``args.bf16``/``args.fp16``) is passed as ``--mixed_precision``, so a config's
``mixed_precision`` never overrides it. What cannot be honoured (more processes than GPUs,
DeepSpeed or FSDP without CUDA) raises before anything starts.

    python -m r1core.launch SPEC.json     # what each launched process runs
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class LaunchSpec:
    """What a launched GRPO or SFT run needs (written as JSON next to its outputs).

    Attributes:
        recipe_json: the recipe (``Recipe.to_json()``).
        dataset_uri: the curated problems (GRPO) or the traces (SFT): ``runs:/...`` or a path.
        model_ref: the model to start from (any model reference).
        output_dir: where the model is saved (the launch's spec, result and log in ``launch/`` under it).
        stage: the stage's name in ``recipe.stages`` (a ``grpo`` or ``sft`` stage).
    """

    recipe_json: str
    dataset_uri: str
    model_ref: str
    output_dir: str
    stage: str = "grpo"


def mixed_precision(args: dict) -> str:
    """``accelerate launch --mixed_precision`` for a stage's TRL ``args``: ``bf16``, ``fp16`` or ``no``."""
    return "bf16" if args.get("bf16") else "fp16" if args.get("fp16") else "no"


def _distributed_type(accelerate_config: str) -> str:
    import yaml

    return str((yaml.safe_load(Path(accelerate_config).read_text()) or {}).get("distributed_type", "NO")).upper()


def build_command(spec_path: str, *, accelerate_config: str | None, num_processes: int, precision: str = "no",
                  cuda_devices: int | None = None) -> list[str]:
    """The ``accelerate launch`` command line for one training run.

    Args:
        spec_path: the :class:`LaunchSpec` file each process reads.
        accelerate_config: an accelerate config file (``recipes/accelerate/*.yaml``) or ``None``.
        num_processes: processes to start (one per GPU; on a CPU machine, DDP ranks on ``gloo``).
        precision: ``--mixed_precision`` (:func:`mixed_precision` of the stage's args).
        cuda_devices: GPUs on this machine (default: ``torch.cuda.device_count()``).

    Raises:
        ValueError: ``num_processes < 1``, a config file that does not exist, more processes than
            GPUs, or a DeepSpeed/FSDP config on a machine without CUDA (each names the fix).
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}.")
    if accelerate_config and not Path(accelerate_config).is_file():
        raise ValueError(f"accelerate config {accelerate_config} not found; use one of recipes/accelerate/*.yaml.")
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count()
    if cuda_devices and num_processes > cuda_devices:
        raise ValueError(f"num_processes={num_processes}, but this machine has {cuda_devices} GPU(s): set "
                         f"num_processes <= {cuda_devices}, or launch across machines (see the README's scale-out).")
    kind = _distributed_type(accelerate_config) if accelerate_config else "NO"
    if not cuda_devices and kind in ("DEEPSPEED", "FSDP"):
        raise ValueError(f"{accelerate_config} is {kind}, which needs CUDA GPUs; this machine has none. On the CPU "
                         "drop accelerate_config (num_processes > 1 then runs DDP on gloo).")
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    cmd = [accelerate, "launch"]
    if accelerate_config:
        cmd += ["--config_file", str(accelerate_config)]
    elif num_processes > 1:
        cmd += ["--multi_gpu"]  # DDP: NCCL on GPUs, gloo without (accelerate picks the backend)
    elif not cuda_devices:
        cmd += ["--cpu"]
    cmd += ["--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", precision,
            "--dynamo_backend", "no", "-m", "r1core.launch", spec_path]
    return cmd


def check_launch(cfg, where: str, *, devices: bool) -> None:
    """Raise ``ValueError`` now if a training stage's launch cannot be honoured: its accelerate
    config is missing or unknown; with ``devices`` (the stage runs on this machine) also what
    :func:`build_command` rejects here (more processes than GPUs, DeepSpeed/FSDP without CUDA).
    ``where`` prefixes the message (``stages.<name>``)."""
    if not (cfg.accelerate_config or cfg.num_processes > 1):
        return
    try:
        if cfg.accelerate_config and Path(cfg.accelerate_config).is_file():
            kind = _distributed_type(cfg.accelerate_config)
            if kind not in ("NO", "MULTI_GPU", "FSDP", "DEEPSPEED"):
                raise ValueError(f"accelerate config {cfg.accelerate_config}: distributed_type {kind} is not one this "
                                 "project launches (MULTI_GPU, FSDP, DEEPSPEED).")
        if devices:
            build_command("spec.json", accelerate_config=cfg.accelerate_config, num_processes=cfg.num_processes,
                          precision=mixed_precision(cfg.args))
        elif cfg.accelerate_config and not Path(cfg.accelerate_config).is_file():
            raise ValueError(f"accelerate config {cfg.accelerate_config} not found; use one of recipes/accelerate/*.yaml.")
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


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
           precision: str = "no") -> dict[str, float]:
    """Run a GRPO or SFT stage as ``accelerate launch`` subprocesses; return the summary rank 0
    wrote. The launch's output is logged to run ``run_id`` as ``launch/output.log`` (also when it fails).

    Raises:
        ValueError: a launch that cannot be honoured here (:func:`build_command`).
        RuntimeError: the launched run failed (the message carries the end of its output).
    """
    from mlflow.tracking import MlflowClient

    from r1core.child_process import LOG_FILE, SPEC_FILE, run_child

    folder = Path(spec.output_dir) / "launch"
    cmd = build_command(str(folder / SPEC_FILE), accelerate_config=accelerate_config, num_processes=num_processes,
                        precision=precision)[:-1]
    try:
        return run_child(cmd, asdict(spec), folder, env=child_env(run_id), what="accelerate launch")
    finally:
        if (folder / LOG_FILE).exists():
            MlflowClient().log_artifact(run_id, str(folder / LOG_FILE), "launch")


def launch_stage(recipe, name: str, dataset_uri: str, model_ref: str, output_dir, run_id: str) -> dict[str, float]:
    """:func:`launch` for stage ``name`` of ``recipe`` (a GRPO or SFT stage) with the stage's own
    ``accelerate_config``, ``num_processes`` and precision; the model is saved to ``output_dir``."""
    cfg = recipe.stages[name]
    return launch(LaunchSpec(recipe.to_json(), dataset_uri, model_ref, str(output_dir), name), run_id,
                  accelerate_config=cfg.accelerate_config, num_processes=cfg.num_processes,
                  precision=mixed_precision(cfg.args))


def main(argv: list[str] | None = None) -> None:
    """Entry point of each launched process: train the spec's stage (GRPO or SFT). Rank 0 trains
    inside the stage's MLflow run (``MLFLOW_RUN_ID``) and writes the result."""
    import contextlib

    import mlflow

    from r1core import models, tracking
    from r1core.child_process import read_spec, write_result
    from r1core.config import Recipe

    spec_path = (argv or sys.argv[1:])[0]
    spec = LaunchSpec(**read_spec(spec_path))
    print(f"r1.launch: rank {os.environ.get('RANK', '0')} of {os.environ.get('WORLD_SIZE', '1')}", flush=True)
    recipe = Recipe.model_validate_json(spec.recipe_json)
    cfg = recipe.stages[spec.stage]
    main_process = int(os.environ.get("RANK", "0")) == 0
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)  # reopened here, so TRL's callback logs into it as it is
    rows = tracking.read_dataset(spec.dataset_uri)
    model, tok = models.load_model_and_tokenizer(spec.model_ref)
    with mlflow.start_run(run_id=run_id) if main_process and run_id else contextlib.nullcontext():
        if cfg.type == "sft":
            from r1core.sft import train_sft

            summary = train_sft(model, tok, rows, cfg, spec.output_dir, seed=recipe.seed)
        else:
            from r1core.grpo import train_grpo
            from r1core.training_eval import eval_sets

            sets = eval_sets(cfg, spec.dataset_uri) if main_process else []
            summary = train_grpo(model, tok, rows, cfg, spec.output_dir, seed=recipe.seed, eval_sets=sets)
    if main_process:
        write_result(spec_path, summary)


if __name__ == "__main__":
    main()
