"""The stage tasks' Prefect cache policy: a stage's key is its own settings, seed and resolved
inputs (not the rest of the recipe, not the parent run), its task's source, and the library."""

from __future__ import annotations

from r1core.config import recipe_from_dict
from tasks import stages as stage_tasks

UPSTREAM = {"base": {"model_uri": "models:/m-base"}, "curate": {"dataset_uri": "runs:/abc/data/curated.jsonl"}}


def _key(recipe, stage="grpo", upstream=UPSTREAM, parent="p1"):
    inputs = {"recipe_json": recipe.to_json(), "stage": stage, "parent_run_id": parent, "upstream": upstream}
    return stage_tasks.StageInputs().compute_key(None, inputs, {})


def test_stage_key_sees_its_settings_and_inputs_only():
    base = recipe_from_dict({"name": "k", "stages": {"curate": {}, "grpo": {}, "evaluate": {"model": "grpo.output"}}})
    other_stage = recipe_from_dict({"name": "k", "stages": {"curate": {}, "grpo": {},
                                                           "evaluate": {"model": "grpo.output", "limit": 3}}})
    own = recipe_from_dict({"name": "k", "stages": {"curate": {}, "grpo": {"max_steps": 9},
                                                   "evaluate": {"model": "grpo.output"}}})
    assert _key(base) == _key(other_stage) == _key(base, parent="p2")
    assert _key(base) != _key(own)
    moved = {**UPSTREAM, "curate": {"dataset_uri": "runs:/def/data/curated.jsonl"}}
    assert _key(base) != _key(base, upstream=moved)


def test_library_fingerprint_is_part_of_every_stage_key():
    names = [type(p).__name__ for p in stage_tasks.STAGE_CACHE_POLICY.policies]
    assert names == ["StageInputs", "TaskSource", "LibraryVersion"]
    assert len(stage_tasks.library_fingerprint()) == 64
    assert stage_tasks.LibraryVersion().compute_key(None, {}, {}) == stage_tasks.library_fingerprint()
