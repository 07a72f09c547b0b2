"""The ``sft`` stage: TRL's SFTTrainer on a trace set (distillation), on a curated set's worked
solutions (R1's cold start), or on a weighted mixture of such sources and non-reasoning data
(R1 section 2.3.3, :mod:`r1core.sft`); the fine-tuned model becomes a LoggedModel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from r1core import models, tracking
from r1core.config import Recipe
from r1core.stage_utils import finite, work_dir
from r1core.stages.common import TAG_MODEL_ROLE, stage_run

#: The name the drawn mixture is logged under (a dataset input, context ``training``, with its digest).
MIXTURE_DATASET = "sft_mixture"


def sft(recipe: Recipe, name: str, parent_run_id: str, student: str, data: str | None = None,
        **mixture: str) -> dict[str, Any]:
    """Fine-tune ``student`` (a model URI or reference) with TRL's SFTTrainer on data set ``data``
    (a URI): SFT traces from rejection sampling (distillation), or curated problems whose worked
    solutions become traces (R1's cold start, :func:`r1core.rejection.reference_traces`; only
    those that verify). With the stage's ``mixture``, on rows drawn by weight from its sources
    instead (``mixture`` maps ``mixture.<i>.data`` to the URI of each source that is a stage
    output; the others are files): each source is logged as a dataset input, the mixture as
    dataset ``sft_mixture`` (its digest is tag ``r1.mixture.digest``), its composition as
    ``mixture/composition.json``, params ``mixture/<source>/share`` and metrics
    ``mixture/<source>/rows``. The result becomes a LoggedModel.

    Raises:
        ValueError: a data set (or mixture source) with no rows, or with neither traces nor problems.
    """
    cfg = recipe.stages[name]
    student_uri = student
    with stage_run(recipe, name, parent_run_id) as run:
        if cfg.mixture:
            sources = [_read_source(name, i, src, mixture) for i, src in enumerate(cfg.mixture)]
            model_obj, tok = models.load_model_and_tokenizer(student_uri)
            traces, traces_uri, counts = _log_mixture(recipe, cfg, sources, tok)
        else:
            traces, traces_uri = _single_source(name, data, cfg, student_uri)
            model_obj, tok = models.load_model_and_tokenizer(student_uri)
            traces, traces_uri = _as_traces(traces, traces_uri, cfg, tok, "sft_traces", log_generated=True)
            counts = {}
        mlflow.set_tags({"r1.input_model": student_uri, "r1.traces": traces_uri})
        out_dir = work_dir("sft", run.info.run_id)
        if cfg.accelerate_config or cfg.num_processes > 1:  # accelerate launch subprocesses
            from r1core.launch import LaunchSpec, launch, mixed_precision

            summary = launch(LaunchSpec(recipe.to_json(), traces_uri, student_uri, str(out_dir), name), run.info.run_id,
                             accelerate_config=cfg.accelerate_config, num_processes=cfg.num_processes,
                             precision=mixed_precision(cfg.args))
            model_obj, tok = models.load_model_and_tokenizer(str(out_dir))
        else:
            from r1core.sft import train_sft

            summary = train_sft(model_obj, tok, traces, cfg, str(out_dir), seed=recipe.seed)
        mlflow.log_metrics({f"summary/{k}": v for k, v in finite(summary).items()})
        info = tracking.log_model(model_obj, tok, name="student" if name == "sft" else name.replace("_", "-"),
                                  params={"num_traces": len(traces), "max_steps": cfg.max_steps},
                                  tags={TAG_MODEL_ROLE: "student", "r1.parent_model": student_uri,
                                        "r1.traces": traces_uri})
        shutil.rmtree(out_dir, ignore_errors=True)
        return {"run_id": run.info.run_id, "model_uri": f"models:/{info.model_id}", "model_id": info.model_id,
                "input_model": student_uri, "traces": traces_uri, **counts,
                **{k: float(v) for k, v in finite(summary).items()}}


def _single_source(name: str, uri: str, cfg, student_uri: str) -> tuple[pd.DataFrame, str]:
    traces = tracking.read_dataset(uri)
    if traces.empty:
        raise ValueError(f"stages.{name}: {uri} holds no traces (the teacher kept none). Sample more "
                         "(rejection_sampling.num_samples, num_problems), use a stronger teacher, or set "
                         "rejection_sampling.fallback: reference where the problems have worked solutions.")
    return traces, uri


def _as_traces(rows: pd.DataFrame, uri: str, cfg, tok, dataset_name: str, *, log_generated: bool,
               tags: dict[str, str] | None = None, prefix: str = "") -> tuple[pd.DataFrame, str]:
    """``rows`` as traces (logged as a dataset input, context ``training``): as they are when they
    have ``completion`` messages, else curated problems whose worked solutions become traces (R1's
    cold start; ``log_generated`` also logs those as dataset ``cold_start_traces`` and returns its URI)."""
    if "completion" in rows:
        tracking.log_input(tracking.pandas_dataset(rows, uri, dataset_name), "training", tags)
        return rows, uri
    from r1core.rejection import reference_traces

    tracking.log_input(tracking.pandas_dataset(rows, uri, "curated" if log_generated else dataset_name, "answer"),
                       "training", tags)
    traces, stats = reference_traces(rows, cfg.prompt_template, tok)
    mlflow.log_metrics({f"{prefix}cold_start/{k}": v for k, v in stats.items()})
    if log_generated:
        uri, _ = tracking.log_dataset(traces, "cold_start_traces", "generated", targets="answer")
    return traces, uri


def _read_source(name: str, i: int, source, resolved: dict[str, str]) -> tuple[Any, str, pd.DataFrame]:
    """``(settings, uri, rows)`` of mixture source ``i``: a stage's output read by its URI, or a file.

    Raises:
        ValueError: the source holds no rows, or neither traces nor problems with worked solutions.
    """
    from r1core.sft import read_conversational

    where = f"stages.{name}.mixture.{i}.data"
    if source.data.endswith(".jsonl"):
        uri = str(Path(source.data).expanduser().resolve())
        rows = read_conversational(Path(source.data), where)
    else:
        uri = resolved[f"mixture.{i}.data"]
        rows = tracking.read_dataset(uri)
    if rows.empty:
        raise ValueError(f"{where}: {source.data} ({uri}) holds no rows; give it rows (a rejection_sampling stage that "
                         "kept traces) or drop it from the mixture.")
    if "completion" not in rows and not {"problem", "solution", "answer"} <= set(rows):
        raise ValueError(f"{where}: {source.data} ({uri}) has neither prompt/completion traces nor problems with "
                         f"worked solutions (its columns: {', '.join(map(str, rows.columns))}).")
    return source, uri, rows


def _log_mixture(recipe: Recipe, cfg, sources: list, tok) -> tuple[pd.DataFrame, str, dict[str, float]]:
    """Convert each source to traces, draw the mixture, log sources, mixture and composition;
    return ``(traces, mixture URI, {mixture/<source>/rows: count})``."""
    from r1core.sft import MixtureSource, draw_mixture

    parts = []
    for source, uri, rows in sources:
        traces, _ = _as_traces(rows, uri, cfg, tok, source.label, log_generated=False,
                               tags={"r1.mixture.weight": f"{source.weight:g}"}, prefix=f"mixture/{source.label}/")
        if traces.empty:
            raise ValueError(f"mixture source {source.label} ({uri}): none of its worked solutions verified, so it "
                             "gives no traces; drop it or give it traces.")
        parts.append(MixtureSource(source.label, uri, source.weight, traces))
    mixed, composition = draw_mixture(parts, cfg.mixture_size, recipe.seed)
    summary = ",".join(f"{c['source']}:{c['share']:.4g}" for c in composition)
    uri, dataset = tracking.log_dataset(mixed, MIXTURE_DATASET, "training", tags={"r1.mixture": summary})
    mlflow.set_tags({"r1.mixture": summary, "r1.mixture.digest": dataset.digest})
    mlflow.log_params({"mixture_size": cfg.mixture_size if cfg.mixture_size is not None else "auto",
                       **{f"mixture/{c['source']}/share": f"{c['share']:.6g}" for c in composition},
                       **{f"mixture/{c['source']}/data": c["data"] for c in composition}})
    counts = {f"mixture/{c['source']}/rows": float(c["rows"]) for c in composition}
    mlflow.log_metrics({**counts, "mixture/rows": float(len(mixed)),
                        **{f"mixture/{c['source']}/available": float(c["available"]) for c in composition},
                        **{f"mixture/{c['source']}/epochs": float(c["epochs"]) for c in composition}})
    mlflow.log_text(json.dumps({"digest": dataset.digest, "seed": recipe.seed, "size": len(mixed),
                                "sources": composition}, indent=2), "mixture/composition.json")
    return mixed, uri, counts
