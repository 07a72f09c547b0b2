"""Scale-out with real components (marker ``scaleout``): a private PostgreSQL cluster on
127.0.0.1, ``mlflow server`` on it serving the artifacts, a Prefect server on it with two process work
pools (``cpu``, ``gpu``) and a worker for each (each with a state folder of its own, as on two
machines), the deployments registered by ``r1 deploy``, and a pipeline whose SFT stage is placed
on ``gpu`` while the rest runs on ``cpu``; its lineage is read back from the MLflow server."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_servers import _free_port

pytestmark = pytest.mark.scaleout
ROOT = Path(__file__).resolve().parents[1]


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} is missing: `make postgres-deps` installs Debian's postgresql.")
    return found


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster on a free port of 127.0.0.1 with databases ``mlflow`` and ``prefect``
    (yields ``user@host:port``); stopped
    (by its data folder, i.e. only this cluster) at the end. As root, the server runs as user
    ``postgres`` (initdb refuses root)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="r1-pg-"))  # not under pytest's root-only tmp: postgres must reach it
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", _free_port()

    def run(*cmd):
        out = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{' '.join(cmd)}: {out.stdout}{out.stderr}"

    run(_pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "r1", "--no-instructions")
    ctl = [_pg_bin("pg_ctl"), "-D", str(data)]
    run(*ctl, "-l", str(folder / "pg.log"), "-w", "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
        "start")
    try:
        for db in ("mlflow", "prefect"):
            run(_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "r1", db)
        yield f"r1@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, *ctl, "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process group this module started: SIGTERM, then SIGKILL after 20 s."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres, data_dir):
    """``r1 ui``'s servers on PostgreSQL, ``r1 deploy`` for pools cpu (everything) and gpu (stages
    only), and one process worker per pool, each with its own state folder."""
    from deployments import servers

    top = tmp_path_factory.mktemp("scaleout")
    saved = {k: os.environ.get(k) for k in ("R1_STATE_DIR", "PREFECT_HOME", "MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    os.environ.update(R1_STATE_DIR=str(top / "server"), PREFECT_HOME=str(top / "server" / "prefect"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("PREFECT_API_URL", None)
    live = servers.start(_free_port(), _free_port(), backend_store_uri=f"postgresql://{postgres}/mlflow",
                         artifacts_destination=str(top / "served-artifacts"),
                         prefect_database_url=f"postgresql+asyncpg://{postgres}/prefect")
    workers = []
    try:
        base = {**os.environ, **live.env, "R1_DATA_DIR": str(data_dir)}
        for args in (["--pool", "cpu"], ["--pool", "gpu", "--stages-only"]):
            out = subprocess.run([sys.executable, "-m", "deployments.cli", "deploy", *args], cwd=ROOT, env=base,
                                 capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
        for pool in ("cpu", "gpu"):  # two "machines": nothing shared on disk but the data and the tiny model
            state = top / f"machine-{pool}"
            env = {**base, "R1_STATE_DIR": str(state), "PREFECT_HOME": str(state / "prefect")}
            log = top / f"worker-{pool}.log"
            workers.append((pool, _start([str(Path(sys.executable).with_name("prefect")), "worker", "start",
                                          "--pool", pool, "--type", "process"], env, log), log))
        yield live, base, top, workers
    finally:
        for _, proc, _ in workers:
            _stop(proc)
        live.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _logs(top: Path) -> str:
    return "".join(f"\n--- {p.name}:\n{p.read_text()[-4000:]}" for p in sorted(top.glob("worker-*.log")))


def _recipe(tiny_model_dir: Path, path: Path, name: str, seed: int, sft_pool: str | None) -> Path:
    """curate -> sft (cold start; placed on ``sft_pool`` when given) -> evaluate (with the pipeline)."""
    sft = {"data": "curate.output", "student": "base", "max_steps": 1, "per_device_train_batch_size": 2,
           "max_length": 256, **({"work_pool": sft_pool} if sft_pool else {})}
    recipe = {
        "name": name, "model": str(tiny_model_dir), "seed": seed,
        "stages": {
            "curate": {"dataset": "gsm8k:train", "num_problems": 4, "max_problem_chars": 300},
            "sft": sft,
            "evaluate": {"model": "sft.output", "benchmarks": ["math500"], "limit": 2, "num_samples": 1,
                         "max_new_tokens": 8},
        },
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def _lineage(client, experiment: str) -> dict:
    """The one pipeline run of ``experiment`` and its stage runs by stage, checked complete."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} is missing"
    runs = client.search_runs([exp.experiment_id])
    parent_ids = {r.data.tags["mlflow.parentRunId"] for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parent_ids) == 1, f"{experiment}: one pipeline run, every stage under it"
    parent = client.get_run(parent_ids.pop())
    assert parent.info.status == "FINISHED"
    children = client.search_runs([exp.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_stage = {c.data.tags["r1.stage"]: c for c in children}
    assert sorted(by_stage) == ["curate", "evaluate", "sft"] and len(children) == 3, sorted(by_stage)
    assert all(c.info.status == "FINISHED" for c in by_stage.values())
    sft_model = client.search_logged_models([exp.experiment_id],
                                            filter_string=f"source_run_id = '{by_stage['sft'].info.run_id}'")
    assert len(sft_model) == 1
    assert by_stage["evaluate"].data.tags["r1.evaluated_model"] == f"models:/{sft_model[0].model_id}"
    assert "math500/pass_at_1" in by_stage["evaluate"].data.metrics
    return {"parent": parent, "stages": by_stage, "sft_model": sft_model[0]}


def test_three_pipelines_at_once_one_with_a_stage_on_another_pool_all_with_full_lineage(cluster, tiny_model_dir):
    """Three pipelines started together on one Prefect server and one MLflow server on PostgreSQL
    (the state of a team): the first places its SFT stage on pool gpu; each finishes with its
    whole lineage, none is lost, and no store reports "database is locked"."""
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    live, env, top, _ = cluster
    recipes = [_recipe(tiny_model_dir, top / "scaleout.yaml", "scaleout", 3, "gpu"),
               *(_recipe(tiny_model_dir, top / f"team-{i}.yaml", f"team-{i}", 10 + i, None) for i in (1, 2))]
    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            names = {f"{client.read_flow(d.flow_id).name}/{d.name}": d.work_pool_name
                     for d in client.read_deployments()}
            assert names["r1-pipeline/r1-pipeline"] == "cpu" and names["r1-stage/gpu"] == "gpu", names
            assert "r1-pipeline/r1-pipeline" in names and "r1-stage/cpu" in names and len(names) == 9, names
            nightly = client.read_deployment_by_name("nightly-eval/nightly-eval")
            assert nightly.work_pool_name == "cpu" and nightly.schedules, "the nightly cron is registered too"
            pull = client.read_deployment_by_name("r1-pipeline/r1-pipeline").pull_steps
            assert pull == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]

            dep = client.read_deployment_by_name("r1-pipeline/r1-pipeline")
            runs = [client.create_flow_run_from_deployment(dep.id, parameters={"recipe": str(r)}) for r in recipes]
            deadline, states = time.time() + 1200, {}
            while time.time() < deadline and len(states) < len(runs):
                for run in runs:
                    state = client.read_flow_run(run.id).state
                    if state.is_final():
                        states[run.id] = state
                time.sleep(3)
            for run in runs:
                state = states.get(run.id)
                assert state is not None and state.is_completed(), f"{run.name}: {state}{_logs(top)}"
                assert client.read_flow_run(run.id).work_pool_name == "cpu"
            placed = [r for r in client.read_flow_runs() if r.name == "sft@gpu"]
            assert len(placed) == 1 and placed[0].state.is_completed(), placed
            assert placed[0].work_pool_name == "gpu" and placed[0].deployment_id is not None

    client = MlflowClient(tracking_uri=live.mlflow_url)
    placed_lineage = _lineage(client, "r1-scaleout")
    for i in (1, 2):
        _lineage(client, f"r1-team-{i}")
    # artifacts went through the tracking server, from the gpu worker's machine to the served store
    model = placed_lineage["sft_model"]
    assert model.artifact_location.startswith("mlflow-artifacts:"), model.artifact_location
    served = list((top / "served-artifacts").rglob("*.safetensors"))
    assert any(model.model_id in str(p) for p in served), "the SFT model was uploaded through the server"
    logs = _logs(top) + "".join(p.read_text() for p in (top / "server" / "servers").glob("*.log"))
    assert "database is locked" not in logs


@pytest.mark.parametrize("stage", ["grpo", "sft"])
def test_two_process_training_on_cpu_logs_once_into_the_stage_run(stage, tiny_model_dir, data_dir):
    """``num_processes: 2`` on a machine without GPUs: two DDP ranks on gloo (not one process), each
    step's metrics once in the stage's run, its figures and the launch's log kept there."""
    from mlflow.tracking import MlflowClient

    from r1core import stages
    from r1core.config import recipe_from_dict

    training = {"grpo": {"data": "curate.output", "rewards": {"tag_count": 1.0}, "num_generations": 2,
                         "max_completion_length": 6, "max_steps": 2, "args": {"per_device_train_batch_size": 2}},
                "sft": {"data": "curate.output", "max_steps": 2, "per_device_train_batch_size": 1, "max_length": 256}}
    recipe = recipe_from_dict({"name": f"ddp-{stage}", "model": str(tiny_model_dir), "stages": {
        "curate": {"dataset": "gsm8k:train", "num_problems": 4, "max_problem_chars": 300},
        stage: {**training[stage], "num_processes": 2}}})
    stages.validate(recipe, here=True)
    parent = stages.start_pipeline(recipe)
    curated = stages.run_stage(recipe, "curate", parent)
    model_input = {"grpo": "model", "sft": "student"}[stage]
    out = stages.run_stage(recipe, stage, parent, data=curated["dataset_uri"], **{model_input: str(tiny_model_dir)})
    assert out["model_uri"].startswith("models:/")

    client = MlflowClient()
    run_id = out["run_id"]
    log_dir = client.download_artifacts(run_id, "launch")
    log = Path(log_dir, "output.log").read_text()
    assert "r1.launch: rank 0 of 2" in log and "r1.launch: rank 1 of 2" in log, log[-2000:]
    metric = {"grpo": "rewards/tag_count/mean", "sft": "loss"}[stage]
    steps = [m.step for m in client.get_metric_history(run_id, metric)]
    assert steps == [1, 2], f"each step once (rank 0 logs), got {steps}"
    if stage == "grpo":
        assert "learning_curve.png" in {a.path for a in client.list_artifacts(run_id)}
    exp = client.get_run(run_id).info.experiment_id
    assert len(client.search_runs([exp])) == 3, "parent, curate and the stage: no run of a rank of its own"
