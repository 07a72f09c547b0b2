"""Against real servers: ``prefect server`` and ``mlflow server`` on free ports of 127.0.0.1 (as
``r1 ui`` starts them), the deployments served (as ``r1 serve`` does), ``evaluate`` triggered
through the API the UI's Run button uses, and its run, metrics and tags read back from the MLflow
server; then headless Chromium on the Prefect UI's deployment and flow-run pages and the MLflow
UI's run page, with screenshots. Markers ``servers`` and ``browser``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.servers
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(tmp_path_factory, data_dir):
    """Both servers (deployments.servers.start) in a fresh state folder, plus `r1 serve` against them."""
    from deployments import servers

    state = tmp_path_factory.mktemp("live-state")
    saved = {k: os.environ.get(k) for k in ("R1_STATE_DIR", "PREFECT_HOME", "MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    os.environ.update(R1_STATE_DIR=str(state), PREFECT_HOME=str(state / "prefect"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    live = servers.start(_free_port(), _free_port())
    env = {**os.environ, **live.env}
    serve_log = state / "serve.log"
    serve = subprocess.Popen([sys.executable, "-m", "deployments.cli", "serve"], cwd=ROOT, env=env,
                             stdout=serve_log.open("w"), stderr=subprocess.STDOUT)
    try:
        yield live, env, serve_log
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
        live.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def evaluated(live, tiny_model_dir):
    """Run the ``evaluate`` deployment once, the way the UI's Run button does; return ids."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    servers, env, serve_log = live
    params = {"model": str(tiny_model_dir), "benchmarks": ["aime24"], "limit": 2, "num_samples": 1,
              "max_new_tokens": 8}
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            deadline = time.time() + 180
            while time.time() < deadline:  # `r1 serve` registers the deployments
                names = {d.name for d in client.read_deployments()}
                if {"evaluate", "r1-pipeline", "nightly-eval", "promote"} <= names:
                    break
                time.sleep(1)
            else:
                pytest.fail(f"deployments never appeared; r1 serve said:\n{serve_log.read_text()[-3000:]}")
            dep = client.read_deployment_by_name("evaluate/evaluate")
            run = client.create_flow_run_from_deployment(dep.id, parameters=params)  # what Run does
            deadline = time.time() + 600
            while time.time() < deadline:
                state = client.read_flow_run(run.id).state
                if state.is_final():
                    break
                time.sleep(2)
    return {"deployment_id": str(dep.id), "flow_run_id": str(run.id), "state": state, "serve_log": serve_log}


def test_run_button_api_runs_evaluate_and_mlflow_server_holds_its_run(live, evaluated, tiny_model_dir):
    from mlflow.tracking import MlflowClient

    servers, _, _ = live
    assert evaluated["state"].is_completed(), (
        f"{evaluated['state']}; r1 serve said:\n{evaluated['serve_log'].read_text()[-3000:]}")
    client = MlflowClient(tracking_uri=servers.mlflow_url)
    exp = client.get_experiment_by_name("r1-quickstart")
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`prefect.flow_run_id` = '{evaluated['flow_run_id']}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["r1.evaluated_model"] == str(tiny_model_dir)
    assert run.data.tags["prefect.flow_run_url"].startswith(servers.prefect_url)
    assert "aime24/pass_at_1" in run.data.metrics and "aime24/pass_at_1_stderr" in run.data.metrics
    assert run.data.tags["r1.version.trl"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium driven by Playwright (no browser download: /usr/bin/chromium)."""
    from playwright.sync_api import sync_playwright

    exe = os.environ.get("R1_CHROMIUM", "/usr/bin/chromium")
    if not Path(exe).exists():
        pytest.fail(f"{exe} is missing: `make browser-deps` installs Debian's chromium (or set R1_CHROMIUM).")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"])
        yield b
        b.close()


def _screenshot(page, name: str) -> Path:
    from r1core.settings import state_dir

    out = Path(os.environ.get("R1_SCREENSHOT_DIR", state_dir() / "screenshots")) / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    return out


@pytest.mark.browser
def test_prefect_ui_shows_the_deployment_and_its_completed_run(live, evaluated, browser):
    servers, _, _ = live
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{servers.prefect_url}/deployments/deployment/{evaluated['deployment_id']}", timeout=120_000)
    try:
        page.get_by_text("flows/evaluate.py:evaluate").first.wait_for(timeout=120_000)  # the entrypoint
        page.get_by_text("Completed").first.wait_for(timeout=60_000)  # the run we triggered, listed
        page.get_by_role("button", name="Run").first.wait_for(timeout=30_000)
    finally:
        _screenshot(page, "prefect-deployment-evaluate")
    page.get_by_text("Parameters").first.click()
    page.get_by_text("max_new_tokens").first.wait_for(timeout=60_000)  # the typed parameter form's fields
    _screenshot(page, "prefect-deployment-parameters")


@pytest.mark.browser
def test_mlflow_ui_shows_the_evaluation_run_with_its_metrics(live, evaluated, browser):
    from mlflow.tracking import MlflowClient

    servers, _, _ = live
    client = MlflowClient(tracking_uri=servers.mlflow_url)
    exp = client.get_experiment_by_name("r1-quickstart")
    run = client.search_runs([exp.experiment_id],
                             filter_string=f"tags.`prefect.flow_run_id` = '{evaluated['flow_run_id']}'")[0]
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{servers.mlflow_url}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}", timeout=120_000)
    page.get_by_text("aime24/pass_at_1").first.wait_for(timeout=120_000)
    assert page.get_by_text(run.info.run_name).count() > 0
    assert _screenshot(page, "mlflow-run").stat().st_size > 10_000


def test_r1_ui_stops_both_servers_and_their_children_on_sigterm(tmp_path):
    """SIGTERM to ``r1 ui`` (what a service manager or ``kill`` sends) stops mlflow and prefect and
    every process they started, within seconds; nothing of its session is left."""
    import signal
    import time

    import psutil

    env = {**os.environ, "R1_STATE_DIR": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("MLFLOW_TRACKING_URI", None)
    prefect_port, mlflow_port = _free_port(), _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "deployments.cli", "ui", "--prefect-port", str(prefect_port),
                           "--mlflow-port", str(mlflow_port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    started: list = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and "MLflow UI" not in (line := ui.stdout.readline()):
            assert line or ui.poll() is None, "r1 ui exited before its servers answered"
        started = [p for p in psutil.Process(ui.pid).children(recursive=True)]
        assert len(started) >= 2  # the two servers, and their workers
        t0 = time.time()
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
        gone, alive = psutil.wait_procs(started, timeout=30)
        assert alive == [], [p.cmdline()[:3] for p in alive]
        assert time.time() - t0 < 60
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)  # the session this test started
        for proc in started:  # this test's own descendants, should the assertion above have failed
            if proc.is_running():
                proc.kill()
