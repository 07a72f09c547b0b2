"""Evaluation during GRPO and the run's self-evolution figures (DeepSeek-R1, arXiv:2501.12948,
Figures 2 and 3: AIME pass@1 and response length against RL step).

:class:`InTrainingEvaluation` is a ``TrainerCallback``: at step 0, every ``eval_steps`` optimizer
steps and at the end, it samples k completions per problem of each evaluation set with the
policy being trained and scores them with :func:`r1core.evaluation.evaluate_benchmark` (the
evaluate stage's own code: same sampler, same verifier, same metrics). Logged into the active
MLflow run against the step: ``eval/<set>/pass_at_1``, ``eval/<set>/pass_at_1_stderr``,
``eval/<set>/mean_completion_tokens`` (and pass@k, cons@k), plus a table of the samples
(``eval_completions/<set>/step_<N>.json``). Only the main process evaluates; the others wait at
their next collective.

:func:`log_figures` draws, at the end of training, ``figures/pass_at_1.png`` (pass@1 against step,
one line per set with a band of one standard error), ``figures/completion_length.png`` (TRL's
``completions/mean_length`` in tokens) and ``figures/reflection_rate.png``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import mlflow
import pandas as pd
from transformers import TrainerCallback

from r1core.generation import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """One evaluation set: ``name`` (``heldout``, ``math500``...) and its problem rows."""

    name: str
    problems: pd.DataFrame


@dataclass
class EvalPoint:
    """pass@1 of one set at one step (``mean_completion_tokens`` in tokens, ``seconds`` of wall time)."""

    step: int
    pass_at_1: float
    stderr: float
    mean_completion_tokens: float
    seconds: float
    per_problem: dict[str, float] = field(default_factory=dict)  # problem id -> pass@1 over its k samples


def eval_sets(cfg, dataset_uri: str) -> list[EvalSet]:
    """The evaluation sets of a GRPO stage's ``eval`` section: ``heldout`` (the held-out problems
    logged beside ``dataset_uri``) and catalog benchmarks, each cut to ``eval.limit`` problems and
    logged as an input of the active run (context ``evaluation``)."""
    from r1core import data, tracking

    if cfg.eval is None:
        return []
    sets = []
    for spec in cfg.eval.benchmarks:
        if spec == tracking.HELDOUT:
            uri = tracking.heldout_uri(dataset_uri)
            problems, name = tracking.read_dataset(uri), tracking.HELDOUT
        else:
            name, _ = data.parse_spec(spec)
            problems, uri = data.load(spec)[0].to_pandas(), data.source_uri(spec)
        problems = problems.head(cfg.eval.limit) if cfg.eval.limit else problems
        if mlflow.active_run() is not None:
            tracking.log_input(tracking.pandas_dataset(problems, uri, name, "answer"), "evaluation")
        sets.append(EvalSet(name, problems.reset_index(drop=True)))
    return sets


class InTrainingEvaluation(TrainerCallback):
    """Evaluate the policy at step 0, every ``eval_steps`` steps and at the end (see the module docstring).

    Args:
        sets: the evaluation sets.
        tokenizer: the policy's tokenizer.
        params: sampling settings (R1 protocol: temperature 0.6, top-p 0.95).
        k: samples per problem.
        eval_steps: evaluate every this many optimizer steps.
        template, prefill: how problems are posed (GRPO's own, by default).
        batch_size: sequences decoded together.
        stop_strings: end samples at these strings (GRPO's own, by default: the protocol the policy is trained in).
        engine: ``cpu`` (the project's engine) or ``hf`` (transformers ``generate``) on the policy in training
            (:class:`r1core.sampling.EngineSampler`).
    """

    def __init__(self, sets: list[EvalSet], tokenizer, params: SamplingParams, *, k: int, eval_steps: int,
                 template: str, prefill: str | None, batch_size: int = 64, stop_strings: list[str] | None = None,
                 engine: str = "cpu"):
        self.sets, self.tokenizer, self.params, self.k, self.engine = sets, tokenizer, params, k, engine
        self.stop_strings = list(stop_strings or [])
        self.eval_steps, self.template, self.prefill, self.batch_size = eval_steps, template, prefill, batch_size
        self.history: dict[str, list[EvalPoint]] = {s.name: [] for s in sets}

    def evaluate(self, model, step: int) -> None:
        """Score every set with ``model`` now and log the results at ``step``."""
        from r1core.evaluation import evaluate_benchmark
        from r1core.sampling import EngineSampler
        from r1core.tracking import mlflow_key

        was_training = model.training
        sampler = EngineSampler(model, self.tokenizer, "policy", engine=self.engine, template=self.template,
                                prefill=self.prefill, stop_strings=self.stop_strings, batch_size=self.batch_size)
        try:
            for s in self.sets:
                t0 = time.perf_counter()
                metrics, samples = evaluate_benchmark(sampler, s.problems, k=self.k, params=self.params)
                valid = samples[samples["correct"].notna()]
                per_problem = valid.groupby("id")["correct"].mean().astype(float).to_dict()
                point = EvalPoint(step, metrics["pass@1"], metrics["pass@1_stderr"],
                                  metrics["mean_completion_tokens"], time.perf_counter() - t0, per_problem)
                self.history[s.name].append(point)
                logger.info("eval at step %d: %s pass@1 %.3f +- %.3f (%.0f s)", step, s.name, point.pass_at_1,
                            point.stderr, point.seconds)
                if mlflow.active_run() is not None:
                    mlflow.log_metrics({mlflow_key(f"eval/{s.name}/{k}"): float(v) for k, v in metrics.items()
                                        if isinstance(v, (int, float)) and math.isfinite(v) and k.count("/") == 0}
                                       | {f"eval/{s.name}/seconds": point.seconds}, step=step)
                    columns = [c for c in ("id", "sample", "answer", "extracted", "correct", "num_tokens", "completion")
                               if c in samples]
                    table = samples[columns].assign(step=step, completion=samples["completion"].str[:2000])
                    mlflow.log_table(table, artifact_file=f"eval_completions/{s.name}/step_{step:05d}.json")
        finally:
            model.train(was_training)

    def _due(self, state) -> bool:
        done = {p.step for h in self.history.values() for p in h}
        return state.is_world_process_zero and state.global_step not in done

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 and self._due(state):
            self.evaluate(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_steps == 0 and self._due(state):
            self.evaluate(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._due(state):
            self.evaluate(model, state.global_step)

    def summary(self) -> dict[str, float]:
        """``eval/<set>/pass@1_first`` / ``_last`` (and their stderr) over the recorded points, and
        the gain ``eval/<set>/pass@1_gain`` with its paired standard error (the same problems at
        both steps: the standard error of the per-problem differences), ``..._gain_stderr``."""
        out: dict[str, float] = {}
        for name, points in self.history.items():
            if points:
                first, last = points[0], points[-1]
                common = sorted(set(first.per_problem) & set(last.per_problem))
                diffs = [last.per_problem[i] - first.per_problem[i] for i in common]
                if len(diffs) > 1:
                    mean = sum(diffs) / len(diffs)
                    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
                    out[f"eval/{name}/pass@1_gain"] = mean
                    out[f"eval/{name}/pass@1_gain_stderr"] = math.sqrt(var / len(diffs))
                out.update({f"eval/{name}/pass@1_first": first.pass_at_1, f"eval/{name}/pass@1_last": last.pass_at_1,
                            f"eval/{name}/pass@1_stderr_first": first.stderr,
                            f"eval/{name}/pass@1_stderr_last": last.stderr,
                            f"eval/{name}/step_first": float(first.step), f"eval/{name}/step_last": float(last.step)})
        return out


def log_figures(log_history: list[dict], evaluation: InTrainingEvaluation | None) -> list[str]:
    """Draw R1's self-evolution figures into the active MLflow run; returns the artifact paths.

    ``log_history`` is the trainer's ``state.log_history`` (per-step dicts with TRL's
    ``completions/mean_length`` and this project's ``signals/reflection_rate``)."""
    if mlflow.active_run() is None:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if evaluation is not None and any(evaluation.history.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in evaluation.history.items():
            steps = [p.step for p in points]
            p1 = [p.pass_at_1 for p in points]
            se = [p.stderr for p in points]
            ax.plot(steps, p1, marker="o", label=f"{name} (k={evaluation.k})")
            ax.fill_between(steps, [a - b for a, b in zip(p1, se)], [a + b for a, b in zip(p1, se)], alpha=0.2)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("pass@1 (band: 1 standard error)")
        ax.set_title("pass@1 during RL (R1 Figure 2)")
        ax.legend()
        mlflow.log_figure(fig, "figures/pass_at_1.png")
        plt.close(fig)
        paths.append("figures/pass_at_1.png")
    for key, label, title, path in (
            ("completions/mean_length", "mean completion length (tokens)", "response length during RL (R1 Figure 3)",
             "figures/completion_length.png"),
            ("signals/reflection_rate", "share of completions with reflection", "reflection during RL",
             "figures/reflection_rate.png")):
        points = [(h["step"], h[key]) for h in log_history if key in h]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([s for s, _ in points], [v for _, v in points], marker=".")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(label)
        ax.set_title(title)
        mlflow.log_figure(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths
