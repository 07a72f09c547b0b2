"""Prompts of the R1 recipe, rendered to plain text.

Prompts are rendered to text here (chat template applied, generation prompt added, optional
prefill appended), so that training, sampling and evaluation feed the model the identical
string and base models without a chat template work the same way.

Sources: the R1-Zero template is Table 1 of DeepSeek-R1 (arXiv:2501.12948); the evaluation
instruction is the one the R1 paper's evaluation uses for math ("Please reason step by step,
and put your final answer within \\boxed{}.").
"""

from __future__ import annotations

R1_ZERO_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>."
)
R1_EVAL_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
THINK_PREFILL = "<think>\n"

TEMPLATES = {"r1_zero", "r1_eval", "r1_code"}
#: The template a benchmark of code rows is posed with when a stage says ``r1_eval``: the problem
#: carries its own answer instruction (a fenced Python block), which the math instruction
#: ("... within \\boxed{}") would contradict.
CODE_TEMPLATE = "r1_code"


def template_for(template: str, answer_types) -> str:
    """The template for a set of rows: ``r1_eval`` becomes :data:`CODE_TEMPLATE` when every row is
    ``code``; otherwise ``template`` as given."""
    types = set(answer_types)
    return CODE_TEMPLATE if template == "r1_eval" and types == {"code"} else template


def messages(problem: str, template: str = "r1_zero") -> list[dict[str, str]]:
    """The chat messages (system/user) a problem is posed with under ``template``.

    Raises:
        ValueError: unknown template name.
    """
    if template not in TEMPLATES:
        raise ValueError(f"Unknown prompt template {template!r}; use one of {sorted(TEMPLATES)}.")
    if template == "r1_zero":
        return [{"role": "system", "content": R1_ZERO_SYSTEM}, {"role": "user", "content": problem}]
    if template == CODE_TEMPLATE:  # the problem says how to answer (see CODE_TEMPLATE)
        return [{"role": "user", "content": problem}]
    return [{"role": "user", "content": f"{problem}\n{R1_EVAL_INSTRUCTION}"}]


def render(tokenizer, problem: str, template: str = "r1_zero", prefill: str | None = None) -> str:
    """Render one problem to the exact prompt text the model sees.

    Args:
        tokenizer: a tokenizer; its chat template is used when it has one, else a plain-text
            form of the same messages (R1-Zero's "... User: {problem} Assistant:").
        problem: the problem statement.
        template: ``"r1_zero"`` (system prompt with the think/answer tag instructions),
            ``"r1_eval"`` (the problem followed by the R1 evaluation instruction) or ``"r1_code"``
            (the problem alone: code rows state their own answer format).
        prefill: text that starts the assistant's turn (e.g. ``"<think>\\n"``); ``None`` for none.

    Raises:
        ValueError: unknown template name.
    """
    msgs = messages(problem, template)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    else:
        text = " ".join(("User: " if m["role"] == "user" else "") + m["content"] for m in msgs) + " Assistant: "
    return text + (prefill or "")


def response_text(prompt: str, completion: str) -> str:
    """The assistant's whole response: the prefill the prompt ended with, plus the completion.

    A prompt rendered with ``prefill="<think>\\n"`` makes the model start inside the think block;
    format checks must see that opening tag, which is part of the prompt, not the completion.
    """
    if prompt.endswith(THINK_PREFILL) and not completion.lstrip().startswith("<think>"):
        return THINK_PREFILL + completion
    return completion
