"""The ``curate`` stage: the training set, filtered and sampled (:mod:`r1core.curation`), or
procedural problems with a held-out set (:mod:`r1core.procedural`), logged with its digest."""

from __future__ import annotations

import json
from typing import Any

import mlflow

from r1core import curation, data, tracking
from r1core.config import Recipe
from r1core.stage_utils import progress
from r1core.stages.common import HELDOUT, stage_run


def curate(recipe: Recipe, name: str, parent_run_id: str, reference_model: str | None = None) -> dict[str, Any]:
    """Load the training set, normalise, then filter (see :mod:`r1core.curation`): duplicates
    (same words after normalisation), n-gram overlap with every benchmark in
    ``curate.decontaminate``, unparsable gold answers, over-long problems, optionally a pass-rate
    band; then sample N (uniformly or stratified). Every count is a metric of the stage run; pass
    rates are a column of the dataset. ``reference_model`` is the pass-rate filter's model (a
    URI), when the stage has that filter.

    Returns:
        ``{run_id, dataset_uri, digest, num_problems}``, plus ``heldout_uri`` and
        ``heldout_problems`` for procedural tasks.
    """
    cfg = recipe.stages[name]
    with stage_run(recipe, name, parent_run_id) as run:
        heldout = None
        if cfg.reasoning_gym is not None:  # procedural tasks: training pool and held-out set from disjoint seeds
            from r1core.procedural import train_and_heldout

            df, heldout, counts = train_and_heldout(cfg.reasoning_gym)
            metrics: dict[str, float] = {f"procedural/{k}": v for k, v in counts.items()}
            metrics["duplicates_removed"] = counts["duplicates_removed"]
            mlflow.log_params({"curate.reasoning_gym": json.dumps(cfg.reasoning_gym.model_dump(mode="json"))[:6000]})
        else:
            ds, counts = data.load(cfg.dataset)
            df, removed = curation.drop_duplicates(ds.to_pandas())
            metrics = {"rows_read": counts["rows_read"], "rows_skipped_malformed": counts["rows_skipped"],
                       "duplicates_removed": removed}
        benchmarks = {spec: list(data.load(spec)[0]["problem"]) for spec in cfg.decontaminate}
        df, filtered = curation.filter_pool(df, cfg, benchmarks)
        metrics.update(filtered)
        if cfg.pass_rate is not None:
            df, band = curation.pass_rate_band(df, cfg.pass_rate, _reference_sampler(cfg, reference_model or recipe.model),
                                               recipe.seed)
            metrics.update(band)
        df = curation.select(df, cfg.num_problems, cfg.stratify_by, recipe.seed)
        metrics["num_problems"] = len(df)
        for column in ("source", "subject", "level"):
            if column in df and df[column].nunique() > 1:
                for value, c in df[column].value_counts().items():
                    metrics[f"distribution/{column}/{value}"] = int(c)
        mlflow.log_params({"curate.dataset": cfg.dataset, "curate.num_problems": cfg.num_problems,
                           "curate.decontaminate": ",".join(cfg.decontaminate), "curate.ngram": cfg.ngram})
        tracking.log_metrics(metrics)
        source = _procedural_source(cfg) if cfg.reasoning_gym is not None else data.source_uri(cfg.dataset)
        src, _ = tracking.log_dataset(df, "curated", "training", source=source, targets="answer")
        out = {"run_id": run.info.run_id, "dataset_uri": src, "digest": tracking.dataset_digest(src) or "",
               "num_problems": len(df)}
        if heldout is not None and len(heldout):
            out["heldout_uri"], _ = tracking.log_dataset(heldout, HELDOUT, "evaluation", targets="answer",
                                                         source=_procedural_source(cfg, heldout=True))
            out["heldout_problems"] = len(heldout)
        return out


def _reference_sampler(cfg, ref: str):
    """The pass-rate filter's sampler: the reference model with the R1 evaluation prompt."""
    from r1core.sampling import build_sampler

    pr = cfg.pass_rate
    sampler = build_sampler(pr.engine, ref, template="r1_eval", batch_size=pr.batch_size, vllm=pr.vllm.llm_kwargs())
    sampler.on_batch = progress("curate/pass_rate")
    return sampler


def _procedural_source(cfg, heldout: bool = False) -> str:
    """Where procedural problems come from: the generator, its tasks and seed (they are regenerated from these)."""
    rg = cfg.reasoning_gym
    tasks = ",".join(t.name for t in rg.tasks)
    return f"reasoning_gym://composite/{tasks}?seed={rg.heldout_seed if heldout else rg.seed}"
