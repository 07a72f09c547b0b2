"""The OpenAI-compatible teacher against a real server: llama.cpp's server (llama-cpp-python,
built by ``make teacher-server`` into ``.venv-teacher``) serving the shipped SmolLM2-135M GGUF on
127.0.0.1. Marker ``endpoint``; ``make test`` runs these."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from r1core import stages
from r1core.config import recipe_from_dict

pytestmark = pytest.mark.endpoint
ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-r1-test-secret-do-not-log"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` on a fixed port, which can be stopped and started again."""

    def __init__(self, python: Path, gguf: Path, log: Path):
        self.python, self.gguf, self.log, self.port = python, gguf, log, _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        fh = self.log.open("a")
        self.proc = subprocess.Popen(
            [str(self.python), "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048",
             # one thread: with two, every request slows badly while the machine is busy (measured)
             "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "False"],
            stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited early; see {self.log}:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"llama.cpp server did not answer in {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def requests_served(self) -> int:
        return self.log.read_text().count("POST /v1/chat/completions")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from r1core.models import _smollm2_gguf

    python = Path(os.environ.get("R1_TEACHER_SERVER_PYTHON", ROOT / ".venv-teacher" / "bin" / "python"))
    if not python.exists():
        pytest.fail(f"{python} is missing: `make teacher-server` builds llama.cpp's OpenAI-compatible server "
                    "(or set R1_TEACHER_SERVER_PYTHON to a Python that has llama-cpp-python[server]).")
    srv = LlamaServer(python, _smollm2_gguf(), tmp_path_factory.mktemp("llama-server") / "server.log")
    srv.start()
    yield srv
    srv.stop()


def _recipe(url: str, name: str, **endpoint):
    return recipe_from_dict({"name": name, "stages": {
        "curate": {"dataset": "gsm8k:test", "num_problems": 6, "decontaminate": [], "max_problem_chars": 200},
        "rejection_sampling": {"num_problems": 6, "num_samples": 2, "max_new_tokens": 24, "shard_size": 2,
                               "fallback": "reference", "prompt_template": "r1_eval",
                               "endpoint": {"base_url": url, "model": "smollm2", **endpoint}},
    }})


def test_sampling_from_the_server_names_the_teacher_and_never_logs_the_key(server, data_dir, monkeypatch):
    monkeypatch.setenv("R1_TEST_TEACHER_KEY", SECRET)
    # use_n=true: the server returns one choice for n=2, so the teacher asks again for the second
    recipe = _recipe(server.url, "endpoint-sampling", api_key_env="R1_TEST_TEACHER_KEY", max_concurrency=2)
    parent = stages.start_pipeline(recipe)
    cur = stages.run_stage(recipe, "curate", parent)
    out = stages.run_stage(recipe, "rejection_sampling", parent, data=cur["dataset_uri"])
    assert out["teacher"] == f"{server.url}#smollm2"

    client = MlflowClient()
    run = client.get_run(out["run_id"])
    assert run.data.metrics["num_samples"] == 12 and run.data.metrics["num_kept"] >= 1
    assert run.data.params["rejection.endpoint.api_key_env"] == "R1_TEST_TEACHER_KEY"
    path = client.download_artifacts(out["run_id"], "samples/rejection_samples.json")
    table = json.loads(Path(path).read_text())
    samples = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert len(samples) == 12 and all(s["num_tokens"] > 0 for s in samples)
    assert any(s["response"].strip() for s in samples)
    traces = next(d for d in run.inputs.dataset_inputs if d.dataset.name == "sft_traces")
    assert {t.key: t.value for t in traces.tags}["r1.teacher"] == f"{server.url}#smollm2"
    everything = json.dumps([run.data.params, run.data.tags, table])
    assert SECRET not in everything


def test_missing_api_key_fails_before_sampling(server, data_dir, monkeypatch):
    monkeypatch.delenv("R1_TEST_TEACHER_KEY", raising=False)
    recipe = _recipe(server.url, "endpoint-nokey", api_key_env="R1_TEST_TEACHER_KEY")
    parent = stages.start_pipeline(recipe)
    cur = stages.run_stage(recipe, "curate", parent)
    before = server.requests_served()
    with pytest.raises(ValueError, match=r"\$R1_TEST_TEACHER_KEY, which is not set"):
        stages.run_stage(recipe, "rejection_sampling", parent, data=cur["dataset_uri"])
    assert server.requests_served() == before


def test_outage_mid_run_loses_nothing_and_the_rerun_samples_only_the_rest(server, data_dir):
    from r1core.sampling import EndpointError

    # llama.cpp's server answers n=2 with one choice; use_n=false asks once per sample from the start
    recipe = _recipe(server.url, "endpoint-outage", max_concurrency=1, max_retries=1, timeout_s=120, use_n=False)
    parent = stages.start_pipeline(recipe)
    cur = stages.run_stage(recipe, "curate", parent)
    work = Path(os.environ["R1_STATE_DIR"]) / "work" / "rejection"

    def saved() -> dict[str, list[str]]:
        lines = [json.loads(x) for f in sorted(work.glob("*/shard-*.jsonl")) for x in f.read_text().splitlines()]
        return {r["id"]: [s["text"] for s in r["samples"]] for r in lines}

    def stop_after_two():  # the outage: the server goes away once two problems are on disk
        while len(saved()) < 2:
            time.sleep(0.05)
        server.stop()

    watcher = threading.Thread(target=stop_after_two)
    watcher.start()
    with pytest.raises(EndpointError, match="re-run the stage to resume"):
        stages.run_stage(recipe, "rejection_sampling", parent, data=cur["dataset_uri"])
    watcher.join()
    first = saved()
    assert 2 <= len(first) < 6

    server.start()
    before = server.requests_served()
    out = stages.run_stage(recipe, "rejection_sampling", parent, data=cur["dataset_uri"])
    assert server.requests_served() - before == 2 * (6 - len(first))  # k=2 requests per remaining problem only

    client = MlflowClient()
    path = client.download_artifacts(out["run_id"], "samples/rejection_samples.json")
    table = json.loads(Path(path).read_text())
    samples = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert len(samples) == 12
    for pid, texts in first.items():  # every sample from before the outage is in the final table
        assert [s["response"] for s in samples if s["id"] == pid] == [t[:2000] for t in texts]
    assert not list(work.glob("*/shard-*.jsonl"))  # the log is removed once the stage succeeded
