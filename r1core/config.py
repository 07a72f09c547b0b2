"""Recipes: one YAML file per experiment (model, data, stage settings), validated up front.

A recipe is parsed into :class:`Recipe` (pydantic, unknown keys rejected), so a typo fails
with the key's dotted path before any model is loaded. ``--set key=value`` overrides use dotted
paths (``grpo.max_steps=2``); values are parsed as YAML (``2`` is an int, ``[a, b]`` a list).

Stage inputs refer to other stages' outputs by name: a model field may be ``base`` (the
recipe's ``model``), ``grpo`` (the GRPO stage's model), ``sft`` (the student), or any model
reference (see :mod:`r1core.models`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

STAGES = ("curate", "grpo", "rejection_sampling", "sft", "evaluate", "register")  # "register" is configured by the `registry` section


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PassRateFilter(_Section):
    """Difficulty by pass rate: k samples per problem from a reference model."""

    model: str = Field("base", description="Reference model: base, or a model reference.")
    num_samples: int = Field(4, ge=1, description="k samples per problem.")
    min_pass_rate: float = Field(0.0, ge=0, le=1)
    max_pass_rate: float = Field(0.75, ge=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    candidates: int = Field(256, ge=1, description="Problems scored (the filter's cost is k x candidates samples).")


class CurateConfig(_Section):
    """Curation: load, normalise, deduplicate, decontaminate, sample."""

    dataset: str = Field("gsm8k:train", description="Catalog name[:split] of the training set.")
    num_problems: int = Field(64, ge=1, description="Problems kept after filtering (a seeded sample).")
    decontaminate: list[str] = Field(
        default_factory=lambda: ["gsm8k:test", "math500", "aime24", "amc23"],
        description="Benchmarks whose problems (normalised text) are removed from the training set.",
    )
    max_problem_chars: int | None = Field(None, ge=1, description="Drop problems longer than this (characters).")
    ngram: int = Field(8, ge=1, description="Decontamination n-gram size in words (open-r1 uses 8).")
    drop_unparsable_gold: bool = Field(True, description="Drop rows whose gold answer math-verify cannot parse.")
    stratify_by: Literal["subject", "source", "level"] | None = Field(
        None, description="Sample evenly across this column instead of uniformly.")
    pass_rate: PassRateFilter | None = Field(None, description="Keep problems a reference model solves at a rate in a band.")


class GRPOStageConfig(_Section):
    """GRPO (R1-Zero when run on a base model). Keys of ``args`` go to TRL's ``GRPOConfig`` as is."""

    model: str = Field("base", description="Policy to start from: base, or a model reference.")
    rewards: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 1.0, "format": 0.5, "tag_count": 0.5},
        description="Reward name -> weight (names from r1core.rewards.REGISTRY).",
    )
    reward_args: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Reward name -> constructor arguments, e.g. {cosine: {max_len: 512}}.")
    prompt_template: Literal["r1_zero", "r1_eval"] = "r1_zero"
    prefill: str | None = Field("<think>\n", description="Text that starts the assistant turn.")
    num_generations: int = Field(4, ge=2, description="Completions per prompt (the GRPO group size).")
    max_completion_length: int = Field(96, ge=1, description="Tokens per completion.")
    max_steps: int = Field(4, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    args: dict[str, Any] = Field(default_factory=dict, description="Extra trl.GRPOConfig fields.")
    accelerate_config: str | None = Field(
        None, description="Train in `accelerate launch` subprocesses with this config (recipes/accelerate/*.yaml).")
    num_processes: int = Field(1, ge=1, description="Processes (GPUs) for accelerate launch.")
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps (0: none); a killed run resumes from the last.")
    dynamic_sampling: bool = Field(False, description="DAPO dynamic sampling: replace zero-advantage groups.")
    dynamic_sampling_rounds: int = Field(3, ge=1, description="Cap on extra generation rounds per step.")
    completions_log_steps: int = Field(1, ge=0, description="Log a table of sampled completions every N steps (0: never).")
    stop_strings: list[str] = Field(default_factory=list, description='End completions after these strings, e.g. ["</answer>"].')


class RejectionSamplingConfig(_Section):
    """Rejection sampling: a teacher samples k completions per problem; verified ones are kept."""

    teacher: str = Field("grpo", description="grpo, base, sft, or a model reference.")
    num_problems: int = Field(32, ge=1, description="Problems taken from the curated set.")
    num_samples: int = Field(4, ge=1, description="k: completions sampled per problem.")
    max_new_tokens: int = Field(192, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    prompt_template: Literal["r1_zero", "r1_eval"] = "r1_eval"
    prefill: str | None = None
    require_format: bool = Field(False, description="Keep only completions in the think/answer template.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Reject completions longer than this.")
    keep: Literal["all_correct", "shortest_correct"] = "all_correct"
    fallback: Literal["none", "reference"] = Field(
        "none", description="reference: for problems where the teacher kept nothing, use the data set's "
        "worked solution (verified, formatted in the template, labelled origin=reference).")
    batch_size: int = Field(16, ge=1)


class SFTStageConfig(_Section):
    """Student SFT on the kept traces (TRL's SFTTrainer). ``args`` go to ``SFTConfig`` as is."""

    student: str = Field("base", description="Model to fine-tune: base, or a model reference.")
    max_steps: int = Field(8, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    per_device_train_batch_size: int = Field(4, ge=1)
    max_length: int = Field(512, ge=16, description="Tokens per training sequence.")
    args: dict[str, Any] = Field(default_factory=dict, description="Extra trl.SFTConfig fields.")


class BudgetForcingConfig(_Section):
    """s1 budget forcing sweep (r1core.budget): evaluate once per thinking budget."""

    max_thinking_tokens: list[int] = Field(default_factory=lambda: [64, 128, 256],
                                           description="Thinking budgets N to sweep, in tokens.")
    num_waits: int = Field(0, ge=0, description="Times an early end of thinking is replaced by 'Wait' (M).")
    answer_tokens: int = Field(64, ge=1, description="Tokens for the answer after thinking.")

    @field_validator("max_thinking_tokens")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if not v or min(v) < 1:
            raise ValueError("give at least one budget, each >= 1 token")
        return sorted(set(v))


class EvaluateConfig(_Section):
    """Evaluation with R1's protocol: k samples at T=0.6, top-p 0.95; pass@1 averaged over k."""

    model: str = Field("sft", description="Model to evaluate: sft, grpo, base, or a model reference.")
    benchmarks: list[str] = Field(default_factory=lambda: ["math500", "aime24"])
    limit: int | None = Field(8, ge=1, description="First N problems of each benchmark (None: all).")
    num_samples: int = Field(2, ge=1, description="k samples per problem.")
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    prompt_template: Literal["r1_zero", "r1_eval"] = "r1_eval"
    batch_size: int = Field(16, ge=1)
    budget_forcing: BudgetForcingConfig | None = Field(
        None, description="Also sweep s1 budget forcing over thinking budgets (accuracy-vs-budget table and plot).")


class RegisterConfig(_Section):
    """Registry: the student becomes a model version; ``challenger`` always, ``champion`` by the gate."""

    model_name: str = Field("r1-student", description="Registered model name.")
    gate_metric: str = Field("math500/pass@1", description="Metric the champion gate compares.")
    min_margin: float = Field(0.0, description="Challenger must beat the champion by more than this.")


class Recipe(_Section):
    """One experiment: the base model, the data and every stage's settings."""

    name: str
    description: str = ""
    experiment: str | None = Field(None, description="MLflow experiment (default: r1-<name>).")
    model: str = Field("smollm2-135m-instruct", description="Base model reference.")
    seed: int = 42
    curate: CurateConfig = CurateConfig()
    grpo: GRPOStageConfig = GRPOStageConfig()
    rejection_sampling: RejectionSamplingConfig = RejectionSamplingConfig()
    sft: SFTStageConfig = SFTStageConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegisterConfig = RegisterConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not v.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError("use letters, digits, '-', '_' and '.'")
        return v

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"r1-{self.name}"

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): what caches and lineage tags hash."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """Parse ``["grpo.max_steps=2", ...]`` into ``[("grpo.max_steps", 2), ...]`` (values as YAML)."""
    out = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"Override {item!r} is not key=value (e.g. --set grpo.max_steps=2).")
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return out


def _format_validation(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (check its spelling against recipes/quickstart.yaml)")
        else:
            lines.append(f"  {loc}: {e['msg']}")
    return f"Recipe {source} is invalid:\n" + "\n".join(lines)


def recipe_from_dict(data: dict, overrides: list[str] | None = None, source: str = "<dict>") -> Recipe:
    """Validate a recipe given as a dict, applying ``key=value`` overrides first.

    Raises:
        RecipeError: unknown keys, bad values or malformed overrides, each named by dotted path.
    """
    data = json.loads(json.dumps(data))  # deep copy
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_validation(err, source)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe YAML file (see :func:`recipe_from_dict`).

    Raises:
        RecipeError: the file is missing or not a mapping, or the recipe is invalid.
    """
    path = Path(path)
    if not path.is_file():
        shipped = sorted(p.name for p in Path("recipes").glob("*.yaml")) if Path("recipes").is_dir() else []
        raise RecipeError(f"Recipe file {path} not found." + (f" Shipped recipes: {', '.join(shipped)}." if shipped else ""))
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise RecipeError(f"Recipe {path} must be a YAML mapping of keys to values.")
    data.setdefault("name", path.stem)
    return recipe_from_dict(data, overrides, source=str(path))


def trl_config(config_cls, section: str, defaults: dict[str, Any], extra: dict[str, Any], *,
               output_dir: str, seed: int, use_cpu: bool):
    """Build a TRL config (``GRPOConfig``, ``SFTConfig``): common training defaults, then a
    stage's ``defaults``, then the recipe's ``<section>.args`` (which win).

    Common defaults: log every step to MLflow, no intermediate checkpoints, fp32 on the CPU, no
    gradient checkpointing (TRL enables it; for small models it only costs recompute).

    Raises:
        ValueError: an ``args`` key the config class does not have, named with the fix.
    """
    unknown = sorted(set(extra) - set(config_cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{section}.args has keys trl.{config_cls.__name__} does not know: {unknown}. "
                         f"Check the spelling against TRL's {config_cls.__name__} documentation.")
    common = dict(output_dir=output_dir, seed=seed, use_cpu=use_cpu, logging_steps=1, save_strategy="no",
                  report_to=["mlflow"], bf16=False, gradient_checkpointing=False, dataloader_num_workers=0)
    return config_cls(**{**common, **defaults, **extra})
