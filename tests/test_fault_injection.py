"""Fault injection at every stage type (marker ``faults``): ``r1 pipeline`` is SIGKILLed at a
random point inside each stage in turn (curate, grpo, rejection sampling, sft, evaluate,
register), each time rerun with the same command, until a run completes; the result is compared
with an uninterrupted run of the same recipe in a state folder of its own.

Only the process group this test started is signalled (``r1 pipeline`` runs in a session of its
own; its temporary Prefect server dies with it, PR_SET_PDEATHSIG). The kill points are drawn from
a seeded generator and printed, so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[1]
STAGES = ["curate", "grpo", "rejection_sampling", "sft", "evaluate", "register"]
SEED = int(os.environ.get("R1_FAULT_SEED", "20261202"))


def _recipe(tmp_path: Path, model_dir: Path) -> Path:
    """Every stage type once, each a few seconds on the tiny model."""
    recipe = {"name": "faultinject", "model": str(model_dir), "seed": 5, "stages": {
        "curate": {"dataset": "gsm8k:train", "num_problems": 6, "max_problem_chars": 300},
        "grpo": {"rewards": {"tag_count": 1.0}, "num_generations": 2, "max_completion_length": 8, "max_steps": 4,
                 "save_steps": 2, "args": {"per_device_train_batch_size": 4}},
        "rejection_sampling": {"teacher": "grpo.output", "num_problems": 4, "num_samples": 2, "max_new_tokens": 8,
                               "fallback": "reference"},
        "sft": {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 256},
        "evaluate": {"model": "sft.output", "benchmarks": ["math500"], "limit": 3, "num_samples": 2,
                     "max_new_tokens": 8},
        "register": {"model": "sft.output", "model_name": "faultinject-model", "gate_metric": "math500/pass@1"},
    }}
    path = tmp_path / "faultinject.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env(state: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(R1_STATE_DIR=str(state), PREFECT_HOME=str(state / "prefect"), PYTHONPATH=str(ROOT))
    return env


def _pipeline(recipe: Path, state: Path, kill_in: str | None = None, delay: float = 0.0) -> tuple[int | None, str]:
    """Run ``r1 pipeline``; with ``kill_in``, SIGKILL its process group ``delay`` seconds after that
    stage started. Returns (exit status, or None when killed; its output)."""
    proc = subprocess.Popen([sys.executable, "-m", "deployments.cli", "pipeline", "--recipe", str(recipe)], cwd=ROOT,
                            env=_env(state), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines, killed_at = [], None
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if kill_in and killed_at is None and f"stage {kill_in} (" in line and "started" in line:
                killed_at = time.time() + delay
            if killed_at is not None and time.time() >= killed_at:
                break
        if killed_at is not None and proc.poll() is None:
            while time.time() < killed_at and proc.poll() is None:  # a line-less stretch: wait out the delay
                time.sleep(0.05)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                return None, "".join(lines)
        proc.wait(timeout=600)
        return proc.returncode, "".join(lines) + proc.stdout.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tree(state: Path) -> dict:
    """What the last pipeline of ``state`` recorded: its parent run, the stage runs it names, every
    run, LoggedModel and registered version of the experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{state / 'mlflow.db'}")
    exp = client.get_experiment_by_name("r1-faultinject")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = sorted((r for r in runs if r.data.tags.get("mlflow.runName", "").endswith("-pipeline")),
                     key=lambda r: r.info.start_time)
    final = parents[-1]
    stage_runs = {s: client.get_run(final.data.tags[f"r1.run.{s}"]) for s in STAGES if f"r1.run.{s}" in final.data.tags}
    models = client.search_logged_models([exp.experiment_id])
    versions = client.search_model_versions("name = 'faultinject-model'")
    return {"client": client, "runs": runs, "parents": parents, "final": final, "stages": stage_runs,
            "models": models, "versions": versions}


_TIMINGS = ("runtime", "per_second", "tokens_per_s", "seconds", "time", "Time taken")


def _metrics(run) -> dict[str, float]:
    """The run's metrics less wall-clock timings (which no rerun reproduces)."""
    return {k: v for k, v in run.data.metrics.items() if not any(t in k for t in _TIMINGS)}


def test_a_kill_inside_each_stage_then_a_rerun_gives_the_uninterrupted_result(tmp_path, tiny_model_dir, data_dir):
    rng = random.Random(SEED)
    recipe = _recipe(tmp_path, tiny_model_dir)
    code, out = _pipeline(recipe, tmp_path / "clean")
    assert code == 0, out[-4000:]

    faulty, kills = tmp_path / "faulty", []
    for stage in STAGES:
        delay = round(rng.uniform(0.0, 3.0), 2)
        code, out = _pipeline(recipe, faulty, kill_in=stage, delay=delay)
        kills.append((stage, delay, "killed" if code is None else f"exited {code}"))
        if code is not None:
            assert code == 0, f"{kills}\n{out[-4000:]}"
    code, out = _pipeline(recipe, faulty)  # the same command, once more: everything done or cached
    assert code == 0, f"{kills}\n{out[-4000:]}"
    print(f"fault seed {SEED}: {kills}")
    assert sum(k[2] == "killed" for k in kills) >= 4, f"too few kills landed inside a stage: {kills}"

    clean, hit = _tree(tmp_path / "clean"), _tree(faulty)
    client = hit["client"]
    assert hit["final"].info.status == "FINISHED"
    statuses = [p.info.status for p in hit["parents"]]
    assert "RUNNING" not in statuses, f"a killed pipeline's parent run was left RUNNING: {statuses} {kills}"
    # each kill closed its parent run KILLED, but one that landed after the lineage was complete
    assert statuses.count("KILLED") >= sum(k[2] == "killed" for k in kills) - 1, (statuses, kills)
    assert set(hit["stages"]) == set(clean["stages"]) and set(clean["stages"]) >= set(STAGES) - {"register"}
    for stage, run in hit["stages"].items():
        assert run.info.status == "FINISHED", stage
        want, got = _metrics(clean["stages"][stage]), _metrics(run)
        # A stage rerun after a kill that landed once it had finished also compares with what its
        # first run left: an evaluation with the previous one (vs_previous/*), register with the
        # champion it set (gate/champion). Everything else is as in the clean run.
        rerun_only = {k for k in set(got) - set(want) if k.startswith(("vs_previous/", "gate/champion"))}
        got = {k: v for k, v in got.items() if k not in rerun_only}
        assert set(got) == set(want), (stage, sorted(set(got) ^ set(want)))
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (stage, key, got[key], value, kills)
        for key in got:  # every metric step as often as in the clean run, also in a stage resumed from a checkpoint
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            clean_steps = [m.step for m in clean["client"].get_metric_history(clean["stages"][stage].info.run_id, key)]
            assert steps == clean_steps, (stage, key, steps, clean_steps)
        inputs = [(d.dataset.name, d.dataset.digest, tuple(sorted((t.key, t.value) for t in d.tags)))
                  for d in run.inputs.dataset_inputs]
        assert len(inputs) == len(set(inputs)), (stage, inputs)
    # A stage run the final pipeline does not name is an attempt whose pipeline was killed (after
    # the stage finished, before Prefect recorded its result: that stage ran again); none is left
    # RUNNING, and its models are never registered.
    named = {r.info.run_id for r in hit["stages"].values()}
    parents = {p.info.run_id: p.info.status for p in hit["parents"]}
    for r in hit["runs"]:
        if r.data.tags.get("r1.stage") in STAGES and r.info.run_id not in named:
            assert r.info.status != "RUNNING", (r.data.tags["r1.stage"], kills)
            assert parents.get(r.data.tags.get("mlflow.parentRunId")) in ("KILLED", "FAILED", "FINISHED")
    ready = [m for m in hit["models"] if str(m.status).upper().endswith("READY")]
    finished_ids = {r.info.run_id for r in hit["runs"] if r.info.status == "FINISHED"}
    assert all(m.source_run_id in finished_ids for m in ready if m.source_run_id), "a READY model of a killed run"
    assert len(hit["versions"]) == len(clean["versions"]) == 1, [v.version for v in hit["versions"]]
    assert hit["versions"][0].run_id == hit["stages"]["sft"].info.run_id, "the registered model is the named SFT's"
