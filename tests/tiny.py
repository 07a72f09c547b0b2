"""A tiny random-initialised Llama with the SmolLM2 tokenizer, for fast tests."""

from __future__ import annotations

from pathlib import Path


def make_tiny_model(out_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Write a 2-layer Llama (hidden size 64) with ``tokenizer_dir``'s tokenizer to ``out_dir``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def length_reward(completions, **kwargs):  # a named function: MLflow metric names cannot hold "<lambda>"
    """A reward that needs no answer: completion length in characters / 9."""
    return [len(c) / 9 for c in completions]


#: Settings that make each stage type run in seconds on the tiny model (tests only).
TINY_STAGE_SETTINGS = {
    "curate": {"num_problems": 6},
    "grpo": {"num_generations": 2, "max_completion_length": 8, "max_steps": 1,
             "args": {"per_device_train_batch_size": 4}},
    "rejection_sampling": {"num_problems": 3, "num_samples": 2, "max_new_tokens": 8},
    "sft": {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 256},
    "evaluate": {"benchmarks": ["math500"], "limit": 2, "num_samples": 2, "max_new_tokens": 8},
    "register": {},
    "compare": {"overrides": {}},  # the protocol is the (shrunk) evaluate stage's
}


def shrink_recipe(recipe: dict, model_dir: Path, name: str) -> dict:
    """A shipped recipe (as a dict) resized for the tiny model: same stage graph, tiny settings."""
    import copy

    out = copy.deepcopy(recipe)
    out.update(name=name, model=str(model_dir))
    for stage_name, section in out["stages"].items():
        stype = section.get("type", stage_name)
        section.update(copy.deepcopy(TINY_STAGE_SETTINGS[stype]))
        for key in ("teacher", "student", "model"):  # hub ids and shipped models -> the tiny model
            ref = section.get(key)
            if ref and ref != "base" and not ref.endswith(".output"):
                section[key] = str(model_dir)
        if stype == "curate" and section.get("reasoning_gym"):
            section["reasoning_gym"].update(size=200, heldout_size=4)
        if stype == "grpo" and section.get("eval"):
            section["eval"].update(limit=2, num_samples=2)
        if stype == "curate" and section.get("pass_rate"):
            section["pass_rate"].update(num_samples=2, max_new_tokens=4, candidates=8, model="base")
        if stype == "evaluate" and section.get("budget_forcing"):
            section["budget_forcing"] = {"max_thinking_tokens": [2, 4], "num_waits": 1, "answer_tokens": 2}
        if stype == "grpo":
            section.pop("accelerate_config", None)
            section.pop("num_processes", None)
            section.pop("save_steps", None)
            section["args"] = {**section["args"], "bf16": False, "gradient_checkpointing": False}
        if stype == "sft":
            section["args"] = {k: v for k, v in section.get("args", {}).items()
                               if k not in ("bf16", "gradient_checkpointing", "gradient_accumulation_steps")}
        if stype == "register":
            section["model_name"] = f"{name}-model"
    return out
