"""Student SFT (distillation) on kept traces with TRL's ``SFTTrainer``.

The traces are TRL's conversational prompt-completion rows (``prompt``: system/user messages,
``completion``: the assistant message), so the loss is on the completion tokens only, and the
chat template's end-of-turn token (``<|im_end|>`` for SmolLM2) is part of the completion: the
student learns to stop. DeepSeek-R1 section 2.4 distils its small models this way (SFT only,
no RL).

**Mixtures** (R1 section 2.3.3: ~600k reasoning traces plus ~200k non-reasoning samples, writing,
factual QA, self-cognition, translation, so the model stays a general assistant): an SFT stage's
``mixture`` lists sources with weights. The weights are normalised to proportions ``p_i``; the
mixture has ``N`` rows in all (``mixture_size``, or by default the largest ``N`` for which
``p_i * N <= n_i`` for every source: the scarcest source relative to its weight is used whole and
no row repeats), split by largest-remainder rounding of ``p_i * N`` (:func:`mixture_counts`).
Each source's rows are drawn without replacement from a permutation seeded by the recipe's seed
and the source's position; a source asked for more rows than it has is repeated whole (each
repetition reshuffled) before the remainder is drawn (:func:`draw_mixture`). The drawn rows are
shuffled together with the same seed, so the mixture is a function of the sources, the weights,
the size and the seed.

A non-reasoning source is a JSON-lines file in TRL's conversational prompt-completion format, the
traces' own format (:func:`read_conversational`)::

    {"prompt": [{"role": "user", "content": "Translate 'good morning' into French."}],
     "completion": [{"role": "assistant", "content": "Bonjour."}]}
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from r1core.config import trl_config
from r1core.stage_utils import cpu_step_callbacks

logger = logging.getLogger(__name__)


class NoTracesError(ValueError):
    """SFT was asked to train on an empty set of traces."""


def sft_args(cfg, output_dir: str, seed: int, use_cpu: bool) -> SFTConfig:
    """The ``SFTConfig`` for a recipe's ``sft`` section (``cfg.args`` override the defaults here).

    Raises:
        ValueError: an ``args`` key that ``SFTConfig`` does not have.
    """
    defaults: dict[str, Any] = dict(
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=cfg.packing,
    )
    return trl_config(SFTConfig, "sft", defaults, cfg.args, output_dir=output_dir, seed=seed, use_cpu=use_cpu)


def build_trainer(model, tokenizer, traces: pd.DataFrame, cfg, output_dir: str, seed: int = 42) -> SFTTrainer:
    """TRL's ``SFTTrainer`` over ``traces`` (conversational prompt-completion rows): the chat
    template renders each row, and the loss (``labels``, -100 elsewhere) covers the assistant turn
    only, its end-of-turn token included."""
    import torch

    args = sft_args(cfg, output_dir, seed, use_cpu=not torch.cuda.is_available())
    dataset = Dataset.from_dict({"prompt": list(traces["prompt"]), "completion": list(traces["completion"])})
    tokenizer.padding_side = "right"
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=cpu_step_callbacks(args))


def train_sft(model, tokenizer, traces: pd.DataFrame, cfg, output_dir: str, seed: int = 42) -> dict[str, float]:
    """Fine-tune ``model`` on ``traces`` (rows with ``prompt`` and ``completion`` messages); save to ``output_dir``.

    Logs per-step ``loss``, ``mean_token_accuracy``... into the active MLflow run (TRL's MLflow callback).

    Raises:
        NoTracesError: ``traces`` is empty (say how to get traces).
    """
    if len(traces) == 0:
        raise NoTracesError(
            "Rejection sampling kept no traces, so there is nothing to distil. Raise "
            "rejection_sampling.num_samples or num_problems, lower its difficulty, or use a stronger teacher."
        )
    trainer = build_trainer(model, tokenizer, traces, cfg, output_dir, seed)
    result = trainer.train()
    trainer.save_model(output_dir)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(output_dir)
    Path(output_dir, "r1_done").write_text("ok")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"train_runtime": float(result.metrics.get("train_runtime", math.nan)),
            "train_loss": float(result.training_loss),
            "loss_first": float(losses[0]) if losses else math.nan,
            "loss_last": float(losses[-1]) if losses else math.nan,
            "num_traces": float(len(traces))}


_ROLES = ("system", "user", "assistant")
CONVERSATIONAL_EXAMPLE = ('{"prompt": [{"role": "user", "content": "..."}], '
                          '"completion": [{"role": "assistant", "content": "..."}]}')


def _message_problem(messages: Any, field: str, roles: tuple[str, ...]) -> str | None:
    """What is wrong with one row's ``field`` (a list of chat messages with roles in ``roles``), or None."""
    if not isinstance(messages, list) or not messages:
        return f"{field} must be a non-empty list of messages"
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in roles:
            return f"{field} has a message whose role is not one of {', '.join(roles)}"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return f"{field} has a message with no text content"
    return None


def read_conversational(path: Path, where: str | None = None) -> pd.DataFrame:
    """A JSON-lines file of conversational prompt-completion rows (TRL's format, as traces are):
    ``prompt`` a list of ``system``/``user``/``assistant`` messages, ``completion`` a list of
    ``assistant`` messages, ``id`` optional (default ``<file stem>/<line index>``).

    Returns:
        rows with ``id``, ``prompt``, ``completion`` (other keys are dropped).

    Raises:
        r1core.data.DataError: the file is missing, or a line is not such a row (named by
            ``where``, e.g. ``stages.sft.mixture.1.data``, and by file and line).
    """
    from r1core.data import DataError, _first_bad_line

    prefix = f"{where}: " if where else ""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{prefix}{path} does not exist; give a JSON-lines file with one conversational row per "
                        f"line: {CONVERSATIONAL_EXAMPLE}")
    bad = _first_bad_line(path)
    if bad:
        raise DataError(prefix + bad)
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            raw = json.loads(line)
            problem = (_message_problem(raw.get("prompt"), "prompt", _ROLES)
                       or _message_problem(raw.get("completion"), "completion", ("assistant",)))
            if problem:
                raise DataError(f"{prefix}{path}:{number}: {problem}; each line is one row like {CONVERSATIONAL_EXAMPLE}")
            rows.append({"id": str(raw.get("id") or f"{path.stem}/{len(rows)}"), "prompt": raw["prompt"],
                         "completion": raw["completion"]})
    if not rows:
        raise DataError(f"{prefix}{path} holds no rows")
    return pd.DataFrame(rows, columns=["id", "prompt", "completion"])


def mixture_counts(available: list[int], weights: list[float], size: int | None = None) -> list[int]:
    """Rows to draw from each source of a mixture (module docstring): ``N`` split by the weights'
    proportions with largest-remainder rounding (ties: the earlier source), exact (fractions).

    Args:
        available: rows each source has (all > 0).
        weights: each source's weight (> 0; normalised here).
        size: ``N``, rows in all; ``None``: ``floor(min_i n_i / p_i)``, the largest ``N`` no source repeats for.

    >>> mixture_counts([16, 10], [0.75, 0.25])        # N = min(16/0.75, 10/0.25) = 21
    [16, 5]
    >>> mixture_counts([16, 10], [3, 1], size=40)     # the first source repeats
    [30, 10]

    Raises:
        ValueError: a source with no rows, a weight that is not positive, or lengths that differ.
    """
    if len(available) != len(weights) or not weights:
        raise ValueError(f"one weight per source: {len(available)} sources, {len(weights)} weights")
    if min(weights) <= 0:
        raise ValueError(f"weights must be positive, got {weights}")
    if min(available) <= 0:
        raise ValueError(f"every source needs rows; rows available: {available}")
    fractions = [Fraction(w) for w in weights]
    shares = [f / sum(fractions) for f in fractions]
    total = size if size is not None else math.floor(min(Fraction(n) / p for n, p in zip(available, shares)))
    exact = [p * total for p in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass
class MixtureSource:
    """One source of a mixture, read: its label, where it came from, its weight, its rows (traces)."""

    label: str
    uri: str
    weight: float
    rows: pd.DataFrame


def draw_mixture(sources: list[MixtureSource], size: int | None, seed: int) -> tuple[pd.DataFrame, list[dict]]:
    """Draw a mixture of ``sources`` (module docstring), deterministic in ``seed``.

    Returns:
        ``(rows, composition)``: rows with ``id``, ``mixture_source`` (the label), ``prompt`` and
        ``completion``, shuffled together; one composition entry per source with ``source``,
        ``data``, ``weight``, ``share`` (normalised weight), ``available``, ``rows`` (drawn) and
        ``epochs`` (rows / available: above 1 where the source repeats).

    Raises:
        ValueError: as :func:`mixture_counts`.
    """
    counts = mixture_counts([len(s.rows) for s in sources], [s.weight for s in sources], size)
    total_weight = sum(s.weight for s in sources)
    parts, composition = [], []
    for i, (source, count) in enumerate(zip(sources, counts)):
        rng = np.random.default_rng([seed, i])
        n = len(source.rows)
        order = np.concatenate([rng.permutation(n) for _ in range(count // n)] + [rng.permutation(n)[: count % n]])
        part = source.rows.iloc[order.astype(int)]
        parts.append(pd.DataFrame({"id": [str(v) for v in part["id"]] if "id" in part else [""] * count,
                                   "mixture_source": source.label, "prompt": list(part["prompt"]),
                                   "completion": list(part["completion"])}))
        composition.append({"source": source.label, "data": source.uri, "weight": source.weight,
                            "share": source.weight / total_weight, "available": n, "rows": count,
                            "epochs": count / n})
    mixed = pd.concat(parts, ignore_index=True)
    shuffle = np.random.default_rng([seed, len(sources)]).permutation(len(mixed))
    return mixed.iloc[shuffle].reset_index(drop=True), composition
