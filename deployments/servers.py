"""``r1 ui`` and ``r1 serve``: the real Prefect and MLflow servers on this machine.

``r1 ui`` (:func:`ui`) starts ``prefect server start`` and ``mlflow server`` (the project's SQLite store, or
PostgreSQL; artifacts served by the tracking server) on 127.0.0.1, waits until both answer, prints their URLs and the two variables
that point flows at them, and stops both (and their children) on Ctrl-C or SIGTERM. ``r1 serve`` (:func:`deployments.serve.main`) serves the deployments
against that Prefect server, so Run in the Prefect UI executes here. Neither imports Prefect.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from r1core.settings import artifact_root, state_dir


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries the end of its log."""


@dataclass
class Servers:
    """The two server processes and their addresses."""

    prefect: subprocess.Popen
    mlflow: subprocess.Popen
    prefect_url: str
    mlflow_url: str

    @property
    def env(self) -> dict[str, str]:
        """The variables that send flows and tracking to these servers."""
        return {"PREFECT_API_URL": f"{self.prefect_url}/api", "MLFLOW_TRACKING_URI": self.mlflow_url}

    def stop(self, timeout: float = 30.0) -> None:
        """Stop both servers and everything they started (each runs in a process group of its own:
        mlflow's and Prefect's worker processes included): SIGINT to each group, SIGKILL to what is
        left after ``timeout`` seconds."""
        for proc in (self.prefect, self.mlflow):
            _signal_group(proc, signal.SIGINT)
        deadline = time.time() + timeout
        for proc in (self.prefect, self.mlflow):
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)  # the group's other members may outlive its leader
            proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group ``proc`` leads (it was started with ``start_new_session``)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:  # the group is gone
        pass


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200.

    Raises:
        ServerStartError: the process exited, or ``timeout`` seconds passed (with the log's end).
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise ServerStartError(f"{proc.args[0]} exited with {proc.returncode}; end of {log}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise ServerStartError(f"{url} did not answer within {timeout:.0f} s; see {log}")


def start(prefect_port: int = 4200, mlflow_port: int = 5000, timeout: float = 180, *,
          backend_store_uri: str | None = None, artifacts_destination: str | None = None,
          prefect_database_url: str | None = None, host: str = "127.0.0.1") -> Servers:
    """Start both servers on ``host`` and wait until they answer (logs under ``<state>/servers``).

    MLflow serves the artifacts itself (``--artifacts-destination``): new experiments get
    ``mlflow-artifacts:/`` locations, so a client on another machine uploads and downloads through
    the tracking server and needs no access to its disk.

    Args:
        backend_store_uri: MLflow's store (default: the project's ``sqlite:///<state>/mlflow.db``), e.g.
            ``postgresql://user@host:5432/mlflow`` (needs ``pip install '.[postgres]'``).
        artifacts_destination: where the server keeps artifacts (default: ``<state>/mlartifacts``, the
            folder the embedded default writes to), e.g. ``s3://bucket/mlflow``.
        prefect_database_url: Prefect's database (default: SQLite under ``PREFECT_HOME``), e.g.
            ``postgresql+asyncpg://user@host:5432/prefect``: what a team's server needs, since SQLite
            reports "database is locked" under several workers and pipelines at once.
        host: the address both servers listen on (``0.0.0.0`` for other machines).

    Raises:
        ServerStartError: a server did not come up (the message carries its log's end).
        ValueError: a PostgreSQL store without the ``psycopg`` driver installed.
    """
    backend_store_uri = backend_store_uri or f"sqlite:///{state_dir() / 'mlflow.db'}"
    check_store_driver(backend_store_uri)
    logs = state_dir() / "servers"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(state_dir() / "prefect")),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api"}
    if prefect_database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = prefect_database_url
    p_log, m_log = logs / "prefect.log", logs / "mlflow.log"
    prefect = subprocess.Popen([_bin("prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
                               stdout=p_log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    mlflow = subprocess.Popen([_bin("mlflow"), "server", "--host", host, "--port", str(mlflow_port),
                               "--backend-store-uri", backend_store_uri, "--serve-artifacts",
                               "--artifacts-destination", artifacts_destination or artifact_root()],
                              stdout=m_log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    servers = Servers(prefect, mlflow, f"http://{local}:{prefect_port}", f"http://{local}:{mlflow_port}")
    try:
        wait_for(f"{servers.prefect_url}/api/health", prefect, p_log, timeout)
        wait_for(f"{servers.mlflow_url}/health", mlflow, m_log, timeout)
    except BaseException:  # did not come up, or interrupted while waiting: stop what was started
        servers.stop()
        raise
    return servers


def check_store_driver(backend_store_uri: str) -> None:
    """Raise ``ValueError`` now, not as a server that exits at start-up, when a PostgreSQL store's
    driver is missing (SQLAlchemy's ``postgresql://`` needs ``psycopg``)."""
    import importlib.util

    if backend_store_uri.startswith("postgresql") and not any(
            importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        raise ValueError(f"MLflow store {backend_store_uri.split('@')[-1]} is PostgreSQL, but no PostgreSQL driver is "
                         "installed: pip install '.[postgres]' (psycopg 3).")


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel to SIGTERM it when its parent dies (Linux
    ``PR_SET_PDEATHSIG``), so a ``kill -9`` of ``r1 pipeline`` cannot leave its server behind."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's own cleanup still stops it
        pass


@contextlib.contextmanager
def temporary_prefect_server(timeout: float = 180) -> Iterator[str]:
    """A Prefect API server for one ``r1 pipeline`` / ``r1 eval`` when no ``PREFECT_API_URL`` is
    set: what Prefect's own temporary server is (the same app, UI off, SQLite under
    ``PREFECT_HOME``), but started by this process in a process group of its own and tied to it
    (it is SIGTERMed by the kernel if this process is killed, even with ``kill -9``), and stopped
    after the flow has reported its final state. Sets ``PREFECT_API_URL`` while it runs; yields it.

    Raises:
        ServerStartError: it did not answer within ``timeout`` seconds.
    """
    import importlib.util

    prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent  # this module never imports Prefect
    port = _free_port()
    logs = state_dir() / "servers"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"prefect-temporary-{port}.log"
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level",
           "error", "--lifespan", "on"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=_die_with_parent)
    url = f"http://127.0.0.1:{port}/api"
    saved = os.environ.get("PREFECT_API_URL")
    try:
        wait_for(f"{url}/health", proc, log, timeout)
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        _drain_prefect_services()
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _drain_prefect_services(timeout: float = 10.0) -> None:
    """Send the log lines and events Prefect still has queued for the temporary server now, while
    it runs: at interpreter exit its log worker would retry a stopped server for over a minute
    ("--- Error logging to API ---", measured 73 s after a failed run's last line)."""
    if "prefect" not in sys.modules:  # nothing was sent through Prefect in this process
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=timeout, at_exit=False)
        except Exception:  # a log line lost at shutdown is not worth failing the command for
            pass


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_interrupt() -> None:
    """Make SIGTERM what Ctrl-C is in this process: ``KeyboardInterrupt`` in the main thread, so
    ``finally`` blocks run (flow runs are marked, servers stopped) instead of the process vanishing."""
    signal.signal(signal.SIGTERM, _interrupt)


def ui(prefect_port: int, mlflow_port: int, *, backend_store_uri: str | None = None,
       artifacts_destination: str | None = None, prefect_database_url: str | None = None,
       host: str = "127.0.0.1") -> int:
    """``r1 ui``: start both servers (:func:`start`), print where they are, wait for Ctrl-C or
    SIGTERM (either stops both servers and their children within seconds)."""
    sigterm_as_interrupt()
    servers = start(prefect_port, mlflow_port, backend_store_uri=backend_store_uri,
                    artifacts_destination=artifacts_destination, prefect_database_url=prefect_database_url, host=host)
    try:  # from here on, an interrupt at any point (even while printing) stops both servers
        print(f"Prefect UI: {servers.prefect_url}\nMLflow UI:  {servers.mlflow_url}\n\n"
              "Send flows and tracking there (in another shell):\n"
              + "".join(f"  export {k}={v}\n" for k, v in servers.env.items())
              + "  r1 serve     # serve the deployments: Run them from the Prefect UI\n\nCtrl-C (or SIGTERM) stops both servers.",
              flush=True)
        while servers.prefect.poll() is None and servers.mlflow.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        servers.stop()
    return 0
