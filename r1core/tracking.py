"""MLflow lineage: runs, datasets, LoggedModels and the registry, per the project's contract.

- One parent run per pipeline run, one nested child run per stage (``parent_run_id``), both
  tagged with the Prefect flow-run id and the recipe.
- Every dataset a stage reads or writes is logged with ``mlflow.log_input`` (context
  ``training``, ``evaluation`` or ``generated``) and stored as a JSONL artifact, so the next
  stage reads it by URI.
- Every model a stage produces is a LoggedModel (``mlflow.transformers.log_model``).
- Run ids are passed explicitly: MLflow's active run is thread-local and Prefect may run a task
  on another thread, so nothing here relies on ``mlflow.active_run()`` across a task boundary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from r1core import settings

logger = logging.getLogger(__name__)

# Tags every run carries (stable names: the MLflow compare view and search_runs rely on them).
TAG_STAGE = "r1.stage"
TAG_RECIPE = "r1.recipe"
TAG_FLOW_RUN = "prefect.flow_run_id"
TAG_FLOW_RUN_URL = "prefect.flow_run_url"
_LOG_INPUT_LOCK = threading.Lock()


def log_input(dataset, context: str, tags: dict[str, str] | None = None, attempts: int = 3) -> None:
    """``mlflow.log_input`` that is safe when stages run concurrently.

    MLflow's SQL store checks for an existing dataset, then inserts it; two runs logging the same
    dataset at once (two evaluate stages on one benchmark) make the second insert fail a UNIQUE
    constraint. Calls in this process are serialised, and a collision with another process is
    retried (the retry finds the dataset the other one inserted).
    """
    for attempt in range(attempts):
        try:
            with _LOG_INPUT_LOCK:
                mlflow.log_input(dataset, context=context, tags=tags)
            return
        except mlflow.exceptions.MlflowException as err:
            if "UNIQUE constraint" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
PIP_REQUIREMENTS = ["torch", "transformers", "accelerate", "safetensors"]


def mlflow_key(name: str) -> str:
    """A metric or tag name as MLflow stores it: ``@`` is not allowed there, so ``pass@1``
    becomes ``pass_at_1`` (``math500/pass@1`` -> ``math500/pass_at_1``); any other character
    MLflow refuses (``&`` in "Counting & Probability") becomes ``_``. The one place the
    field's names are mapped."""
    import re

    return re.sub(r"[^0-9A-Za-z_\-. :/]", "_", name.replace("@", "_at_"))


def log_metrics(metrics: dict[str, float], **kwargs) -> None:
    """``mlflow.log_metrics`` with names mapped by :func:`mlflow_key`."""
    mlflow.log_metrics({mlflow_key(k): float(v) for k, v in metrics.items()}, **kwargs)


def setup(experiment: str) -> str:
    """Point MLflow at the configured store and make sure ``experiment`` exists.

    A new experiment keeps its artifacts beside the SQLite store (``<state>/mlartifacts``) when
    tracking is the embedded default; with a tracking server the server decides. Returns the
    experiment id.
    """
    settings.configure_environment()
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    location = settings.artifact_root() + f"/{experiment}" if _is_local_store() else None
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently
        return client.get_experiment_by_name(experiment).experiment_id


def _is_local_store() -> bool:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def environment_tags() -> dict[str, str]:
    """Versions of the libraries every run records (for comparing runs across upgrades)."""
    import torch
    import transformers
    import trl

    return {
        "r1.version.torch": torch.__version__,
        "r1.version.transformers": transformers.__version__,
        "r1.version.trl": trl.__version__,
        "r1.version.mlflow": mlflow.__version__,
        "r1.python": platform.python_version(),
    }


def start_parent_run(experiment: str, run_name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    """Create the pipeline's parent run, left RUNNING until the pipeline ends it (FINISHED by
    :func:`r1core.summary.finish_pipeline`, FAILED when a stage raised); return its id. Stages
    attach to it by id."""
    exp_id = setup(experiment)
    client = MlflowClient()
    if TAG_RECIPE in tags:
        close_dangling_parents(exp_id, tags[TAG_RECIPE])
    run = client.create_run(exp_id, run_name=run_name, tags={**environment_tags(), **tags, TAG_OWNER: owner_tag()})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


TAG_OWNER = "r1.owner"  # host:pid:start-time of the process that runs the pipeline


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    or None where it is not running (or there is no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tag() -> str:
    """``host:pid:start`` naming this process (so a later run can tell whether it is still alive)."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid()) or ''}"


def owner_gone(owner: str) -> bool:
    """Whether the process an :func:`owner_tag` names ran on this host and is gone (killed, or its
    PID reused by another process). ``False`` for another host's process: it cannot be checked here."""
    import socket

    host, pid, start = owner.rsplit(":", 2) if owner.count(":") >= 2 else ("", "", "")
    if host != socket.gethostname():
        return False
    now = _process_start(int(pid)) if pid.isdigit() else None
    return now is None or bool(start and now != start)


def close_dangling_parents(experiment_id: str, recipe: str) -> list[str]:
    """Mark KILLED every RUNNING pipeline run of ``recipe`` (and its RUNNING stage runs) whose
    process was on this host and is gone (killed with ``kill -9``, or the machine restarted).
    Runs owned by live processes, or by other hosts, are left alone. Returns the runs closed."""
    import socket

    host = socket.gethostname()
    closed = []
    runs = MlflowClient().search_runs([experiment_id], filter_string=f"tags.`{TAG_RECIPE}` = '{recipe}' and "
                                      f"attributes.status = 'RUNNING' and tags.`{TAG_OWNER}` LIKE '{host}:%'")
    for run in runs:
        if owner_gone(run.data.tags[TAG_OWNER]):
            end_parent_run(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    if closed:
        logger.warning("closed %d pipeline run(s) of %s left RUNNING by a killed process: %s", len(closed), recipe,
                       ", ".join(closed))
    return closed


def end_parent_run(run_id: str, status: str) -> None:
    """Mark a pipeline's parent run (``FAILED``, ``KILLED``) and its stage runs that are still
    RUNNING (a stage killed before it could close its run) with ``status``."""
    client = MlflowClient()
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}' "
                                  "and attributes.status = 'RUNNING'")
    for child in children:
        client.set_terminated(child.info.run_id, status)
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, status)


@contextlib.contextmanager
def stage_run(parent_run_id: str, stage: str, tags: dict[str, str] | None = None,
              resume_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open a nested child run of ``parent_run_id`` for one stage, active in this thread.

    The parent's Prefect and recipe tags are copied to the child. With ``resume_run_id`` (a run
    of an earlier, interrupted attempt) that run is reopened instead. On an exception the child
    is marked FAILED and the exception propagates.
    """
    client = MlflowClient()
    if resume_run_id:
        previous = client.get_run(resume_run_id).data.tags.get("mlflow.parentRunId", "")
        with mlflow.start_run(run_id=resume_run_id, nested=True) as run:
            # the pipeline run that completes the stage becomes its parent; the killed one is named
            mlflow.set_tags({"r1.resumed": "true", "mlflow.parentRunId": parent_run_id,
                             **({"r1.resumed_from_parent": previous} if previous and previous != parent_run_id else {})})
            yield run
        return
    parent = client.get_run(parent_run_id)
    inherited = {k: v for k, v in parent.data.tags.items() if k.startswith(("r1.", "prefect."))}
    inherited.pop(TAG_STAGE, None)
    all_tags = {**inherited, **(tags or {}), TAG_STAGE: stage, "mlflow.parentRunId": parent_run_id}
    with mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=stage, nested=True,
                          parent_run_id=parent_run_id, tags=all_tags) as run:
        yield run


def log_dataset(df: pd.DataFrame, name: str, context: str, source: str | None = None,
                targets: str | None = None, tags: dict[str, str] | None = None) -> tuple[str, Any]:
    """Log ``df`` as an input of the active run and store it as ``data/<name>.jsonl``.

    Args:
        df: the rows.
        name: dataset name (shown in the MLflow UI).
        context: ``training``, ``evaluation`` or ``generated``.
        source: where it came from (a path or URI); defaults to the stored artifact's URI.
        targets: the label column, if any.
        tags: tags of this dataset input (lineage: e.g. the teacher that generated it).

    Returns:
        ``(artifact_uri, mlflow_dataset)``; the URI (``runs:/<run>/data/<name>.jsonl``) is what
        the next stage reads with :func:`read_dataset`.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_dataset needs an active MLflow run (use tracking.stage_run).")
    artifact = f"data/{name}.jsonl"
    uri = f"runs:/{run.info.run_id}/{artifact}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.jsonl"
        df.to_json(path, orient="records", lines=True, force_ascii=False)
        mlflow.log_artifact(str(path), artifact_path="data")
    dataset = pandas_dataset(df, source or uri, name, targets)
    log_input(dataset, context, tags)
    return uri, dataset


def artifact_location(uri: str) -> str:
    """``runs:/<run>/<path>`` as the storage URI MLflow's dataset sources resolve
    (``file://...`` locally, ``mlflow-artifacts:/...`` on a server); other URIs unchanged."""
    if not uri.startswith("runs:/"):
        return uri
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    return MlflowClient().get_run(run_id).info.artifact_uri.rstrip("/") + "/" + path


def pandas_dataset(df: pd.DataFrame, source: str, name: str, targets: str | None = None):
    """An ``mlflow.data`` dataset of ``df`` whose source is ``source`` (``runs:/`` URIs resolved).

    Nested columns (chat messages) are stored as JSON text so MLflow can hash the frame for
    its digest. A source MLflow has no resolver for is recorded as a tag-like name instead.
    """
    flat = df.copy()
    for col in flat.columns:
        if flat[col].map(lambda v: isinstance(v, (list, dict))).any():
            flat[col] = flat[col].map(lambda v: json.dumps(v, ensure_ascii=False, default=str))
    try:
        return mlflow.data.from_pandas(flat, source=artifact_location(source), name=name, targets=targets)
    except mlflow.exceptions.MlflowException:
        return mlflow.data.from_pandas(flat, name=name, targets=targets)


def read_dataset(uri: str) -> pd.DataFrame:
    """Read a JSONL dataset artifact written by :func:`log_dataset` (``runs:/...`` or a path)."""
    if not uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/", "file:/")):
        return pd.read_json(uri, orient="records", lines=True, dtype=False)
    with tempfile.TemporaryDirectory(prefix="r1-data-") as tmp:  # the download is read, then removed
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        return pd.read_json(path, orient="records", lines=True, dtype=False)


def log_model(model, tokenizer, name: str, params: dict[str, Any] | None = None,
              tags: dict[str, str] | None = None) -> mlflow.models.model.ModelInfo:
    """Log a model and its tokenizer as a LoggedModel of the active run (``mlflow.transformers``).

    Components are passed as objects: MLflow 3.17's checkpoint-folder mode fails on
    transformers 5 (its task metadata changed type). ``pip_requirements`` is explicit because
    MLflow would otherwise add torchvision for torch models and fail without it.
    """
    return mlflow.transformers.log_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        name=name,
        task="text-generation",
        pip_requirements=PIP_REQUIREMENTS,
        params=params,
        tags=tags,
    )


def find_logged_model(experiment_id: str, tag: str, value: str) -> str | None:
    """The id of a READY LoggedModel in ``experiment_id`` whose tag ``tag`` equals ``value``."""
    models = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list")
    for m in models:
        if (m.tags or {}).get(tag) == value and str(m.status).endswith("READY"):
            return m.model_id
    return None


def log_table(df: pd.DataFrame, artifact_file: str) -> None:
    """Log a table (shown in the MLflow UI's artifact view and evaluation tab)."""
    mlflow.log_table(data=df, artifact_file=artifact_file)




def dataset_digest(uri: str) -> str | None:
    """The digest MLflow computed for a dataset logged at ``uri`` (None if not found)."""
    run_id = uri.split("/")[1] if uri.startswith("runs:/") else None
    if run_id is None:
        return None
    run = MlflowClient().get_run(run_id)
    name = Path(uri).stem
    for d in run.inputs.dataset_inputs:
        if d.dataset.name == name:
            return d.dataset.digest
    return None


#: The name the held-out problems of a curate stage are logged under, and the benchmark name
#: ``grpo.eval.benchmarks`` and the evaluate stage use for them.
HELDOUT = "heldout"


def heldout_uri(dataset_uri: str) -> str:
    """The held-out set a curate stage logged beside the training set ``dataset_uri``.

    Raises:
        ValueError: the curate run of ``dataset_uri`` logged no held-out set.
    """
    if dataset_uri.startswith("runs:/"):
        run_id = dataset_uri.split("/")[1]
        if any(a.path == "data/heldout.jsonl" for a in MlflowClient().list_artifacts(run_id, "data")):
            return f"runs:/{run_id}/data/heldout.jsonl"
    raise ValueError(f"{dataset_uri} has no held-out set beside it (only a curate stage with procedural tasks "
                     "writes one); name catalog benchmarks in grpo.eval.benchmarks instead of 'heldout'.")


def _placed_output_path(stage: str, flow_run_id: str) -> str:
    return f"placed/{stage}/{flow_run_id}.json"


def log_placed_output(parent_run_id: str, stage: str, flow_run_id: str, output: dict[str, Any]) -> None:
    """Record what a stage run on another work pool returned (``placed/<stage>/<flow run id>.json``,
    an artifact of the pipeline's parent run), so the pipeline reads it back through MLflow, the
    one store every machine already writes to (Prefect's own results stay on the machine that ran
    the stage unless a shared result storage is configured)."""
    MlflowClient().log_dict(parent_run_id, output, _placed_output_path(stage, flow_run_id))


def read_placed_output(parent_run_id: str, stage: str, flow_run_id: str) -> dict[str, Any]:
    """What :func:`log_placed_output` recorded for that flow run.

    Raises:
        RuntimeError: nothing was recorded (the stage's flow run did not finish its stage).
    """
    uri = f"runs:/{parent_run_id}/{_placed_output_path(stage, flow_run_id)}"
    try:
        return mlflow.artifacts.load_dict(uri)
    except Exception as err:  # MlflowException, OSError: the artifact is not there
        raise RuntimeError(f"stage {stage}: its flow run {flow_run_id} completed but recorded no output at {uri} "
                           f"({type(err).__name__}: {err})") from err
