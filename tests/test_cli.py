"""The `r1` command: bad input fails before any work, with a message that names the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.cli import build_parser, main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "pipeline" in out and "eval" in out and "recipe" in out


@pytest.mark.parametrize("recipe,message", [
    ({"name": "x", "stages": {"curate": {}, "grpo": {"rewardz": {}}}}, "stages.grpo.rewardz: unknown key"),
    ({"name": "x", "stages": {"curate": {"dataset": "gsm9k"}}}, "Unknown dataset 'gsm9k'"),
    ({"name": "x", "model": "./no/such/checkpoint", "stages": {"curate": {}}}, "neither a local folder"),
    ({"name": "x", "stages": {"curate": {}, "grpo": {"rewards": {"acc": 1.0}}}}, "Unknown reward(s) ['acc']"),
    ({"name": "x", "stages": {"curate": {}, "grpo": {"model": "sft.output"}}}, "'sft.output' names no stage"),
    ({"name": "x", "stages": {"curate": {}, "grpo": {}, "evaluate": {"model": "./no/such/policy"}}},
     "neither a local folder"),
])
def test_bad_recipes_fail_before_training(tmp_path, capsys, recipe, message, data_dir):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["pipeline", "--recipe", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_missing_data_mirror(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("R1_DATA_DIR", str(tmp_path / "nowhere"))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    assert main(["pipeline", "--recipe", str(recipe)]) == 2
    assert "R1_DATA_DIR" in capsys.readouterr().err


def test_missing_recipe_file(capsys):
    assert main(["pipeline", "--recipe", "recipes/nope.yaml"]) == 2
    assert "not found" in capsys.readouterr().err


def test_recipe_command_prints_resolved_recipe(capsys):
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    assert main(["recipe", "--recipe", str(recipe), "--set", "sft.max_steps=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["stages"]["sft"]["max_steps"] == 3
