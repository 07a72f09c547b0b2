"""Procedural reasoning tasks from ``reasoning-gym`` (PyPI ``reasoning-gym``), as the project's rows.

reasoning-gym (Stojanovski et al. 2025, arXiv:2505.24760) generates problems of 100+ tasks
(arithmetic, counting, sorting, logic, ...) at a chosen difficulty, each with its own scoring
function. Here a recipe's ``curate.reasoning_gym`` names tasks with weights and settings; the
tasks are mixed by reasoning-gym's own ``composite`` dataset, and each entry becomes a row:

``id`` (``rg/<task>/<seed>/<index>``), ``problem`` (the question), ``answer`` (the oracle answer),
``source`` (``reasoning_gym/<task>``), ``subject`` (the task), ``solution`` (``""``), ``level``
(``0``), ``answer_type`` (``reasoning_gym``: :mod:`r1core.verify` scores it with the task's own
``score_answer``) and ``metadata`` (the whole entry as JSON, which that scorer reads).

Training and held-out problems are generated from different seeds, then checked disjoint: a
training problem whose normalised text equals a held-out one is removed (easy settings have few
distinct problems, so two seeds overlap) and counted, as are duplicates within the training set.
"""

from __future__ import annotations

import json

import pandas as pd

from r1core.data import DataError


def task_names() -> list[str]:
    """The names of the tasks reasoning-gym registers."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def check_tasks(cfg) -> None:
    """Raise :class:`r1core.data.DataError` now (before any expensive work) if a task is unknown
    or its settings are rejected by the task's own config class (``cfg``: a
    :class:`r1core.config.ReasoningGymConfig`)."""
    try:
        import reasoning_gym
    except ImportError:
        raise DataError("curate.reasoning_gym needs the package reasoning-gym: pip install reasoning-gym "
                        "(make venv installs it).") from None
    known = task_names()
    for task in cfg.tasks:
        if task.name not in known:
            raise DataError(f"curate.reasoning_gym: unknown task {task.name!r}; reasoning-gym has "
                            f"{len(known)} tasks, e.g. {', '.join(known[:12])}, ...")
        try:
            reasoning_gym.create_dataset(task.name, size=1, seed=0, **task.config)
        except Exception as err:  # the task's config validation: TypeError, AssertionError, ValueError
            raise DataError(f"curate.reasoning_gym: settings {task.config} of task {task.name!r} are rejected by "
                            f"reasoning-gym: {type(err).__name__}: {err}") from None


def generate_rows(cfg, size: int, seed: int) -> pd.DataFrame:
    """``size`` problems of ``cfg``'s task mix from reasoning-gym's composite dataset at ``seed``."""
    import reasoning_gym
    from reasoning_gym.composite import DatasetSpec

    specs = [DatasetSpec(name=t.name, weight=t.weight, config=dict(t.config)) for t in cfg.tasks]
    dataset = reasoning_gym.create_dataset("composite", size=size, seed=seed, datasets=specs)
    rows = []
    for index in range(size):
        entry = dataset[index]
        task = entry["metadata"]["source_dataset"]
        rows.append({"id": f"rg/{task}/{seed}/{index}", "problem": str(entry["question"]).strip(),
                     "answer": str(entry["answer"]), "source": f"reasoning_gym/{task}", "solution": "",
                     "subject": task, "level": 0, "answer_type": "reasoning_gym",
                     "metadata": json.dumps(entry, default=str)})
    return pd.DataFrame(rows)


def train_and_heldout(cfg) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The training pool (``cfg.size`` problems at ``cfg.seed``, deduplicated, held-out problems
    removed) and the held-out set (the first ``cfg.heldout_size`` distinct problems at
    ``cfg.heldout_seed``; fewer when the settings allow fewer distinct problems).

    Returns:
        ``(train, heldout, counts)``; counts: ``generated``, ``duplicates_removed``,
        ``heldout_overlap_removed``, ``heldout_problems``.

    Raises:
        DataError: the two seeds are equal, or nothing is left to train on.
    """
    from r1core.curation import normalise

    if cfg.seed == cfg.heldout_seed:
        raise DataError("curate.reasoning_gym: seed and heldout_seed must differ (held-out problems come from "
                        "their own seed).")
    key = lambda df: df["problem"].map(lambda p: " ".join(normalise(p)))  # noqa: E731
    heldout = generate_rows(cfg, 4 * cfg.heldout_size, cfg.heldout_seed)  # the first heldout_size distinct ones
    heldout = heldout[~key(heldout).duplicated()].head(cfg.heldout_size).reset_index(drop=True)
    train = generate_rows(cfg, cfg.size, cfg.seed)
    n = len(train)
    train = train[~key(train).duplicated()]
    deduplicated = len(train)
    train = train[~key(train).isin(set(key(heldout)))].reset_index(drop=True)
    if train.empty:
        raise DataError("curate.reasoning_gym: every training problem is also a held-out problem; raise the "
                        "tasks' difficulty (more distinct problems) or lower heldout_size.")
    assert not set(key(train)) & set(key(heldout))  # disjoint by construction; checked
    return train, heldout, {"generated": n, "duplicates_removed": n - deduplicated,
                            "heldout_overlap_removed": deduplicated - len(train), "heldout_problems": len(heldout)}
