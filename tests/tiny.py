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
