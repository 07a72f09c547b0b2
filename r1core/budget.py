"""Budget forcing: test-time control of how long a model thinks (s1, Muennighoff et al. 2025,
"s1: Simple test-time scaling", arXiv:2501.19393, section 3.1).

- **Cap** (``max_thinking_tokens=N``): the thinking phase may use at most N tokens; a sample
  that has not closed its ``<think>`` block by then gets the end-of-thinking delimiter and
  ``"Final Answer:"`` appended, and the model writes its answer from there.
- **Extend** (``num_waits=M``): when a sample ends its thinking before the budget is spent, the
  delimiter is removed and ``"Wait"`` appended, up to M times, so the model keeps thinking.

Thinking starts from a ``<think>`` prefill, so models without a reasoning chat template are
measured the same way. How this differs from s1: s1 counts thinking tokens with the model's own
delimiters (``<|im_start|>think``); here the delimiter is ``</think>``, the R1 convention.
"""

from __future__ import annotations

from dataclasses import replace

from r1core.generation import SamplingParams
from r1core.sampling import Completion

END_THINK = "</think>"
THINK_OPEN = "<think>\n"
ANSWER_PREFIX = "\n\nFinal Answer: "


def budget_forced_generate(sampler, prompts: list[str], params: SamplingParams, *,
                           max_thinking_tokens: int, num_waits: int = 0, answer_tokens: int = 64) -> list[Completion]:
    """Generate with a thinking budget (see module docstring).

    Args:
        sampler: a :class:`r1core.sampling.LocalSampler` (it continues each sample's own text).
        prompts: rendered prompts (without the ``<think>`` prefill; it is added here).
        params: sampling settings (``max_new_tokens`` is replaced by the budgets below).
        max_thinking_tokens: the thinking budget N, in tokens.
        num_waits: how many times an early end of thinking is replaced by "Wait" (M).
        answer_tokens: tokens allowed for the answer after thinking ends.

    Returns:
        One :class:`r1core.sampling.Completion` per prompt: ``text`` is the thinking plus the answer (starting with the
        ``<think>`` prefill), ``num_tokens`` counts thinking and answer tokens, ``truncated`` is
        true when the answer phase hit ``answer_tokens``.

    Raises:
        ValueError: ``max_thinking_tokens < 1`` or ``num_waits < 0``.
    """
    if max_thinking_tokens < 1 or num_waits < 0:
        raise ValueError("budget forcing needs max_thinking_tokens >= 1 and num_waits >= 0.")
    n = len(prompts)
    thinking = [THINK_OPEN] * n
    used = [0] * n
    open_idx = list(range(n))  # samples still thinking
    for round_ in range(num_waits + 1):
        todo = [i for i in open_idx if used[i] < max_thinking_tokens]
        if not todo:
            break
        budget = max_thinking_tokens - min(used[i] for i in todo)
        outs = sampler.complete([prompts[i] + thinking[i] for i in todo],
                                replace(params, max_new_tokens=budget, seed=params.seed + 1000 * round_),
                                stop_strings=[END_THINK])
        still_open = []
        for i, out in zip(todo, outs):
            text, cost = out.text, out.num_tokens
            if used[i] + cost > max_thinking_tokens:  # shared budget per call: trim to this sample's rest
                cost = max_thinking_tokens - used[i]
                tok = sampler.tokenizer
                text = tok.decode(tok(text, add_special_tokens=False)["input_ids"][:cost])
            used[i] += cost
            if END_THINK in text:
                before = text.split(END_THINK, 1)[0]
                if round_ < num_waits:  # extend: suppress the end of thinking, append "Wait"
                    thinking[i] += before.rstrip() + " Wait,"
                    still_open.append(i)
                else:
                    thinking[i] += before
            else:
                thinking[i] += text
        open_idx = still_open
    answers = sampler.complete([p + t.rstrip() + "\n" + END_THINK + ANSWER_PREFIX for p, t in zip(prompts, thinking)],
                               replace(params, max_new_tokens=answer_tokens, seed=params.seed + 7919), stop_strings=[])
    return [Completion(text=t.rstrip() + "\n" + END_THINK + ANSWER_PREFIX + a.text, num_tokens=u + a.num_tokens,
                   truncated=a.truncated) for t, u, a in zip(thinking, used, answers)]
