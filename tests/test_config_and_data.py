"""Recipes (validation, overrides, shipped files) and the data catalog on the real mirror."""

from __future__ import annotations

from pathlib import Path

import pytest

from r1core import data, graph
from r1core.config import Recipe, RecipeError, load_recipe, recipe_from_dict
from r1core.models import ModelNotFoundError, resolve_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and recipe.description
    assert sum(len(w) for w in graph.waves(recipe)) == len(recipe.stages)
    evaluates_during_rl = any(recipe.stages[n].eval is not None for n in recipe.stages_of_type("grpo"))
    assert path.name == "grpo_smollm2_gsm8k.yaml" or recipe.stages_of_type("evaluate") or evaluates_during_rl


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_pass_every_check_before_a_run(path, data_dir):
    """What r1 recipe / r1 pipeline check before any work (data, models, rewards, every args key
    against the TRL class it builds), for the GPU twins too: a GPU recipe must not fail hours in."""
    from r1core import stages

    stages.validate(load_recipe(path))


@pytest.mark.parametrize("recipe,message", [
    ({"sft": {"data": "curate.output", "args": {"warmup_ratio": 0.05}}}, "warmup_ratio (did you mean warmup_steps?)"),
    ({"grpo": {"args": {"lerning_rate": 1e-5}}}, "lerning_rate (did you mean learning_rate?)"),
    ({"grpo": {"rewards": {"acuracy": 1.0}}}, "acuracy"),
    ({"evaluate": {"model": "base", "benchmarks": ["foo"]}}, "Unknown dataset 'foo'"),
])
def test_bad_names_fail_before_a_run(recipe, message, data_dir):
    from r1core import stages

    cfg = recipe_from_dict({"name": "x", "stages": {"curate": {}, **recipe}})
    with pytest.raises(ValueError) as err:
        stages.validate(cfg)
    assert message in str(err.value)


def test_yaml_syntax_error_and_true_for_a_number_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages:\n  curate: {num_problems: 4\n  grpo: {}\n")
    with pytest.raises(RecipeError, match=r"bad.yaml:\d+:\d+: YAML syntax error"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="max_steps: expected a number, got true"):
        recipe_from_dict({"name": "x", "stages": {"curate": {}, "grpo": {"max_steps": True}}})


def test_malformed_jsonl_line_is_named_by_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "1+1?", "answer": "2 #### 2"}\n{"question": oops}\n')
    monkeypatch.setenv("R1_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError, match=r"test.jsonl:2: not valid JSON"):
        data.load("gsm8k:test")


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_valid(path):
    import yaml

    cfg = yaml.safe_load(path.read_text())
    assert cfg["distributed_type"] in {"MULTI_GPU", "DEEPSPEED", "FSDP"} and cfg["num_processes"] >= 1
    if cfg["distributed_type"] == "DEEPSPEED":
        assert cfg["deepspeed_config"]["zero_stage"] in {2, 3}
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(path))  # accelerate's own reader: unknown keys raise
    assert str(loaded.distributed_type).split(".")[-1] == cfg["distributed_type"]


def test_unknown_key_is_named_with_its_path():
    with pytest.raises(RecipeError, match=r"stages\.grpo\.max_stepz: unknown key"):
        recipe_from_dict({"name": "x", "stages": {"curate": {}, "grpo": {"max_stepz": 3}}})


def test_bad_value_is_named():
    with pytest.raises(RecipeError, match=r"stages\.grpo\.num_generations"):
        recipe_from_dict({"name": "x", "stages": {"curate": {}, "grpo": {"num_generations": 1}}})


def test_overrides_parse_values_as_yaml():
    base = {"name": "x", "stages": {"curate": {}, "grpo": {}, "evaluate": {"model": "grpo.output"}}}
    r = recipe_from_dict(base, ["grpo.max_steps=2", "evaluate.benchmarks=[aime24]",
                                "stages.evaluate.limit=null", "seed=7"])
    st = r.stages
    assert st["grpo"].max_steps == 2 and st["evaluate"].benchmarks == ["aime24"] and st["evaluate"].limit is None
    assert r.seed == 7
    with pytest.raises(RecipeError, match="key=value"):
        recipe_from_dict(base, ["grpo.max_steps"])


def test_missing_recipe_file_lists_shipped_ones(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_catalog_normalises_real_rows(data_dir):
    gsm, counts = data.load("gsm8k:train")
    assert len(gsm) == 7473 and counts["rows_skipped"] == 0
    assert set(data.COLUMNS) <= set(gsm.column_names)
    assert gsm[0]["answer"] == "72" and "####" not in gsm[0]["solution"] and "<<" not in gsm[0]["solution"]
    amc, _ = data.load("amc23")
    assert amc[0]["answer"] == "27"                        # 27.0 -> 27
    aime, _ = data.load("aime24")
    assert len(aime) == 30 and any(a.startswith("0") for a in aime["answer"])  # 025 kept
    math500, _ = data.load("math500")
    assert len(math500) == 500 and {1, 5} <= set(math500["level"]) and math500[0]["subject"]


def test_malformed_rows_are_skipped_and_counted(tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(
        '{"question": "1+1?", "answer": "2 #### 2"}\n{"question": "no answer", "answer": "none"}\n')
    monkeypatch.setenv("R1_DATA_DIR", str(tmp_path))
    ds, counts = data.load("gsm8k:test")
    assert len(ds) == 1 and counts == {"rows_read": 2, "rows_skipped": 1}


def test_unknown_dataset_and_split_errors():
    with pytest.raises(data.DataError, match="Known datasets: aime24, amc23, gsm8k, humaneval, math500"):
        data.parse_spec("gsm9k")
    with pytest.raises(data.DataError, match="no split 'dev'"):
        data.parse_spec("gsm8k:dev")


def test_missing_mirror_error_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("R1_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(data.DataError, match="R1_DATA_DIR"):
        data.check_available("math500")


def test_model_references():
    with pytest.raises(ModelNotFoundError, match="neither a local folder"):
        resolve_model("./no/such/model")
    assert resolve_model("Qwen/Qwen2.5-1.5B-Instruct").is_hub


def test_model_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))
