"""The ``compare`` stage: the distillation report (DeepSeek-R1 Table 5). Student, teacher and base
are each evaluated by the evaluate stage itself (:func:`r1core.stages.evaluate.evaluate`, one
nested run per model: ``<stage>-student``, ``<stage>-teacher``, ``<stage>-base``) with one
protocol, so the problems, k, sampling and prompt are the same for the three, metrics attach to
each model's LoggedModel, and samples an evaluate stage already drew with that protocol are
reused; the report (:mod:`r1core.distill_report`) is logged on the stage's run.

Contamination verdicts are tags ``r1.contamination.<bench>`` (``true``, ``false``, or ``unknown``
when the student's traces are unknown) with ``r1.contamination`` (any benchmark flagged) on the
stage's run, on the student's LoggedModel and, when the stage names the ``registration`` of the
student (a register stage upstream, so the report runs after it), on that registered version.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from r1core import data, tracking
from r1core.config import Recipe, evaluation_recipe, recipe_from_dict
from r1core.models import logged_model_id
from r1core.stage_utils import finite
from r1core.stages.common import stage_run

logger = logging.getLogger(__name__)

TAG_CONTAMINATION = "r1.contamination"


def compare(recipe: Recipe, name: str, parent_run_id: str, student: str, teacher: str, base: str,
            traces: str | None = None, registration: dict | None = None) -> dict[str, Any]:
    """Evaluate ``student``, ``teacher`` and ``base`` (model URIs or references) with stage
    ``name``'s protocol and log the distillation report: table ``report/distillation.json`` (one
    row per model), ``report/distillation.md``, figure ``report/distillation.png``, metrics
    ``<role>/<bench>/pass@1`` (and ``_stderr``, ``mean_completion_tokens``),
    ``<bench>/gain_recovered``, ``contamination/<bench>/...``, and the contamination tags (module
    docstring). ``traces`` (a data set URI) are the SFT traces checked; ``None``: the student
    LoggedModel's ``r1.traces``. ``registration`` is a register stage's output (``name``, ``version``).

    Returns:
        ``run_id``, the three references, ``traces`` (``""``: unknown), ``metrics`` (the compare
        run's), ``contaminated`` (flagged benchmarks) and ``table`` (the rows, as records).
    """
    from r1core import distill_report as report
    from r1core.stages.evaluate import evaluate

    cfg = recipe.stages[name]
    refs = {"student": student, "teacher": teacher, "base": base}
    with stage_run(recipe, name, parent_run_id) as run:
        mlflow.set_tags({f"r1.{role}": ref for role, ref in refs.items()})
        protocol_recipe, protocol_stage = evaluation_recipe(recipe, student, stage=cfg.protocol, settings=cfg.overrides)
        section = protocol_recipe.stages[protocol_stage].model_dump(mode="json")
        params = {f"protocol.{k}": (",".join(v) if isinstance(v, list) else v) for k, v in section.items()
                  if k not in ("type", "model", "work_pool")}
        mlflow.log_params({**params, "protocol.stage": protocol_stage, "ngram": cfg.ngram})
        results = {}
        for role, ref in refs.items():
            stage = f"{name}-{role}"
            one = recipe_from_dict({**protocol_recipe.model_dump(mode="json"), "stages": {stage: {**section, "model": ref}}},
                                   source=f"{recipe.name} ({stage})")
            results[role] = evaluate(one, stage, run.info.run_id, model=ref)["metrics"]
        benchmarks = report.benchmarks_of(results["student"])
        table = report.report_table(results, refs, benchmarks)
        metrics = {f"{role}/{k}": v for role, m in results.items() for k, v in m.items()
                   if k.count("/") == 1 and k.split("/")[1] in ("pass@1", "pass@1_stderr", "mean_completion_tokens")}
        metrics.update({f"{b}/gain_recovered": float(table.loc[0, f"{b}/gain_recovered"]) for b in benchmarks})

        traces_uri = traces or _student_traces(student)
        overlaps = _overlaps(traces_uri, section["benchmarks"], cfg.ngram) if traces_uri else None
        verdicts = ({o.benchmark: str(o.flagged).lower() for o in overlaps.values()} if overlaps is not None
                    else {b: "unknown" for b in benchmarks})
        for o in (overlaps or {}).values():
            metrics.update(o.metrics())
        tags = {f"{TAG_CONTAMINATION}.{b}": v for b, v in verdicts.items()}
        tags[TAG_CONTAMINATION] = ("unknown" if overlaps is None else
                                   str(any(o.flagged for o in overlaps.values())).lower())
        tags[f"{TAG_CONTAMINATION}.ngram"] = str(cfg.ngram)

        tracking.log_metrics(finite(metrics))
        mlflow.set_tags({**tags, "r1.traces": traces_uri or ""})
        tracking.log_table(table, "report/distillation.json")
        protocol_text = (f"{protocol_stage} settings: k={section['num_samples']} samples, T={section['temperature']}, "
                         f"top-p {section['top_p']}, {section['max_new_tokens']} new tokens, template "
                         f"{section['prompt_template']}, limit {section['limit']}")
        mlflow.log_text(report.markdown(table, benchmarks, overlaps, protocol_text, traces_uri),
                        "report/distillation.md")
        fig = report.figure(table, benchmarks)
        mlflow.log_figure(fig, "report/distillation.png")
        import matplotlib.pyplot as plt

        plt.close(fig)
        if overlaps:
            tracking.log_table(pd.DataFrame([{"benchmark": o.benchmark, "problem_id": pid, "trace": t, "words": w}
                                             for o in overlaps.values() for pid, t, w in o.examples],
                                            columns=["benchmark", "problem_id", "trace", "words"]),
                               "report/contamination_examples.json")
        _tag_student(student, registration, tags)
        return {"run_id": run.info.run_id, **refs, "traces": traces_uri or "", "metrics": metrics,
                "contaminated": sorted(b for b, v in verdicts.items() if v == "true"),
                "table": table.to_dict(orient="records")}


def _student_traces(student: str) -> str | None:
    """The traces the student was trained on (its LoggedModel's ``r1.traces``), or None."""
    model_id = logged_model_id(student)
    if model_id is None:
        return None
    return (mlflow.get_logged_model(model_id).tags or {}).get("r1.traces") or None


def _overlaps(traces_uri: str, benchmarks: list[str], n: int) -> dict:
    """:func:`r1core.distill_report.ngram_overlap` of the traces with every problem of each benchmark
    (each logged as a dataset input, context ``evaluation``; the traces, context ``training``)."""
    from r1core.distill_report import ngram_overlap, trace_texts

    rows = tracking.read_dataset(traces_uri)
    tracking.log_input(tracking.pandas_dataset(rows, traces_uri, "sft_traces"), "training")
    texts = trace_texts(rows)
    out = {}
    for spec in benchmarks:
        bench = data.parse_spec(spec)[0]  # the evaluate stage's name for it
        problems = data.load(spec)[0].to_pandas()
        tracking.log_input(tracking.pandas_dataset(problems, data.source_uri(spec), bench, "answer"), "evaluation")
        out[bench] = ngram_overlap(texts, dict(zip(problems["id"].astype(str), problems["problem"])), n, bench)
        if out[bench].flagged:
            logger.warning("%s: %d of %d problems appear in the SFT traces %s (%d-gram overlap)", bench,
                           len(out[bench].dirty), out[bench].num_problems, traces_uri, n)
    return out


def _tag_student(student: str, registration: dict | None, tags: dict[str, str]) -> None:
    """Put the contamination tags on the student's LoggedModel and on its registered version."""
    model_id = logged_model_id(student)
    if model_id is not None:
        mlflow.set_logged_model_tags(model_id, tags)
    if registration:
        client = MlflowClient()
        for key, value in tags.items():
            client.set_model_version_tag(registration["name"], registration["version"], key, value)
