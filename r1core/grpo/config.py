"""``R1GRPOConfig``: TRL's ``GRPOConfig`` plus the settings of :class:`r1core.grpo.R1GRPOTrainer`'s changes."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

GENERATION_ENGINES = ("r1", "hf")
SIGNAL_LANGUAGES = ("en", "zh")


@dataclass
class R1GRPOConfig(GRPOConfig):
    r"""
    Configuration class for :class:`r1core.grpo.R1GRPOTrainer`.

    Inherits every parameter of TRL's ``GRPOConfig``; adds only the settings of the trainer's
    changes (numbered as in the trainer's docstring), read by the trainer as ``self.args.<field>``.
    A recipe sets them through its ``grpo`` stage's own keys (:class:`r1core.config.GRPOStageConfig`),
    which :func:`r1core.grpo.grpo_args` copies here.

    Parameters:
        > Parameters of dynamic sampling (change 1)

        dynamic_sampling_rounds (`int`, *optional*, defaults to `0`):
            Extra generation rounds allowed per optimizer step to replace groups whose rewards are
            all equal (DAPO, arXiv:2503.14476, section 3.2). `0` turns dynamic sampling off.

        > Parameters of the MLflow completions table (change 2)

        completions_log_steps (`int`, *optional*, defaults to `1`):
            Log the sampled completions, each reward's score and the advantage as an MLflow table
            every this many optimizer steps. `0`: never.

        > Parameters of rollouts (changes 3 and 4)

        generation_engine (`str`, *optional*, defaults to `"r1"`):
            Rollouts without vLLM: `"r1"` (the project's decoding loop,
            :func:`r1core.generation.sample_token_ids`) or `"hf"` (TRL's transformers `generate`).
            A recipe's `engine: cpu` is `"r1"` here, `engine: vllm` is TRL's `use_vllm`.
        stop_strings (`list[str]`, *optional*, defaults to `[]`):
            End each completion after the first of these strings, with EOS (e.g. `["</answer>"]`).

        > Parameters of the self-evolution signals (change 7)

        reflection_markers (`list[str]` or `None`, *optional*, defaults to `None`):
            Phrases counted for `signals/reflection_rate` (`None`: :data:`r1core.signals.REFLECTION_MARKERS`).
        language (`str`, *optional*, defaults to `"en"`):
            Target language of `signals/language_consistency`: `"en"` or `"zh"`.
    """

    dynamic_sampling_rounds: int = field(
        default=0,
        metadata={
            "help": "Extra generation rounds allowed per optimizer step to replace groups whose rewards are all "
            "equal (DAPO dynamic sampling, arXiv:2503.14476, section 3.2). 0 turns dynamic sampling off."
        },
    )
    completions_log_steps: int = field(
        default=1,
        metadata={
            "help": "Log the sampled completions, each reward's score and the advantage as an MLflow table every "
            "this many optimizer steps. 0: never."
        },
    )
    generation_engine: str = field(
        default="r1",
        metadata={
            "help": "Rollouts without vLLM: 'r1' (the project's decoding loop, r1core.generation.sample_token_ids: "
            "each group's prompt pre-filled once) or 'hf' (TRL's transformers generate).",
            "choices": list(GENERATION_ENGINES),
        },
    )
    stop_strings: list[str] = field(
        default_factory=list,
        metadata={
            "help": "End each completion after the first of these strings, with EOS (e.g. ['</answer>']). On the "
            "vLLM path TRL's own `stop` sampling parameter applies instead."
        },
    )
    reflection_markers: list[str] | None = field(
        default=None,
        metadata={
            "help": "Phrases counted for signals/reflection_rate (case-insensitive, whole words). None: "
            "r1core.signals.REFLECTION_MARKERS."
        },
    )
    language: str = field(
        default="en",
        metadata={
            "help": "Target language of signals/language_consistency (DeepSeek-R1, section 2.3.3): 'en' or 'zh'.",
            "choices": list(SIGNAL_LANGUAGES),
        },
    )

    def __post_init__(self):
        if self.generation_engine not in GENERATION_ENGINES:
            raise ValueError(f"generation_engine must be 'r1' or 'hf', got {self.generation_engine!r}.")
        if self.language not in SIGNAL_LANGUAGES:
            raise ValueError(f"language must be one of {list(SIGNAL_LANGUAGES)}, got {self.language!r}.")
        if self.dynamic_sampling_rounds < 0 or self.completions_log_steps < 0:
            raise ValueError("dynamic_sampling_rounds and completions_log_steps must be >= 0 (0 turns each off); "
                             f"got {self.dynamic_sampling_rounds} and {self.completions_log_steps}.")
        self.stop_strings = list(self.stop_strings or [])
        super().__post_init__()


#: The fields :class:`R1GRPOConfig` adds to TRL's ``GRPOConfig``, in declaration order.
R1_FIELDS: tuple[str, ...] = tuple(name for name in R1GRPOConfig.__dataclass_fields__
                                   if name not in GRPOConfig.__dataclass_fields__)
