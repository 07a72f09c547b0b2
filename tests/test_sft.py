"""Student SFT: the loss covers the assistant turn only, and its end-of-turn token is trained."""

from __future__ import annotations

import pandas as pd
from transformers import AutoTokenizer

from r1core.config import SFTStageConfig
from r1core.prompts import messages
from r1core.sft import build_trainer, sft_args


def _traces() -> pd.DataFrame:
    prompt = messages("What is 2+2?", "r1_zero")
    completion = [{"role": "assistant", "content": "<think>\n2+2=4\n</think>\n<answer>4</answer>"}]
    return pd.DataFrame({"prompt": [prompt], "completion": [completion]})


def test_loss_mask_is_the_assistant_turn_with_its_end_of_turn_token(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = build_trainer(model, tok, _traces(), SFTStageConfig(max_steps=1), str(tmp_path))
    row = trainer.train_dataset[0]  # TRL turns the completion mask into labels (-100 where not trained)
    ids, mask = row["input_ids"], [label != -100 for label in row["labels"]]
    trained = [i for i, m in zip(ids, mask) if m]
    text = tok.decode(trained)
    assert text.startswith("<think>") and "<answer>4</answer>" in text
    assert tok.convert_tokens_to_ids("<|im_end|>") in trained  # the student learns to stop
    assert "What is 2+2?" not in text  # the prompt is not trained on
    assert "What is 2+2?" in tok.decode([i for i, m in zip(ids, mask) if not m])


def test_packing_is_a_recipe_switch(tmp_path):
    assert sft_args(SFTStageConfig(packing=True), str(tmp_path), 0, use_cpu=True).packing is True
    assert sft_args(SFTStageConfig(), str(tmp_path), 0, use_cpu=True).packing is False


def test_cpu_training_trims_the_heap_after_every_step(tiny_model_dir, tmp_path, monkeypatch):
    """On CPU the SFT trainer carries the heap-trim callback, and it runs once per optimizer step."""
    from transformers import AutoModelForCausalLM

    from r1core import stage_utils

    calls = []
    monkeypatch.setattr(stage_utils, "trim_heap", lambda: calls.append(1) or True)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = build_trainer(model, tok, _traces(), SFTStageConfig(max_steps=2), str(tmp_path))
    trainer.train()
    assert len(calls) == 2
