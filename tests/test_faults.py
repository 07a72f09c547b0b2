"""Faults at the process level: ``r1 pipeline`` killed with SIGTERM or SIGKILL leaves nothing
running and its lineage true. Marker ``faults``. Each test signals only the process it started
(its own session); the servers it looks for are that process's own descendants."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[1]


def _long_pipeline(tmp_path, model_dir) -> Path:
    recipe = {"name": "faults", "model": str(model_dir), "stages": {
        "curate": {"dataset": "gsm8k:train", "num_problems": 8},
        "grpo": {"rewards": {"tag_count": 1.0}, "num_generations": 2, "max_completion_length": 8, "max_steps": 500,
                 "args": {"per_device_train_batch_size": 4}}}}
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _start(tmp_path, recipe: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(R1_STATE_DIR=str(tmp_path / "state"), PREFECT_HOME=str(tmp_path / "state" / "prefect"),
               PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "deployments.cli", "pipeline", "--recipe", str(recipe)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 300) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never came; output:\n" + "".join(lines[-40:]))


def _temporary_server(proc: subprocess.Popen):
    import psutil

    return [p for p in psutil.Process(proc.pid).children(recursive=True)
            if "prefect.server.api.server:create_app" in " ".join(p.cmdline())]


@pytest.fixture
def pipeline(tmp_path, tiny_model_dir, data_dir):
    proc = _start(tmp_path, _long_pipeline(tmp_path, tiny_model_dir))
    started: list = []
    yield proc, started
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
    for p in started:  # its own server, should an assertion have failed
        if p.is_running():
            p.kill()


def test_sigterm_stops_the_pipeline_its_server_and_marks_the_run(pipeline, tmp_path):
    import psutil
    from mlflow.tracking import MlflowClient

    proc, started = pipeline
    lines = _wait_for(proc, "MLflow parent run")
    started += _temporary_server(proc)
    time.sleep(20)  # into the stages
    assert len(started) == 1
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and time.time() - t0 < 120, out[-3000:]
    gone, alive = psutil.wait_procs(started, timeout=20)
    assert alive == []
    parent = next(line.split("MLflow parent run ")[1].split()[0] for line in lines if "MLflow parent run " in line)
    client = MlflowClient(f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}")
    assert client.get_run(parent).info.status == "FAILED"


def test_kill_9_leaves_no_temporary_prefect_server(pipeline):
    import psutil

    proc, started = pipeline
    _wait_for(proc, "MLflow parent run")
    started += _temporary_server(proc)
    assert len(started) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(started, timeout=20)  # the kernel SIGTERMs it when its parent dies
    assert alive == [], "the temporary Prefect server outlived r1 pipeline"


NEXT_RUN = """
from deployments import servers
from tasks.stages import crash_orphaned_flow_runs
from prefect.client.orchestration import get_client
with servers.temporary_prefect_server():
    print("marked", crash_orphaned_flow_runs())
    with get_client(sync_client=True) as client:
        print("states", sorted(r.state.type.value for r in client.read_flow_runs()))
"""


def test_the_next_run_marks_the_flow_run_a_kill_9_left_running_crashed(pipeline, tmp_path):
    proc, _ = pipeline
    _wait_for(proc, "MLflow parent run")
    os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
    proc.wait(timeout=30)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(R1_STATE_DIR=str(tmp_path / "state"), PREFECT_HOME=str(tmp_path / "state" / "prefect"))
    out = subprocess.run([sys.executable, "-c", NEXT_RUN], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    marked = out.stdout.split("marked ", 1)[1].splitlines()[0]
    assert marked.count("'") >= 2, f"the killed pipeline's flow runs were not marked: {out.stdout}"
    states = out.stdout.split("states ", 1)[1]
    assert "RUNNING" not in states and "CRASHED" in states, out.stdout
