"""The ``sft`` stage: TRL's SFTTrainer on a trace set (distillation) or on a curated set's worked
solutions (R1's cold start); the fine-tuned model becomes a LoggedModel."""

from __future__ import annotations

import shutil
from typing import Any

import mlflow

from r1core import models, tracking
from r1core.config import Recipe
from r1core.stage_utils import finite, work_dir
from r1core.stages.common import TAG_MODEL_ROLE, stage_run


def sft(recipe: Recipe, name: str, parent_run_id: str, data: str, student: str) -> dict[str, Any]:
    """Fine-tune ``student`` (a model URI or reference) with TRL's SFTTrainer on data set ``data``
    (a URI): SFT traces from rejection sampling (distillation), or curated problems whose worked
    solutions become traces (R1's cold start, :func:`r1core.rejection.reference_traces`; only
    those that verify). The result becomes a LoggedModel."""
    from r1core.sft import train_sft

    cfg = recipe.stages[name]
    traces_uri, student_uri = data, student
    with stage_run(recipe, name, parent_run_id) as run:
        traces = tracking.read_dataset(traces_uri)
        if traces.empty:
            raise ValueError(f"stages.{name}: {traces_uri} holds no traces (the teacher kept none). Sample more "
                             "(rejection_sampling.num_samples, num_problems), use a stronger teacher, or set "
                             "rejection_sampling.fallback: reference where the problems have worked solutions.")
        model_obj, tok = models.load_model_and_tokenizer(student_uri)
        if "completion" in traces:
            tracking.log_input(tracking.pandas_dataset(traces, traces_uri, "sft_traces"), "training")
        else:  # problems with worked solutions: the cold-start traces
            from r1core.rejection import reference_traces

            tracking.log_input(tracking.pandas_dataset(traces, traces_uri, "curated", "answer"), "training")
            traces, stats = reference_traces(traces, cfg.prompt_template, tok)
            mlflow.log_metrics({f"cold_start/{k}": v for k, v in stats.items()})
            traces_uri, _ = tracking.log_dataset(traces, "cold_start_traces", "generated", targets="answer")
        mlflow.set_tags({"r1.input_model": student_uri, "r1.traces": traces_uri})
        out_dir = work_dir("sft", run.info.run_id)
        if cfg.accelerate_config or cfg.num_processes > 1:  # accelerate launch subprocesses
            from r1core.launch import launch_stage

            summary = launch_stage(recipe, name, traces_uri, student_uri, out_dir, run.info.run_id)
            model_obj, tok = models.load_model_and_tokenizer(str(out_dir))
        else:
            summary = train_sft(model_obj, tok, traces, cfg, str(out_dir), seed=recipe.seed)
        mlflow.log_metrics({f"summary/{k}": v for k, v in finite(summary).items()})
        info = tracking.log_model(model_obj, tok, name="student" if name == "sft" else name.replace("_", "-"),
                                  params={"num_traces": len(traces), "max_steps": cfg.max_steps},
                                  tags={TAG_MODEL_ROLE: "student", "r1.parent_model": student_uri,
                                        "r1.traces": traces_uri})
        shutil.rmtree(out_dir, ignore_errors=True)
        return {"run_id": run.info.run_id, "model_uri": f"models:/{info.model_id}", "model_id": info.model_id,
                "input_model": student_uri, "traces": traces_uri,
                **{k: float(v) for k, v in finite(summary).items()}}
