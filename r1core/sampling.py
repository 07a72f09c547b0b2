"""One sampler behind every stage that generates: rejection sampling, evaluation (and evaluation
during GRPO), curation's pass rate and budget forcing. GRPO's own rollouts take the same
``engine`` names (:func:`r1core.grpo.grpo_args`: ``vllm`` is TRL's vLLM path there).

A :class:`Sampler` turns problems into ``k`` completions each. Backends (a recipe's ``engine``):

- ``cpu``: the project's decoding engine (:mod:`r1core.cpu_engine`, through
  :func:`r1core.generation.generate`): the fast path on a CPU, and a portable one elsewhere;
- ``hf``: transformers ``generate`` in this process;
- ``vllm``: vLLM's offline engine (``pip install '.[vllm]'``; CUDA), with its memory settings
  from the stage's ``vllm`` section;
- ``endpoint``: any OpenAI-compatible chat-completions server (vLLM's, llama.cpp's, DeepSeek's),
  through the ``openai`` client (retries with backoff, a key read from an environment variable).
- ``auto``: ``vllm`` on CUDA when vLLM is installed, else ``cpu``.

TIP, the thought switching penalty (:mod:`r1core.tip`, ``SamplingParams.tip_alpha``), is applied by
``cpu``, ``hf`` and ``vllm`` (each where it processes logits); an endpoint refuses it.

The field's designs are alike (verl's ``BaseRollout`` with vLLM and HF rollouts; TRL's
``use_vllm``): one interface, the engine a setting. Local samplers (``cpu``, ``hf``, ``vllm``) also
:meth:`LocalSampler.complete` rendered prompts, which budget forcing needs (it continues a
sample's own text); an endpoint only answers chat messages.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

from r1core.generation import SamplingParams

logger = logging.getLogger(__name__)

#: A recipe's ``engine`` values.
ENGINES = ("auto", "cpu", "hf", "vllm", "endpoint")


@dataclass(frozen=True)
class Completion:
    """One sampled completion.

    Attributes:
        text: the assistant turn after the prompt (special tokens removed; a ``<think>`` prefill is
            not repeated here, and an endpoint's ``reasoning_content`` is folded in as the
            ``<think>`` block).
        num_tokens: its length in tokens (EOS included where it ended on EOS).
        truncated: it hit ``max_new_tokens`` without ending.
        token_ids: its token ids where the backend returns them (``()`` for endpoints).
    """

    text: str
    num_tokens: int
    truncated: bool
    token_ids: tuple[int, ...] = ()


class EndpointError(RuntimeError):
    """The endpoint failed after the client's retries; what was sampled before is kept."""


def vllm_available() -> bool:
    """Whether vLLM can be used here: a CUDA device and the ``vllm`` package installed."""
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def resolve_engine(engine: str) -> str:
    """The backend ``engine`` names here: ``auto`` becomes ``vllm`` (CUDA with vLLM installed) or ``cpu``.

    Raises:
        ValueError: an unknown engine, or ``vllm`` where vLLM cannot run (with the fix).
    """
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}; use one of {list(ENGINES)}.")
    if engine == "auto":
        return "vllm" if vllm_available() else "cpu"
    if engine == "vllm" and not vllm_available():
        raise ValueError("engine: vllm needs a CUDA device and the vllm package (pip install '.[vllm]'); "
                         "use engine: cpu (the project's engine) or hf on this machine.")
    return engine


class Sampler:
    """Problems in, ``k`` completions per problem out (see the module docstring).

    Attributes:
        id: the lineage name of what samples: a model URI / reference, or ``<base_url>#<model>``.
        on_batch: optional progress callback ``(done, total, tokens_per_s)``, called per batch.
    """

    id: str = ""
    on_batch: Callable[[int, int, float], None] | None = None

    def sample(self, problems: list[str], k: int, params: SamplingParams) -> Iterator[tuple[int, list[Completion]]]:
        """Yield ``(i, completions)`` for each ``problems[i]`` as it finishes (any order): ``k``
        completions sampled with ``params``."""
        raise NotImplementedError

    def sample_all(self, problems: list[str], k: int, params: SamplingParams) -> list[list[Completion]]:
        """:meth:`sample`, collected in problem order."""
        out: list[list[Completion]] = [[] for _ in problems]
        for i, completions in self.sample(problems, k, params):
            out[i] = completions
        return out

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the sampler's tokenizer."""
        raise NotImplementedError


class LocalSampler(Sampler):
    """A model this process runs. Problems are rendered with the tokenizer's chat template, the
    ``template`` (``r1_zero``, ``r1_eval``) and ``prefill`` (:func:`r1core.prompts.render`);
    ``batch_size`` sequences are decoded together; ``stop_strings`` end a completion (kept in it).

    Seeds: the ``k`` completions of problem ``i`` are drawn with ``params.seed + i`` mixed in per
    batch of problems, so the same call samples the same completions.
    """

    def __init__(self, model, tokenizer, ref: str, *, template: str = "r1_eval", prefill: str | None = None,
                 stop_strings: list[str] | None = None, batch_size: int = 64):
        self.model, self.tokenizer, self.id = model, tokenizer, ref
        self.template, self.prefill, self.batch_size = template, prefill, batch_size
        self.stop_strings = list(stop_strings or [])
        self.on_batch = None

    def render(self, problem: str) -> str:
        """The prompt text for ``problem`` (chat template, template, prefill)."""
        from r1core.prompts import render

        return render(self.tokenizer, problem, self.template, self.prefill)

    def complete(self, prompts: list[str], params: SamplingParams, *,
                 stop_strings: list[str] | None = None) -> list[Completion]:
        """One completion per rendered prompt (repeat a prompt for more), in input order.
        ``stop_strings`` (default: the sampler's) end a completion."""
        raise NotImplementedError

    def sample(self, problems: list[str], k: int, params: SamplingParams) -> Iterator[tuple[int, list[Completion]]]:
        from r1core.prompts import response_text

        per_call = max(1, self.batch_size // k)  # problems per generation batch
        for start in range(0, len(problems), per_call):
            chunk = problems[start : start + per_call]
            prompts = [self.render(p) for p in chunk for _ in range(k)]
            outs = self.complete(prompts, replace(params, seed=params.seed + start))
            for j in range(len(chunk)):
                yield start + j, [replace(o, text=response_text(prompts[j * k + s], o.text))
                                  for s, o in enumerate(outs[j * k : (j + 1) * k])]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class EngineSampler(LocalSampler):
    """``cpu`` (the project's engine) or ``hf`` (transformers ``generate``), through
    :func:`r1core.generation.generate` on the model in this process."""

    def __init__(self, model, tokenizer, ref: str, *, engine: str = "cpu", **kwargs):
        super().__init__(model, tokenizer, ref, **kwargs)
        if engine not in ("cpu", "hf"):
            raise ValueError(f"EngineSampler runs engine cpu or hf, not {engine!r}.")
        self.engine = engine

    def complete(self, prompts: list[str], params: SamplingParams, *,
                 stop_strings: list[str] | None = None) -> list[Completion]:
        from r1core.generation import generate

        stops = self.stop_strings if stop_strings is None else stop_strings
        outs = generate(self.model, self.tokenizer, prompts, params, batch_size=self.batch_size,
                        on_batch=self.on_batch, stop_strings=stops or None,
                        engine="r1" if self.engine == "cpu" else "hf")
        return [Completion(o.text, o.num_tokens, o.truncated) for o in outs]


class VLLMSampler(LocalSampler):
    """vLLM's offline engine (``vllm.LLM``) over a local checkpoint or hub id: ``n=k`` samples per
    prompt, ``chunk`` problems per call. ``llm_kwargs`` are the stage's ``vllm`` settings
    (``gpu_memory_utilization``, ``max_model_len``, ``tensor_parallel_size``, ``dtype``...), passed
    to ``vllm.LLM`` as they are, plus TIP's logits processor (:mod:`r1core.tip_vllm`) where this
    vLLM has the interface; TIP is switched on per request by ``SamplingParams.tip_alpha``."""

    def __init__(self, path: str, ref: str, *, chunk: int = 512, llm_kwargs: dict | None = None, **kwargs):
        from transformers import AutoTokenizer
        from vllm import LLM

        super().__init__(None, AutoTokenizer.from_pretrained(path), ref, **kwargs)
        llm_kwargs = dict(llm_kwargs or {})
        try:  # TIP (r1core.tip) through vLLM's logits-processor interface, where this vLLM has it
            from r1core.tip_vllm import ThoughtSwitchPenalty

            llm_kwargs.setdefault("logits_processors", [ThoughtSwitchPenalty])
            self._tip_ready = True
        except ImportError:
            self._tip_ready = False
        self.llm, self.chunk = LLM(model=path, seed=0, **llm_kwargs), chunk

    def _params(self, n: int, params: SamplingParams, seed: int, stop_strings):
        from vllm import SamplingParams as VParams

        from r1core.tip import resolve

        extra = {}
        tip = resolve(params, self.tokenizer)
        if tip is not None:
            if not self._tip_ready:
                raise ValueError("TIP (tip_alpha > 0) needs vLLM's V1 logits-processor interface "
                                 "(vllm.v1.sample.logits_processor), which this vLLM lacks; use engine cpu or hf, "
                                 "or a newer vLLM.")
            from r1core.tip_vllm import extra_args

            extra = {"extra_args": extra_args(tip)}  # only then: older vLLMs have no extra_args
        return VParams(n=n, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1,
                       min_p=params.min_p, repetition_penalty=params.repetition_penalty,
                       max_tokens=params.max_new_tokens, seed=seed, stop=stop_strings or None,
                       include_stop_str_in_output=True, **extra)

    def complete(self, prompts: list[str], params: SamplingParams, *,
                 stop_strings: list[str] | None = None) -> list[Completion]:
        stops = self.stop_strings if stop_strings is None else stop_strings
        outs = self.llm.generate(prompts, self._params(1, params, params.seed, stops), use_tqdm=False)
        return [_vllm_completion(o.outputs[0]) for o in outs]

    def sample(self, problems: list[str], k: int, params: SamplingParams) -> Iterator[tuple[int, list[Completion]]]:
        from r1core.prompts import response_text

        for start in range(0, len(problems), self.chunk):
            prompts = [self.render(p) for p in problems[start : start + self.chunk]]
            vp = self._params(k, params, params.seed + start, self.stop_strings)
            for j, out in enumerate(self.llm.generate(prompts, vp, use_tqdm=False)):
                yield start + j, [replace(_vllm_completion(c), text=response_text(prompts[j], c.text))
                                  for c in out.outputs]


def _vllm_completion(c) -> Completion:
    return Completion(c.text, len(c.token_ids), c.finish_reason == "length", tuple(c.token_ids))


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


def endpoint_client(base_url: str, *, api_key_env: str | None = None, timeout_s: float = 600.0,
                    max_retries: int = 5):
    """The ``openai`` client for an OpenAI-compatible endpoint: the teachers' sampler and the LLM judge
    (:mod:`r1core.judge`) share it. The client retries 408/409/429/5xx and connection errors
    ``max_retries`` times with exponential backoff; each request times out after ``timeout_s``
    seconds. The API key is read from the environment variable ``api_key_env`` (``None``: no key)
    and is never logged.

    Raises:
        ValueError: ``api_key_env`` names a variable that is not set (before any request).
    """
    import openai

    key = "EMPTY"
    if api_key_env:
        key = os.environ.get(api_key_env) or ""
        if not key:
            raise ValueError(f"The endpoint's API key is read from ${api_key_env}, which is not set. "
                             f"export {api_key_env}=... (the key is never logged), or remove api_key_env.")
    return openai.OpenAI(base_url=base_url.rstrip("/"), api_key=key, timeout=timeout_s, max_retries=max_retries)


class EndpointSampler(Sampler):
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
        self.base_url, self.model, self.template, self.use_n = base_url.rstrip("/"), model, template, use_n
        self.id = f"{self.base_url}#{model}"
        self.max_concurrency, self.tokenizer = max_concurrency, tokenizer
        self.client = endpoint_client(self.base_url, api_key_env=api_key_env, timeout_s=timeout_s,
                                      max_retries=max_retries)

    def _request(self, problem: str, n: int, params: SamplingParams, seed: int) -> list[Completion]:
        import openai

        from r1core.prompts import messages

        try:
            resp = self.client.chat.completions.create(
                model=self.model, messages=messages(problem, self.template), n=n, temperature=params.temperature,
                top_p=params.top_p, max_tokens=params.max_new_tokens, seed=seed)
        except openai.APIError as err:
            raise EndpointError(f"endpoint {self.base_url} (model {self.model}) failed after retries: {err}. "
                                "Samples finished before this are saved; re-run the stage to resume.") from err
        used = (resp.usage.completion_tokens if resp.usage else 0) or 0
        out = []
        for choice in resp.choices:
            msg = choice.message
            extra = getattr(msg, "model_extra", None) or {}
            reasoning = getattr(msg, "reasoning_content", None) or extra.get("reasoning_content") or extra.get("reasoning")
            out.append(Completion(fold_reasoning(msg.content, reasoning), used // max(len(resp.choices), 1),
                                  choice.finish_reason == "length"))
        return out

    def _problem(self, problem: str, k: int, params: SamplingParams, seed: int) -> list[Completion]:
        samples = self._request(problem, k if self.use_n else 1, params, seed)
        while len(samples) < k:  # the server ignored n (many hosted APIs): ask one at a time
            samples += self._request(problem, 1, params, seed + len(samples))
        return samples[:k]

    def sample(self, problems: list[str], k: int, params: SamplingParams) -> Iterator[tuple[int, list[Completion]]]:
        if params.tip_alpha > 0 and params.tip_beta > 0:
            raise ValueError("TIP (tip_alpha > 0) changes logits while decoding, which a chat-completions endpoint "
                             "does not expose; use engine cpu, hf or vllm, or set tip_alpha: 0.")
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


def build_sampler(engine: str, model_ref: str | None, *, template: str = "r1_eval", prefill: str | None = None,
                  stop_strings: list[str] | None = None, batch_size: int = 64, vllm: dict | None = None,
                  endpoint=None, tokenizer_ref: str | None = None) -> Sampler:
    """The sampler a stage's settings ask for.

    Args:
        engine: one of :data:`ENGINES` (``endpoint`` needs ``endpoint``).
        model_ref: the model to sample from (any reference :func:`r1core.models.resolve_model`
            takes); unused for ``endpoint``.
        template, prefill, stop_strings, batch_size: how problems are posed and decoded.
        vllm: ``vllm.LLM`` keyword arguments (the stage's ``vllm`` section).
        endpoint: a :class:`r1core.config.EndpointConfig`.
        tokenizer_ref: for ``endpoint``, a model whose tokenizer counts tokens (words are counted
            when it cannot be loaded).

    Raises:
        ValueError: an unknown engine, vLLM where it cannot run, ``endpoint`` without endpoint
            settings, or an endpoint's API key variable unset (before any request).
    """
    from r1core import models

    if engine == "endpoint" or endpoint is not None:
        if endpoint is None:
            raise ValueError("engine: endpoint needs an endpoint section (base_url, model).")
        tok = None
        if tokenizer_ref is not None:
            from transformers import AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(models.resolve_model(tokenizer_ref).path)
            except (OSError, ValueError):
                tok = None
        return EndpointSampler(endpoint.base_url, endpoint.model, template=template, api_key_env=endpoint.api_key_env,
                               max_concurrency=endpoint.max_concurrency, timeout_s=endpoint.timeout_s,
                               max_retries=endpoint.max_retries, use_n=endpoint.use_n, tokenizer=tok)
    backend = resolve_engine(engine)
    common = dict(template=template, prefill=prefill, stop_strings=stop_strings, batch_size=batch_size)
    if backend == "vllm":
        return VLLMSampler(models.resolve_model(model_ref).path, model_ref or "", llm_kwargs=vllm, **common)
    model, tok = models.load_model_and_tokenizer(model_ref, for_inference=True)
    return EngineSampler(model, tok, model_ref or "", engine=backend, **common)
