"""Recipes: one YAML file per experiment (model, seed, and a graph of stages), validated up front.

A recipe is parsed into :class:`Recipe` (pydantic, unknown keys rejected), so a typo fails
with the key's dotted path before any model is loaded. ``--set key=value`` overrides use dotted
paths (``stages.grpo.max_steps=2``, or ``grpo.max_steps=2`` for short when ``grpo`` names a
stage); values are parsed as YAML (``2`` is an int, ``[a, b]`` a list).

``stages`` maps stage names to their settings; each has a ``type`` (curate, grpo,
rejection_sampling, sft, evaluate, register, compare; default: the stage's name). A stage's inputs name
what feeds it: ``base`` (the recipe's ``model``), ``<stage>.output`` (another stage's model,
data set or evaluation), or for models any model reference (see :mod:`r1core.models`). The
graph these references make is checked before anything runs (:mod:`r1core.graph`)::

    stages:
      curate: {dataset: gsm8k:train}
      sft_coldstart: {type: sft, data: curate.output, student: base}
      grpo: {data: curate.output, model: sft_coldstart.output}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from r1core.errors import RecipeError
from r1core.graph import check_graph

STAGE_TYPES = ("curate", "grpo", "rejection_sampling", "sft", "evaluate", "register", "compare")


_NUMBERS = (int, float, int | None, float | None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        """YAML's ``true`` is not a number: pydantic would turn ``max_steps: true`` into 1."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if isinstance(value, bool) and field is not None and field.annotation in _NUMBERS:
                    raise ValueError(f"{key}: expected a number, got {str(value).lower()}")
        return data


class _Stage(_Section):
    """A stage's settings. ``INPUTS`` maps each input field to what it takes: ``model``,
    ``dataset`` or ``evaluation`` (see :mod:`r1core.graph`)."""

    INPUTS: ClassVar[dict[str, str]] = {}
    OUTPUT: ClassVar[str] = ""
    #: Settings that say where a stage runs, not what it computes (left out of its cache key).
    PLACEMENT: ClassVar[tuple[str, ...]] = ("work_pool",)
    work_pool: str | None = Field(None, description=(
        "Run this stage on that Prefect work pool (as the r1-stage/<work_pool> deployment, registered by "
        "`r1 deploy --pool <work_pool> --stages-only`), e.g. gpu for training, cpu for evaluation. None: in "
        "the pipeline's own flow run."))

    def input_refs(self) -> dict[str, tuple[str, str]]:
        """``{input key: (reference, kind)}`` for the inputs this stage reads."""
        return {k: (getattr(self, k), kind) for k, kind in self.INPUTS.items() if getattr(self, k) is not None}


Engine = Literal["auto", "cpu", "hf", "vllm"]
ENGINE_HELP = ("Sampler (r1core.sampling): cpu (the project's engine), hf (transformers generate), vllm (CUDA, "
               "pip install '.[vllm]'), or auto (vllm on CUDA when installed, else cpu).")


class VLLMSettings(_Section):
    """vLLM's memory and parallelism settings for a stage that samples with ``engine: vllm``
    (passed to ``vllm.LLM``; for GRPO, to TRL's ``vllm_*`` fields)."""

    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take "
                                          "(weights + KV cache); lower it when training shares the GPU (GRPO: 0.3).")
    max_model_len: int | None = Field(None, ge=16, description="Prompt + completion tokens per sequence; sizes the "
                                      "KV cache to what is asked rather than the model's maximum context.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one model is split over.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    enable_prefix_caching: bool = Field(True, description="Share the KV cache of a prompt between its k samples.")

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``vllm.LLM``."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class PassRateFilter(_Section):
    """Difficulty by pass rate: k samples per problem from a reference model."""

    model: str = Field("base", description="Reference model: base, <stage>.output, or a model reference.")
    num_samples: int = Field(4, ge=1, description="k samples per problem.")
    min_pass_rate: float = Field(0.0, ge=0, le=1)
    max_pass_rate: float = Field(0.75, ge=0, le=1)
    max_new_tokens: int = Field(256, ge=1)
    candidates: int = Field(256, ge=1, description="Problems scored (the filter's cost is k x candidates samples).")
    engine: Engine = Field("auto", description=ENGINE_HELP)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings, description="vLLM settings (engine vllm).")
    batch_size: int = Field(64, ge=1, description="Sequences decoded together.")


class ProceduralTask(_Section):
    """One reasoning-gym task of a procedural mix."""

    name: str = Field(description="A reasoning-gym task, e.g. chain_sum, basic_arithmetic, leg_counting.")
    weight: float = Field(1.0, gt=0, description="Share of the mix (weights are normalised).")
    config: dict[str, Any] = Field(default_factory=dict, description="The task's settings (its difficulty), "
                                   "e.g. {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}.")


class ReasoningGymConfig(_Section):
    """Procedural problems from reasoning-gym (r1core.procedural): training and held-out sets from
    disjoint seeds, checked disjoint."""

    tasks: list[ProceduralTask] = Field(min_length=1, description="The tasks, their weights and settings.")
    size: int = Field(2000, ge=1, description="Training problems generated (before deduplication).")
    seed: int = Field(1, description="Seed of the training problems.")
    heldout_size: int = Field(64, ge=0, description="Held-out problems (never trained on), for evaluation.")
    heldout_seed: int = Field(2, description="Seed of the held-out problems (must differ from seed).")


class CurateConfig(_Stage):
    """Curation: load, normalise, deduplicate, decontaminate, sample. Output: a data set (and,
    for procedural tasks, a held-out set that ``grpo.eval`` can name as ``heldout``)."""

    OUTPUT: ClassVar[str] = "dataset"
    type: Literal["curate"] = "curate"

    dataset: str = Field("gsm8k:train", description="Catalog name[:split] of the training set, a JSON-lines "
                         "file (*.jsonl: problem and answer, or problem and tests for code; r1core.data.user_file_rows), "
                         "or reasoning_gym (procedural tasks, set in the reasoning_gym section).")
    reasoning_gym: ReasoningGymConfig | None = Field(
        None, description="Procedural reasoning tasks (with dataset: reasoning_gym).")
    num_problems: int = Field(64, ge=1, description="Problems kept after filtering (a seeded sample).")
    decontaminate: list[str] = Field(
        default_factory=lambda: ["gsm8k:test", "math500", "aime24", "amc23"],
        description="Benchmarks whose problems (normalised text) are removed from the training set.",
    )
    max_problem_chars: int | None = Field(None, ge=1, description="Drop problems longer than this (characters).")
    ngram: int = Field(8, ge=1, description="Decontamination n-gram size in words (open-r1 uses 8).")
    drop_unparsable_gold: bool = Field(True, description="Drop rows whose gold answer the verifier cannot check "
                                       "by its answer type (r1core.verify: gold_unparsable).")
    stratify_by: Literal["subject", "source", "level"] | None = Field(
        None, description="Sample evenly across this column instead of uniformly.")
    pass_rate: PassRateFilter | None = Field(None, description="Keep problems a reference model solves at a rate in a band.")

    def input_refs(self) -> dict[str, tuple[str, str]]:
        return {"reference_model": (self.pass_rate.model, "model")} if self.pass_rate else {}

    @model_validator(mode="after")
    def _procedural(self):
        if (self.dataset == "reasoning_gym") != (self.reasoning_gym is not None):
            raise ValueError("dataset: reasoning_gym and a reasoning_gym section go together (give both, or neither)")
        return self


class InTrainingEvalConfig(_Section):
    """Evaluation during GRPO (R1 evaluates during RL, DeepSeek-R1 Figure 2): pass@1 over k
    samples with the R1 protocol, every ``eval_steps`` steps, at step 0 and at the end, through
    the same code as the evaluate stage."""

    eval_steps: int = Field(10, ge=1, description="Evaluate every this many optimizer steps.")
    benchmarks: list[str] = Field(default_factory=lambda: ["heldout"], description=(
        "heldout (the held-out problems of the curate stage feeding grpo.data) and/or catalog benchmarks "
        "(math500, aime24, gsm8k:test, ...)."))
    limit: int | None = Field(64, ge=1, description="First N problems of each benchmark (None: all).")
    num_samples: int = Field(4, ge=1, description="k samples per problem.")
    max_new_tokens: int | None = Field(None, ge=1, description="Tokens per sample (None: grpo.max_completion_length).")
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    prompt_template: Literal["r1_zero", "r1_eval"] | None = Field(
        None, description="Prompt template (None: the GRPO stage's template and prefill, as the policy is trained).")
    batch_size: int = Field(64, ge=1, description="Sequences decoded together.")

class _TrainingStage(_Stage):
    """A stage that trains: in this process, or in ``accelerate launch`` subprocesses (:mod:`r1core.launch`)."""

    accelerate_config: str | None = Field(
        None, description="Train in `accelerate launch` subprocesses with this config: recipes/accelerate/ddp.yaml, "
        "fsdp.yaml, zero2.yaml or zero3.yaml (FSDP and DeepSpeed need CUDA).")
    num_processes: int = Field(1, ge=1, description="Training processes: one per GPU; on a CPU machine, > 1 runs "
                               "DDP ranks on gloo. More than the machine's GPUs is an error.")


class GRPOStageConfig(_TrainingStage):
    """GRPO (R1-Zero when run on a base model). Keys of ``args`` go to TRL's ``GRPOConfig`` as is.
    Output: the policy (a model)."""

    INPUTS: ClassVar[dict[str, str]] = {"data": "dataset", "model": "model"}
    OUTPUT: ClassVar[str] = "model"
    type: Literal["grpo"] = "grpo"
    data: str = Field("curate.output", description="Prompts: <stage>.output of a curate stage.")
    model: str = Field("base", description="Policy to start from: base, <stage>.output, or a model reference.")
    rewards: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 1.0, "format": 0.5, "tag_count": 0.5},
        description="Reward name -> weight (names from r1core.rewards.REGISTRY).",
    )
    reward_args: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Reward name -> constructor arguments, e.g. {cosine: {max_len: 512}}; "
        "judge: a JudgeConfig ({endpoint: {base_url, model}, rubric, ...}); reward_model: {model: <reference>}.")
    prompt_template: Literal["r1_zero", "r1_eval"] = "r1_zero"
    prefill: str | None = Field("<think>\n", description="Text that starts the assistant turn.")
    num_generations: int = Field(4, ge=2, description="Completions per prompt (the GRPO group size).")
    max_completion_length: int = Field(96, ge=1, description="Tokens per completion.")
    max_steps: int = Field(4, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    args: dict[str, Any] = Field(default_factory=dict, description="Extra trl.GRPOConfig fields.")
    save_steps: int = Field(0, ge=0, description="Checkpoint every N steps (0: none); a killed run resumes from the last.")
    dynamic_sampling: bool = Field(False, description="DAPO dynamic sampling: replace zero-advantage groups.")
    dynamic_sampling_rounds: int = Field(3, ge=1, description="Cap on extra generation rounds per step.")
    completions_log_steps: int = Field(1, ge=0, description="Log a table of sampled completions every N steps (0: never).")
    stop_strings: list[str] = Field(default_factory=list, description='End completions after these strings, e.g. ["</answer>"].')
    engine: Engine = Field("auto", description="Rollouts: cpu (the project's engine, r1core.cpu_engine), hf (TRL's "
                           "stock transformers generate), vllm (TRL's colocated vLLM; CUDA), or auto (vllm on CUDA "
                           "when installed, else cpu). Evaluation during training samples with cpu or hf.")
    vllm: VLLMSettings = Field(default_factory=lambda: VLLMSettings(gpu_memory_utilization=0.3),
                               description="vLLM settings for engine vllm (colocated with training).")
    eval: InTrainingEvalConfig | None = Field(None, description="Evaluate the policy during training (pass@1 vs step).")
    reflection_markers: list[str] | None = Field(
        None, description="Phrases counted for the reflection rate per step (None: r1core.signals.REFLECTION_MARKERS).")
    language: Literal["en", "zh"] = Field("en", description="Target language of the language-consistency signal.")


class EndpointConfig(_Section):
    """An OpenAI-compatible chat-completions endpoint as a teacher or an LLM judge (vLLM's server,
    llama.cpp's, DeepSeek's API, ...). The API key comes from the environment variable ``api_key_env``
    and is never logged."""

    base_url: str = Field(description="e.g. https://api.deepseek.com/v1 or http://127.0.0.1:8000/v1")
    model: str = Field(description="The model name the server expects, e.g. deepseek-reasoner.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (None: no key).")
    max_concurrency: int = Field(8, ge=1, description="Requests in flight at once.")
    timeout_s: float = Field(600.0, gt=0, description="Per-request timeout, seconds.")
    max_retries: int = Field(5, ge=0, description="Retries with exponential backoff on 408/409/429/5xx and connection errors.")
    use_n: bool = Field(True, description="Ask for k choices in one request (n=k); off for servers that refuse n.")


class JudgeConfig(_Section):
    """An LLM judge as a GRPO reward (``reward_args.judge``, :class:`r1core.judge.JudgeReward`): R1's
    model-based reward for general prompts (DeepSeek-R1, arXiv:2501.12948, section 2.3.4). The judge
    reads a rubric (system turn) and the prompt and response (user turn), and ends its reply with
    ``Score: N/10``, parsed to ``N/10``."""

    endpoint: EndpointConfig = Field(description="The judge's server: base_url, model, api_key_env, "
                                     "max_concurrency, timeout_s, max_retries (use_n is not used).")
    rubric: str | None = Field(None, description="The judge's instructions (None: r1core.judge.DEFAULT_RUBRIC, "
                               "helpfulness and harmlessness on a 0-10 scale). It must ask for a last line "
                               "'Score: N/<scale>'.")
    scale: int = Field(10, ge=1, description="The top of the rubric's scale; a score N with no '/M' is read as N/scale.")
    include_reasoning: bool = Field(True, description="Judge the whole response, <think> block included (R1 judges "
                                    "harmlessness so); false: only the text after </think> (R1's helpfulness view, "
                                    "the summary).")
    domains: list[str] = Field(default_factory=lambda: ["general"], min_length=1, description=(
        "Row domains the judge scores (the row's domain column, else its answer_type); other rows get None "
        "(not applicable) and no request."))
    max_tokens: int = Field(256, ge=1, description="Tokens of the judge's reply.")
    temperature: float = Field(0.0, ge=0, description="The judge's sampling temperature (0: its most likely verdict).")
    seed: int = Field(0, description="Sampling seed sent with each request (servers that honour it repeat verdicts).")
    extra_body: dict[str, Any] = Field(default_factory=dict, description=(
        "Server-specific request fields, sent as they are: e.g. llama.cpp's grammar "
        "{grammar: 'root ::= \"Score: \" ([0-9] | \"10\") \"/10\"'} or vLLM's structured outputs, so a "
        "small judge always ends in a parsable score."))


class RejectionSamplingConfig(_Stage):
    """Rejection sampling: a teacher samples k completions per problem; verified ones are kept.
    Output: a data set of SFT traces."""

    INPUTS: ClassVar[dict[str, str]] = {"data": "dataset", "teacher": "model"}
    OUTPUT: ClassVar[str] = "dataset"
    type: Literal["rejection_sampling"] = "rejection_sampling"
    data: str = Field("curate.output", description="Problems: <stage>.output of a curate stage.")
    teacher: str | None = Field("grpo.output", description="base, <stage>.output, or a model reference "
                                "(unset when ``endpoint`` is given).")
    endpoint: EndpointConfig | None = Field(None, description="Sample from an OpenAI-compatible endpoint instead.")
    engine: Engine = Field("auto", description=ENGINE_HELP + " Unused with an endpoint.")
    vllm: VLLMSettings = Field(default_factory=VLLMSettings, description="vLLM settings (engine vllm).")
    num_problems: int = Field(32, ge=1, description="Problems taken from the curated set.")
    num_samples: int = Field(4, ge=1, description="k: completions sampled per problem.")
    max_new_tokens: int = Field(192, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    prompt_template: Literal["r1_zero", "r1_eval"] = "r1_eval"
    prefill: str | None = None
    stop_strings: list[str] = Field(default_factory=list, description='End local teachers\' samples after these '
                                    'strings, e.g. ["</answer>"] for a GRPO policy trained with that stop string.')
    require_format: bool = Field(False, description="Keep only completions in the think/answer template.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Reject completions longer than this (tokens).")
    min_language_consistency: float | None = Field(
        0.9, ge=0, le=1, description="Reject chains of thought with a smaller share of words in the prompt's "
        "language (R1 section 2.3.3 filters language mixing); None: no filter.")
    language: Literal["en", "zh"] = Field("en", description="Language of the chains of thought to keep.")
    max_repetition: float | None = Field(
        0.5, ge=0, le=1, description="Reject responses whose share of repeated word 3-grams is above this "
        "(degenerate loops); None: no filter.")
    shard_size: int = Field(64, ge=1, description="Problems per shard of the resumable sample log.")
    keep: Literal["all_correct", "shortest_correct"] = "all_correct"
    fallback: Literal["none", "reference"] = Field(
        "none", description="reference: for problems where the teacher kept nothing, use the data set's "
        "worked solution (verified, formatted in the template, labelled origin=reference).")
    batch_size: int = Field(64, ge=1, description="Sequences decoded together.")

    @model_validator(mode="before")
    @classmethod
    def _endpoint_replaces_teacher(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("endpoint") and "teacher" not in data:
            data = {**data, "teacher": None}
        return data

    @model_validator(mode="after")
    def _one_teacher(self):
        if (self.teacher is None) == (self.endpoint is None):
            raise ValueError("give exactly one of teacher (a model) and endpoint (an OpenAI-compatible server)")
        return self


class MixtureSource(_Section):
    """One source of an SFT mixture and its weight (:func:`r1core.sft.mixture_counts`)."""

    data: str = Field(description=(
        "<stage>.output (a rejection_sampling stage's traces, or a curate stage's problems with worked solutions), "
        "or a JSON-lines file of conversational rows: {\"prompt\": [messages], \"completion\": [assistant message]} "
        "(r1core.sft.read_conversational), e.g. recipes/data/general.jsonl."))
    weight: float = Field(gt=0, description="Share of the mixture (weights are normalised to proportions).")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$", description=(
        "Label in metrics (mixture/<name>/rows); default: the stage's name, or the file's stem."))

    @field_validator("data")
    @classmethod
    def _stage_or_file(cls, v: str) -> str:
        if not v.endswith((".output", ".jsonl")):
            raise ValueError(f"{v!r} is neither a stage output ('<stage>.output') nor a JSON-lines file ('*.jsonl')")
        return v

    @property
    def label(self) -> str:
        return self.name or (self.data.removesuffix(".output") if self.data.endswith(".output") else Path(self.data).stem)


class SFTStageConfig(_TrainingStage):
    """SFT (TRL's SFTTrainer) on traces: a rejection-sampling stage's output (distillation), or a
    curated set's worked solutions written as traces (R1's cold start, section 2.3.1), or a
    weighted ``mixture`` of several sources (R1 section 2.3.3: reasoning traces plus
    non-reasoning data). ``args`` go to ``SFTConfig`` as is. Output: the fine-tuned model."""

    INPUTS: ClassVar[dict[str, str]] = {"data": "dataset", "student": "model"}
    OUTPUT: ClassVar[str] = "model"
    type: Literal["sft"] = "sft"
    data: str | None = Field("rejection_sampling.output", description="Traces, or curated problems with worked "
                             "solutions (None when mixture is given).")
    mixture: list[MixtureSource] | None = Field(None, min_length=1, description=(
        "Train on several sources drawn by weight instead of data, e.g. [{data: rejection_sampling.output, weight: "
        "0.75}, {data: recipes/data/general.jsonl, weight: 0.25}] (R1 section 2.3.3: ~600k reasoning + ~200k "
        "non-reasoning samples). Drawn with the recipe's seed; see mixture_size."))
    mixture_size: int | None = Field(None, ge=1, description=(
        "Rows drawn in all, split by the weights (a source with fewer rows than its share is repeated). None: the "
        "largest size no source has to repeat for (the scarcest source, relative to its weight, is used whole)."))
    student: str = Field("base", description="Model to fine-tune: base, <stage>.output, or a model reference.")
    prompt_template: Literal["r1_zero", "r1_eval"] = Field(
        "r1_zero", description="Template worked solutions are written in when ``data`` holds problems, not traces.")
    max_steps: int = Field(8, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    per_device_train_batch_size: int = Field(4, ge=1)
    max_length: int = Field(512, ge=16, description="Tokens per training sequence.")
    packing: bool = Field(False, description="Pack several traces into each training sequence (TRL's packing).")
    args: dict[str, Any] = Field(default_factory=dict, description="Extra trl.SFTConfig fields.")

    @model_validator(mode="before")
    @classmethod
    def _mixture_replaces_data(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mixture") and "data" not in data:
            data = {**data, "data": None}
        return data

    @model_validator(mode="after")
    def _one_data_source(self):
        if (self.data is None) == (self.mixture is None):
            raise ValueError("give data (one data set) or mixture (several, with weights), not both and not neither; "
                             "to keep data in the mix, list it as a mixture source")
        if self.mixture_size is not None and self.mixture is None:
            raise ValueError("mixture_size sizes a mixture: give mixture too, or drop mixture_size")
        labels = [m.label for m in self.mixture or []]
        if len(set(labels)) != len(labels):
            raise ValueError(f"mixture sources share a label ({', '.join(labels)}): give each a distinct name")
        return self

    def input_refs(self) -> dict[str, tuple[str, str]]:
        """``data`` and ``student``, and every mixture source that is a stage output, under the key
        ``mixture.<i>.data`` (files are not graph inputs: :func:`r1core.stages.pipeline.validate` checks them)."""
        refs = super().input_refs()
        for i, source in enumerate(self.mixture or []):
            if source.data.endswith(".output"):
                refs[f"mixture.{i}.data"] = (source.data, "dataset")
        return refs


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


class TipConfig(_Section):
    """TIP, decoding with a thought switching penalty (Wang et al. 2025, arXiv:2501.18585, section 3.1;
    r1core.tip): the switch tokens' logits are lowered by ``alpha`` for the first ``beta`` tokens of
    each thought. Engines cpu, hf and vllm apply it; an endpoint cannot."""

    alpha: float = Field(3.0, ge=0, description="Penalty strength, in logit units (the paper: 3; 0: off).")
    beta: int = Field(600, ge=0, description="Penalty duration: tokens from the start of each thought (the paper: 600).")
    words: list[str] = Field(default_factory=lambda: ["alternatively"], min_length=1, description=(
        "Switch words; the first token of each spelling (word, Word, ' word', ' Word') is penalised."))

    def sampling_kwargs(self) -> dict:
        """The ``r1core.generation.SamplingParams`` fields these settings set."""
        return {"tip_alpha": self.alpha, "tip_beta": self.beta, "tip_words": tuple(self.words)}


class EvaluateConfig(_Stage):
    """Evaluation with R1's protocol: k samples at T=0.6, top-p 0.95; pass@1 averaged over k.
    Output: the metrics."""

    INPUTS: ClassVar[dict[str, str]] = {"model": "model", "heldout": "dataset"}
    OUTPUT: ClassVar[str] = "evaluation"
    type: Literal["evaluate"] = "evaluate"
    model: str = Field("sft.output", description="Model to evaluate: base, <stage>.output, or a model reference.")
    heldout: str | None = Field(None, description="Also evaluate on the held-out problems of this curate stage "
                                "(<stage>.output of a curate stage with procedural tasks), as benchmark 'heldout'.")
    benchmarks: list[str] = Field(default_factory=lambda: ["math500", "aime24"])
    limit: int | None = Field(8, ge=1, description="First N problems of each catalog benchmark (None: all; "
                              "the held-out set is sized by its curate stage).")
    num_samples: int = Field(2, ge=1, description="k samples per problem.")
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    prompt_template: Literal["r1_zero", "r1_eval"] = "r1_eval"
    stop_strings: list[str] = Field(default_factory=list, description='End samples after these strings, e.g. '
                                    '["</answer>"] for a policy GRPO trained with that stop string.')
    batch_size: int = Field(64, ge=1, description="Sequences decoded together.")
    engine: Engine = Field("auto", description=ENGINE_HELP)
    vllm: VLLMSettings = Field(default_factory=VLLMSettings, description="vLLM settings (engine vllm).")
    budget_forcing: BudgetForcingConfig | None = Field(
        None, description="Also sweep s1 budget forcing over thinking budgets (accuracy-vs-budget table and plot).")
    tip: TipConfig | None = Field(None, description=(
        "Sample with TIP, the thought switching penalty (e.g. {alpha: 3, beta: 600}); none: plain sampling."))


class RegisterConfig(_Stage):
    """Registry: the model becomes a model version; ``challenger`` always, ``champion`` by the gate."""

    INPUTS: ClassVar[dict[str, str]] = {"model": "model", "evaluation": "evaluation"}
    OUTPUT: ClassVar[str] = "registration"
    type: Literal["register"] = "register"
    model: str = Field("sft.output", description="Model to register: <stage>.output, or a model reference.")
    evaluation: str = Field("evaluate.output", description="Evaluate stage whose metrics the gate reads.")

    model_name: str = Field("r1-student", description="Registered model name.")
    gate_metric: str = Field("math500/pass@1", description="Metric the champion gate compares.")
    min_margin: float = Field(0.0, description="Challenger must beat the champion by more than this.")
    guard_benchmarks: list[str] = Field(default_factory=list, description=(
        "Benchmarks (e.g. aime24) whose pass@1 must not drop beyond two standard errors for champion to move "
        "(r1core.promote; the promote flow uses the same list)."))


class CompareConfig(_Stage):
    """Distillation report (DeepSeek-R1 Table 5, section 4): ``student``, ``teacher`` and ``base``
    evaluated with one protocol (an evaluate stage's settings) on the same problems, side by side,
    with the share of the teacher's gain the student recovered and an n-gram overlap check of the
    student's SFT traces against each benchmark (r1core.distill_report). Output: the report."""

    INPUTS: ClassVar[dict[str, str]] = {"student": "model", "teacher": "model", "base": "model",
                                        "traces": "dataset", "registration": "registration"}
    OUTPUT: ClassVar[str] = "report"
    type: Literal["compare"] = "compare"
    student: str = Field("sft.output", description="The distilled model: <stage>.output, or a model reference.")
    teacher: str = Field(description="The model whose traces the student learnt from: a model reference or "
                         "<stage>.output (an endpoint teacher cannot be evaluated here).")
    base: str = Field("base", description="The student before distillation: base, <stage>.output, or a model reference.")
    traces: str | None = Field(None, description=(
        "The SFT traces checked for benchmark text: <stage>.output. None: the set the student was trained on "
        "(its LoggedModel's r1.traces tag); unknown for a model this project did not train (not checked)."))
    protocol: str | None = Field(None, description=(
        "The evaluate stage whose settings (benchmarks, limit, k, sampling, template, engine) all three models are "
        "evaluated with. None: the stage named evaluate, else the recipe's last evaluate stage, else its defaults."))
    overrides: dict[str, Any] = Field(default_factory=dict, description=(
        "Evaluate settings that replace the protocol's, e.g. {limit: 50, num_samples: 4}."))
    ngram: int = Field(13, ge=1, description=(
        "Overlap n-gram size, in words (GPT-3, Brown et al. 2020 section 4: 13; a benchmark problem shorter than "
        "n words is matched whole)."))
    registration: str | None = Field(None, description=(
        "<stage>.output of the register stage that registers the student: its version is tagged "
        "r1.contamination.<bench> (the report then runs after it). None: the student's LoggedModel only."))

    @field_validator("overrides")
    @classmethod
    def _overrides_are_evaluate_settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        taken = sorted({"type", "model", "heldout"} & set(v))
        if taken:
            raise ValueError(f"{', '.join(taken)} cannot be overridden (the report sets the models itself)")
        try:
            EvaluateConfig.model_validate({"type": "evaluate", **v})
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: " + ("unknown key" if e["type"] == "extra_forbidden"
                                 else e["msg"]) for e in err.errors())
            raise ValueError(f"not evaluate settings: {problems}") from None
        return v


StageConfig = Annotated[
    Union[CurateConfig, GRPOStageConfig, RejectionSamplingConfig, SFTStageConfig, EvaluateConfig, RegisterConfig,
          CompareConfig],
    Field(discriminator="type"),
]
_STAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class Recipe(_Section):
    """One experiment: the base model, the seed, and the graph of stages (run in dependency order)."""

    name: str
    description: str = ""
    experiment: str | None = Field(None, description="MLflow experiment (default: r1-<name>).")
    model: str = Field("smollm2-135m-instruct", description="Base model reference (the input ``base``).")
    seed: int = 42
    concurrency: int = Field(1, ge=1, description="Stages run at once when the graph has independent ones "
                             "(1 on a small CPU; more where there are devices for them).")
    stages: dict[str, StageConfig] = Field(description="Stage name -> settings, with a ``type`` (default: the name).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not v.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError("use letters, digits, '-', '_' and '.'")
        return v

    @field_validator("stages")
    @classmethod
    def _stage_names(cls, v: dict) -> dict:
        if not v:
            raise ValueError("list at least one stage")
        for name in v:
            if name == "base" or not _STAGE_NAME.match(name):
                raise ValueError(f"stage name {name!r}: use a letter then letters, digits, '_' or '-' (not 'base')")
        return v

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"r1-{self.name}"

    def stages_of_type(self, type_: str) -> list[str]:
        """Names of the stages of one type, in recipe order."""
        return [n for n, s in self.stages.items() if s.type == type_]

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


def _override_path(data: dict, key: str) -> str:
    """``grpo.max_steps`` -> ``stages.grpo.max_steps`` when ``grpo`` names a stage, not a recipe key."""
    head = key.split(".", 1)[0]
    if head not in Recipe.model_fields and head in (data.get("stages") or {}):
        return f"stages.{key}"
    return key


def _default_types(data: dict, source: str) -> None:
    """Give each stage without a ``type`` its name as type (``grpo: {...}`` is a grpo stage)."""
    stages = data.get("stages")
    if not isinstance(stages, dict):
        return
    for name, section in list(stages.items()):
        section = {} if section is None else section
        if isinstance(section, dict) and "type" not in section:
            if name not in STAGE_TYPES:
                raise RecipeError(f"Recipe {source} is invalid:\n  stages.{name}: give the stage a type "
                                  f"(one of {', '.join(STAGE_TYPES)}), e.g. `type: sft`.")
            section = {"type": name, **section}
        stages[name] = section


def _format_validation(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        if len(loc) > 2 and loc[0] == "stages" and loc[2] in STAGE_TYPES:
            del loc[2]  # pydantic names the union member; the stage name says enough
        loc = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (check its spelling against recipes/quickstart.yaml)")
        else:
            lines.append(f"  {loc}: {e['msg']}")
    return f"Recipe {source} is invalid:\n" + "\n".join(lines)


def recipe_from_dict(data: dict, overrides: list[str] | None = None, source: str = "<dict>") -> Recipe:
    """Validate a recipe given as a dict, applying ``key=value`` overrides first.

    Raises:
        RecipeError: unknown keys, bad values or malformed overrides, each named by dotted path;
            a stage graph with an unknown stage, a cycle or an input of the wrong kind.
    """
    data = json.loads(json.dumps(data))  # deep copy
    for key, value in parse_overrides(overrides):
        _set_dotted(data, _override_path(data, key), value)
    _default_types(data, source)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_format_validation(err, source)) from None
    check_graph(recipe, source)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe YAML file (see :func:`recipe_from_dict`).

    Raises:
        RecipeError: the file is missing or not a mapping, or the recipe is invalid.
    """
    path = Path(path)
    if not path.is_file():
        shipped = sorted(p.name for p in Path("recipes").glob("*.yaml")) if Path("recipes").is_dir() else []
        raise RecipeError(f"Recipe file {path} not found." + (f" Shipped recipes: {', '.join(shipped)}." if shipped else ""))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{where}: YAML syntax error: {what}.") from None
    if not isinstance(data, dict):
        raise RecipeError(f"Recipe {path} must be a YAML mapping of keys to values.")
    data.setdefault("name", path.stem)
    return recipe_from_dict(data, overrides, source=str(path))


def evaluation_recipe(recipe: Recipe, model: str, stage: str | None = None,
                      settings: dict[str, Any] | None = None) -> tuple[Recipe, str]:
    """A one-stage recipe that evaluates ``model`` with ``recipe``'s evaluation protocol.

    The protocol is stage ``stage``'s, else the stage named ``evaluate``, else the recipe's last
    evaluate stage, else the defaults; ``settings`` (e.g. ``{"limit": 50}``) override its keys
    (``budget_forcing`` is merged key by key). Returns ``(recipe, stage name)``.

    Raises:
        RecipeError: ``stage`` is not an evaluate stage of the recipe, or a setting is invalid.
    """
    evals = recipe.stages_of_type("evaluate")
    if stage is not None and stage not in evals:
        raise RecipeError(f"{stage!r} is not an evaluate stage of recipe {recipe.name} (its evaluate stages: "
                          f"{', '.join(evals) or 'none'}).")
    name = stage or ("evaluate" if "evaluate" in evals else (evals[-1] if evals else "evaluate"))
    section = recipe.stages[name].model_dump(mode="json") if name in recipe.stages else {"type": "evaluate"}
    settings = dict(settings or {})
    if "budget_forcing" in settings:
        settings["budget_forcing"] = {**(section.get("budget_forcing") or {}), **settings["budget_forcing"]}
    data = recipe.model_dump(mode="json")
    section.pop("heldout", None)  # another stage's output: not part of a one-stage evaluation
    data["stages"] = {name: {**section, **settings, "model": model}}
    return recipe_from_dict(data, source=f"{recipe.name} (evaluation of {model})"), name


def check_args(config_cls, section: str, args: dict[str, Any]) -> None:
    """Check a stage's ``args`` keys against the TRL config class they will build (``GRPOConfig``,
    ``SFTConfig``, or a subclass), before any work.

    Raises:
        ValueError: a key the class does not have, named with its closest field and the fix.
    """
    import difflib

    fields = set(config_cls.__dataclass_fields__)
    unknown = sorted(set(args) - fields)
    if unknown:
        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, fields, n=1)) else k
                 for k in unknown]
        trl_cls = next((c for c in config_cls.__mro__ if c.__module__.startswith("trl.")), config_cls)
        raise ValueError(f"{section}.args has keys {config_cls.__name__} does not know: {', '.join(hints)}. "
                         f"Check the spelling against TRL's {trl_cls.__name__} documentation.")


def trl_config(config_cls, section: str, defaults: dict[str, Any], extra: dict[str, Any], *,
               output_dir: str, seed: int, use_cpu: bool):
    """Build a TRL config (``GRPOConfig``, ``SFTConfig``): common training defaults, then a
    stage's ``defaults``, then the recipe's ``<section>.args`` (which win).

    Common defaults: log every step to MLflow, no intermediate checkpoints, fp32 on the CPU, no
    gradient checkpointing (TRL enables it; for small models it only costs recompute).

    Raises:
        ValueError: an ``args`` key the config class does not have, named with the fix.
    """
    check_args(config_cls, section, extra)
    common = dict(output_dir=output_dir, seed=seed, use_cpu=use_cpu, logging_steps=1, save_strategy="no",
                  report_to=["mlflow"], bf16=False, gradient_checkpointing=False, dataloader_num_workers=0)
    return config_cls(**{**common, **defaults, **extra})
