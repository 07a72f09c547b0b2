"""Where the project keeps its state, and the embedded defaults for Prefect and MLflow.

Embedded default (no server): Prefect's temporary local API with ``PREFECT_HOME`` under the
state folder, MLflow tracking on ``sqlite:///<state>/mlflow.db`` with artifacts beside it.
The standard variables (``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``) switch the same code to
real servers; this module never overrides a variable the user has set.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the project's state folder (default ``./.r1``).
STATE_DIR_ENV = "R1_STATE_DIR"


def state_dir() -> Path:
    """The project's state folder (created on first use): ``$R1_STATE_DIR`` or ``./.r1``."""
    path = Path(os.environ.get(STATE_DIR_ENV, ".r1")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(*parts: str) -> Path:
    """A folder under ``<state>/cache`` (created on first use)."""
    path = state_dir().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def tracking_uri() -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<state>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir() / 'mlflow.db'}"


def artifact_root() -> str:
    """Where experiments created by the project keep artifacts (a folder beside the SQLite store)."""
    return (state_dir() / "mlartifacts").as_uri()


def configure_environment() -> None:
    """Set the embedded defaults for any variable the user has not set.

    Sets ``PREFECT_HOME`` (under the state folder), ``PREFECT_SERVER_ANALYTICS_ENABLED=false``
    (else a harmless "database is locked" traceback), ``MLFLOW_TRACKING_URI`` and quiets
    tokenizers' fork warning. Call it before importing prefect.
    """
    os.environ.setdefault("PREFECT_HOME", str(state_dir() / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
