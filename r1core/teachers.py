"""Teachers for rejection sampling and distillation, behind one interface.

DeepSeek-R1 (arXiv:2501.12948, sections 2.3.3 and 2.4) makes its SFT data by sampling a strong
model's reasoning and keeping what verifies. The teacher is rarely in the same process, so a
:class:`Teacher` is anything that turns problems into ``k`` sampled responses each:

- :class:`LocalTeacher`: a transformers model in this process (batched ``generate``);
- :class:`VLLMTeacher`: vLLM's offline engine (CUDA with ``vllm`` installed);
- :class:`EndpointTeacher`: any OpenAI-compatible chat-completions server (vLLM's, llama.cpp's,
  DeepSeek's or another hosted API), through the official ``openai`` client, which retries
  408/409/429/5xx and connection errors with exponential backoff (honouring ``Retry-After``).

:meth:`Teacher.sample` yields ``(index, samples)`` as each problem finishes, so the caller can
write results as they come (see :func:`r1core.rejection.sample_with_resume`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol

from r1core.generation import SamplingParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherSample:
    """One sampled response: ``text`` is the whole assistant turn (``<think>`` block included,
    prefill or ``reasoning_content`` folded in), ``num_tokens`` its length in the teacher's
    tokens, ``truncated`` whether it hit the token cap."""

    text: str
    num_tokens: int
    truncated: bool


class EndpointError(RuntimeError):
    """The endpoint failed after the client's retries; what was sampled before is kept."""


class Teacher(Protocol):
    """What rejection sampling needs from a teacher.

    Attributes:
        id: the teacher's lineage name: a model URI / reference, or ``<base_url>#<model>``.
    """

    id: str

    def sample(self, problems: list[str], k: int, params: SamplingParams) -> Iterator[tuple[int, list[TeacherSample]]]:
        """Yield ``(i, samples)`` for each problem ``problems[i]`` as it finishes (any order),
        ``samples`` being ``k`` responses sampled with ``params``."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` (for worked-solution traces and length caps)."""
        ...


class LocalTeacher:
    """A transformers model in this process; prompts rendered with its chat template and the
    recipe's ``prompt_template`` and ``prefill``; ``batch_size`` sequences per ``generate`` call."""

    def __init__(self, model, tokenizer, ref: str, *, template: str, prefill: str | None, batch_size: int = 64,
                 stop_strings: list[str] | None = None):
        self.model, self.tokenizer, self.id = model, tokenizer, ref
        self.template, self.prefill, self.batch_size = template, prefill, batch_size
        self.stop_strings = list(stop_strings or [])
        self.on_batch = None  # progress callback (done, total, tokens_per_s) per generate batch

    def sample(self, problems: list[str], k: int, params: SamplingParams) -> Iterator[tuple[int, list[TeacherSample]]]:
        from r1core.generation import generate
        from r1core.prompts import render, response_text

        per_call = max(1, self.batch_size // k)  # problems per generation batch
        for start in range(0, len(problems), per_call):
            chunk = problems[start : start + per_call]
            prompts = [render(self.tokenizer, p, self.template, self.prefill) for p in chunk for _ in range(k)]
            outs = generate(self.model, self.tokenizer, prompts, SamplingParams(
                params.max_new_tokens, params.temperature, params.top_p, params.seed + start),
                batch_size=self.batch_size, on_batch=self.on_batch, stop_strings=self.stop_strings or None)
            for j in range(len(chunk)):
                yield start + j, [TeacherSample(response_text(prompts[j * k + s], o.text), o.num_tokens, o.truncated)
                                  for s, o in enumerate(outs[j * k : (j + 1) * k])]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class VLLMTeacher:
    """vLLM's offline engine (``vllm.LLM``) over a local checkpoint or hub id; ``n=k`` samples per
    prompt in one call per ``chunk`` problems. Only on CUDA with ``vllm`` installed."""

    def __init__(self, path: str, ref: str, *, template: str, prefill: str | None, chunk: int = 512,
                 stop_strings: list[str] | None = None):
        from transformers import AutoTokenizer
        from vllm import LLM

        self.llm, self.tokenizer, self.id = LLM(model=path), AutoTokenizer.from_pretrained(path), ref
        self.template, self.prefill, self.chunk = template, prefill, chunk
        self.stop_strings = list(stop_strings or [])

    def sample(self, problems: list[str], k: int, params: SamplingParams) -> Iterator[tuple[int, list[TeacherSample]]]:
        from vllm import SamplingParams as VParams

        from r1core.prompts import render, response_text

        for start in range(0, len(problems), self.chunk):
            prompts = [render(self.tokenizer, p, self.template, self.prefill) for p in problems[start : start + self.chunk]]
            vp = VParams(n=k, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
                         seed=params.seed + start, stop=self.stop_strings or None,
                         include_stop_str_in_output=True)
            for j, out in enumerate(self.llm.generate(prompts, vp)):
                yield start + j, [TeacherSample(response_text(prompts[j], c.text), len(c.token_ids),
                                                c.finish_reason == "length") for c in out.outputs]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def fold_reasoning(content: str | None, reasoning: str | None) -> str:
    """One response from an endpoint's answer and its separate reasoning (``reasoning_content``,
    as DeepSeek's API and vLLM's reasoning parsers return it): the reasoning becomes the
    ``<think>`` block.

    >>> fold_reasoning("The answer is 4.", "2+2 is 4")
    '<think>\\n2+2 is 4\\n</think>\\nThe answer is 4.'
    >>> fold_reasoning("<think>x</think> 4", None)
    '<think>x</think> 4'
    """
    content = (content or "").strip()
    if reasoning and reasoning.strip():
        return f"<think>\n{reasoning.strip()}\n</think>\n{content}"
    return content


class EndpointTeacher:
    """An OpenAI-compatible chat-completions endpoint.

    Each problem is one request for ``n=k`` choices (when ``use_n``; servers that return fewer
    choices are asked again, one at a time, for the rest); up to ``max_concurrency`` requests are
    in flight. The API key is read from the environment variable ``api_key_env`` and is never
    logged. ``num_tokens`` is the server's ``usage.completion_tokens`` shared over the choices of
    a request (exact for ``n=1``); ``truncated`` is ``finish_reason == "length"``.

    Raises:
        ValueError: at construction, when ``api_key_env`` names a variable that is not set.
        EndpointError: from :meth:`sample`, when a request still fails after the client's retries.
    """

    def __init__(self, base_url: str, model: str, *, template: str, api_key_env: str | None = None,
                 max_concurrency: int = 8, timeout_s: float = 600.0, max_retries: int = 5, use_n: bool = True,
                 tokenizer=None):
        import openai

        key = "EMPTY"
        if api_key_env:
            key = os.environ.get(api_key_env) or ""
            if not key:
                raise ValueError(f"The teacher endpoint's API key is read from ${api_key_env}, which is not set. "
                                 f"export {api_key_env}=... (the key is never logged), or remove api_key_env.")
        self.base_url, self.model, self.template, self.use_n = base_url.rstrip("/"), model, template, use_n
        self.id = f"{self.base_url}#{model}"
        self.max_concurrency, self.tokenizer = max_concurrency, tokenizer
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=max_retries)

    def _request(self, problem: str, n: int, params: SamplingParams, seed: int) -> list[TeacherSample]:
        import openai

        from r1core.prompts import messages

        try:
            resp = self.client.chat.completions.create(
                model=self.model, messages=messages(problem, self.template), n=n, temperature=params.temperature,
                top_p=params.top_p, max_tokens=params.max_new_tokens, seed=seed)
        except openai.APIError as err:
            raise EndpointError(f"teacher endpoint {self.base_url} (model {self.model}) failed after retries: {err}. "
                                "Samples finished before this are saved; re-run the stage to resume.") from err
        used = (resp.usage.completion_tokens if resp.usage else 0) or 0
        out = []
        for choice in resp.choices:
            msg = choice.message
            extra = getattr(msg, "model_extra", None) or {}
            reasoning = getattr(msg, "reasoning_content", None) or extra.get("reasoning_content") or extra.get("reasoning")
            text = fold_reasoning(msg.content, reasoning)
            out.append(TeacherSample(text, used // max(len(resp.choices), 1), choice.finish_reason == "length"))
        return out

    def _problem(self, problem: str, k: int, params: SamplingParams, seed: int) -> list[TeacherSample]:
        samples = self._request(problem, k if self.use_n else 1, params, seed)
        while len(samples) < k:  # the server ignored n (many hosted APIs): ask one at a time
            samples += self._request(problem, 1, params, seed + len(samples))
        return samples[:k]

    def sample(self, problems: list[str], k: int, params: SamplingParams) -> Iterator[tuple[int, list[TeacherSample]]]:
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            pending = {pool.submit(self._problem, p, k, params, params.seed + i): i for i, p in enumerate(problems)}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        i = pending.pop(fut)
                        yield i, fut.result()
            finally:
                for fut in pending:
                    fut.cancel()

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return len(text.split())


def build_teacher(cfg, teacher_ref: str | None, *, base_model: str) -> Teacher:
    """The teacher a rejection-sampling stage's settings ``cfg`` ask for: its ``endpoint``; else
    ``teacher_ref`` on vLLM (``engine`` vllm, or auto on CUDA with vllm installed); else
    ``teacher_ref`` loaded with transformers in this process. ``base_model``'s tokenizer counts
    an endpoint's worked-solution tokens (None when it cannot be loaded: words are counted).

    Raises:
        ValueError: the endpoint's ``api_key_env`` is not set (before any request).
    """
    from r1core import models

    if cfg.endpoint is not None:
        from transformers import AutoTokenizer

        ep = cfg.endpoint
        try:
            tok = AutoTokenizer.from_pretrained(models.resolve_model(base_model).path)
        except (OSError, ValueError):
            tok = None
        return EndpointTeacher(ep.base_url, ep.model, template=cfg.prompt_template, api_key_env=ep.api_key_env,
                               max_concurrency=ep.max_concurrency, timeout_s=ep.timeout_s,
                               max_retries=ep.max_retries, use_n=ep.use_n, tokenizer=tok)
    from r1core.grpo import vllm_available

    if cfg.engine == "vllm" or (cfg.engine == "auto" and vllm_available()):
        return VLLMTeacher(models.resolve_model(teacher_ref).path, teacher_ref, template=cfg.prompt_template,
                           prefill=cfg.prefill, stop_strings=cfg.stop_strings)
    model, tok = models.load_model_and_tokenizer(teacher_ref, for_inference=True)
    return LocalTeacher(model, tok, teacher_ref, template=cfg.prompt_template, prefill=cfg.prefill,
                        batch_size=cfg.batch_size, stop_strings=cfg.stop_strings)
