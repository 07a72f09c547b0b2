"""The engine as an opt-in subpackage (:mod:`r1core.cpu_engine`): importing
:mod:`r1core.generation` changes nothing in transformers, the engine registers its attention on
first use, it calls the model's forward by transformers' supported cache keyword (no
``FutureWarning``), and its kernel's build folder is keyed by the kernel's source."""

from __future__ import annotations

import inspect
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from r1core.generation import SamplingParams, generate

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["What is 1+1?", "Compute the sum of the first ten odd numbers, please.", "Hi"]


def test_importing_generation_registers_nothing_until_the_engine_decodes(tiny_model_dir):
    """In a fresh process: after ``import r1core.generation`` neither the engine nor torch is
    loaded and transformers' attention and mask interfaces do not hold the engine's function;
    after one generate call they do."""
    code = f"""
import sys
import r1core.generation
assert "r1core.cpu_engine" not in sys.modules, "importing r1core.generation imported the engine"
assert "torch" not in sys.modules, "importing r1core.generation imported torch"
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface
assert "r1_bucketed_sdpa" not in AttentionInterface().valid_keys()
assert "r1_bucketed_sdpa" not in AttentionMaskInterface().valid_keys()
from r1core.generation import SamplingParams, generate
from r1core.models import load_model_and_tokenizer
model, tok = load_model_and_tokenizer({str(tiny_model_dir)!r})
generate(model, tok, ["What is 1+1?"], SamplingParams(max_new_tokens=3, temperature=0.0))
from r1core.cpu_engine.attention import bucketed_sdpa
assert AttentionInterface()["r1_bucketed_sdpa"] is bucketed_sdpa
assert "r1_bucketed_sdpa" in AttentionMaskInterface().valid_keys()
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_register_is_idempotent_and_thread_safe():
    from transformers import AttentionInterface

    from r1core.cpu_engine import attention

    threads = [threading.Thread(target=attention.register) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    attention.register()
    assert AttentionInterface()[attention.BUCKETED_SDPA] is attention.bucketed_sdpa


@pytest.mark.parametrize("path", ["kernel", "transformers_forward"])
def test_generate_emits_no_future_warning(tiny, monkeypatch, path):
    """Pre-fill and decode pass the cache by the keyword the model's forward names (``cache`` in
    transformers 5.x since the rename; ``past_key_values`` warns on every forward, for removal in
    5.40): neither the kernel's decode path nor the transformers-forward path (row buckets) warns."""
    from r1core.cpu_engine import attention
    from r1core.cpu_engine.decoder import CpuDecoder

    model, tok = tiny
    if path == "transformers_forward":
        monkeypatch.setattr(CpuDecoder, "for_model", classmethod(lambda cls, model: None))
        monkeypatch.setattr(attention, "_BUCKET_OVERHEAD", 0)  # split into row buckets too
    params = SamplingParams(max_new_tokens=6, temperature=0.6, top_p=0.95, seed=0)
    system = "You are a careful assistant. Reason step by step, then answer in one line. "  # a shared prefix
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = generate(model, tok, [system + p for p in PROMPTS], params, batch_size=3, engine="r1")
    assert len(out) == len(PROMPTS)
    future = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, FutureWarning)]
    assert future == []


def test_cache_keyword_follows_the_forward_signature(tiny):
    from r1core.cpu_engine.cache import cache_keyword

    model, _ = tiny
    assert cache_keyword(model) == ("cache" if "cache" in inspect.signature(type(model).forward).parameters
                                    else "past_key_values")

    class Older:  # a transformers 5.x forward before the rename
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            ...

    class Wrapper:  # a wrapper passing everything through
        def forward(self, *args, **kwargs):
            ...

    assert cache_keyword(Older()) == "past_key_values"
    assert cache_keyword(Wrapper()) == "past_key_values"


def test_kernel_build_directory_is_keyed_by_the_source_and_honours_torch_extensions_dir(tmp_path, monkeypatch):
    """Two checkouts with different kernels build in different folders; ``TORCH_EXTENSIONS_DIR``
    (torch's own setting) holds them when set."""
    from torch.utils.cpp_extension import get_default_build_root

    from r1core.cpu_engine import kernel

    source = kernel.SOURCE.read_text()
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    default = kernel.build_directory()
    assert default.parent == Path(get_default_build_root())
    assert default == kernel.build_directory(source)
    assert kernel.build_directory(source + "\n// another version\n") != default
    assert kernel.build_key(source) in default.name and default.name.startswith("r1_decode_attention-py")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    under = kernel.build_directory()
    assert under.parent == tmp_path / "ext" and under.name == default.name
