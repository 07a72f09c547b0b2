"""The ``rejection_sampling`` stage: a teacher (any :mod:`r1core.sampling` backend, an endpoint
included) samples k responses per problem; the verified ones that pass every filter
(:mod:`r1core.rejection`) become an SFT trace set whose lineage names the teacher and the prompts."""

from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any

import mlflow

from r1core import tracking
from r1core.config import Recipe
from r1core.stage_utils import finite, progress, sha, work_dir
from r1core.stages.common import loggable, stage_run

logger = logging.getLogger(__name__)


def rejection_sampling(recipe: Recipe, name: str, parent_run_id: str, data: str, teacher: str | None = None
                       ) -> dict[str, Any]:
    """Sample k responses per problem of data set ``data`` (a URI) from the teacher: ``teacher``
    (a model URI or reference) or the stage's ``endpoint``; keep the ones that pass every filter
    as SFT traces (a data set whose lineage names the teacher and the prompt set).

    Sampling is resumable and exact: the sample log lives in a work folder keyed by the teacher,
    the problems, the sampling settings and the seed, so a rerun after a crash or an endpoint outage
    samples only the problems not yet done, seeded as the uninterrupted run seeded them (fixed
    chunks of ``shard_size`` problems, see :func:`r1core.rejection.sample_with_resume`): on the
    project's engine the rerun keeps the same traces and counts as a run never killed. The folder
    is removed when the stage succeeds.
    """
    from r1core.rejection import rejection_sample
    from r1core.sampling import build_sampler

    cfg = recipe.stages[name]
    dataset_uri = data
    with stage_run(recipe, name, parent_run_id) as run:
        problems = tracking.read_dataset(dataset_uri).head(cfg.num_problems)
        tracking.log_input(tracking.pandas_dataset(problems, dataset_uri, "curated", "answer"), "training")
        teacher_obj = build_sampler(cfg.engine, teacher, template=cfg.prompt_template, prefill=cfg.prefill,
                                    stop_strings=cfg.stop_strings, batch_size=cfg.batch_size,
                                    vllm=cfg.vllm.llm_kwargs(), endpoint=cfg.endpoint, tokenizer_ref=recipe.model)
        teacher_obj.on_batch = progress(name)
        mlflow.set_tags({"r1.teacher": teacher_obj.id, "r1.prompts": dataset_uri})
        mlflow.log_params({f"rejection.{k}": v for k, v in loggable(cfg.model_dump()).items()})
        settings = cfg.model_dump(mode="json", include={"num_samples", "max_new_tokens", "temperature", "top_p",
                                                         "prompt_template", "prefill", "shard_size",
                                                         "stop_strings"})
        folder = work_dir("rejection", sha(json.dumps([teacher_obj.id, dataset_uri, cfg.num_problems, settings,
                                                       recipe.seed], sort_keys=True)))
        t0 = time.perf_counter()
        kept, samples, stats = rejection_sample(
            teacher_obj, problems, cfg, seed=recipe.seed, folder=folder,
            progress=lambda d, t: logger.info("%s: %d/%d problems sampled", name, d, t))
        stats["sampling_seconds"] = time.perf_counter() - t0
        mlflow.log_metrics(finite(stats))
        tracking.log_table(samples.drop(columns=["response"]).assign(response=samples["response"].str[:2000]),
                           "samples/rejection_samples.json")
        for column in ("source", "level"):
            rates = samples.groupby(column)["kept"].mean().to_dict() if len(samples) else {}
            mlflow.log_metrics({f"acceptance_rate/{column}_{k}" if column == "level" else f"acceptance_rate/{k}":
                                float(v) for k, v in rates.items()})
        uri, _ = tracking.log_dataset(kept, "sft_traces", "generated", targets="answer",
                                      tags={"r1.teacher": teacher_obj.id, "r1.prompts": dataset_uri})
        shutil.rmtree(folder, ignore_errors=True)
        return {"run_id": run.info.run_id, "dataset_uri": uri, "digest": tracking.dataset_digest(uri) or "",
                "num_kept": int(stats["num_kept"]), "acceptance_rate": float(stats["acceptance_rate"]),
                "teacher": teacher_obj.id}
