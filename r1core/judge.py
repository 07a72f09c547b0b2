"""Model-based rewards for R1's final RL stage, and how they mix with the rule-based ones, row by row.

DeepSeek-R1 (arXiv:2501.12948) section 2.3.4, "Reinforcement Learning for all Scenarios", trains
the last RL stage on mixed prompts: rule-based rewards (section 2.2.2) where an answer can be
checked (math, code, logic), and reward models capturing human preferences (helpfulness judged on
the final summary, harmlessness on the whole response) for general prompts. In TRL's reward
signature (see :mod:`r1core.rewards`), this module gives GRPO (:mod:`r1core.grpo`) both kinds of
model-based reward:

- :class:`JudgeReward` (recipe name ``judge``): an LLM judge behind any OpenAI-compatible
  endpoint, the kind of model R1 calls a generative reward model (section 2.3.3, where
  DeepSeek-V3 judges). It reads a rubric (:data:`DEFAULT_RUBRIC`: helpfulness and harmlessness,
  0-10) and the prompt and response, and ends its reply with ``Score: N/10``, parsed by
  :func:`parse_score` to ``N/10``. The client is the teachers'
  (:func:`r1core.sampling.endpoint_client`: retries with backoff, a key read from an environment
  variable and never logged), ``max_concurrency`` requests in flight.
- :class:`RewardModelReward` (``reward_model``): a reward model, i.e. a sequence classifier with
  one output (``AutoModelForSequenceClassification``, ``num_labels=1``). TRL's ``GRPOTrainer`` loads
  and scores it itself (the logit of the last token of prompt + completion, as text); this class
  only names it, resolves its reference and says which rows it scores.

**The row field is ``domain``.** A row whose ``domain`` is ``general`` (:data:`GENERAL`) has no
checkable answer (a user's JSON-lines file marks such prompts with ``"domain": "general"``,
:func:`r1core.data.user_file_rows`). Every other row's domain is its ``domain`` when set, else its
``answer_type`` (``math`` when absent): :func:`row_domains`. :func:`r1core.grpo.build_prompt_dataset`
puts it in the column ``domain`` that TRL passes to every reward.

**Mixing** (change 8 of :class:`r1core.grpo.R1GRPOTrainer`, through :func:`route_by_domain`):

- a model-based reward scores the rows of its ``domains`` (default ``[general]``) and gives every
  other row ``None``, TRL's "not applicable" (the judge sends no request for them);
- a rule-based reward that needs the gold answer (one whose call takes ``answer``: ``accuracy``,
  ``length``, ``cosine``) gives general rows ``None`` and is not called for them (:class:`OnDomains`);
- the others (``format``, ``tag_count``, ``language_consistency``, ...) score every row.

TRL turns ``None`` into NaN and sums a row's weighted rewards with ``nansum``, so a general row's
reward is the judge's plus the format rewards', a math row's is accuracy plus format; a row every
reward skips gets advantage 0. Every completion of a GRPO group answers the same prompt, so a
group is one domain and its advantage compares like with like. The means TRL logs
(``rewards/<name>/mean``) are over the rows a reward applied to (NaN for a step with none).

**Failures are counted, never a silent 0**: a reply with no parsable score is ``None``, counted
as ``judge/unparsable``; a request that still fails after the client's retries is ``None``,
counted as ``judge/errors``; when every request of a call fails the endpoint is down and
:class:`r1core.sampling.EndpointError` stops the run (a run with ``save_steps`` resumes from its last
checkpoint). ``judge/requests`` counts what was asked.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: The ``domain`` of a row with no checkable answer (writing, open questions, advice...): the rule-based
#: rewards that need a gold answer do not apply to it; the model-based ones here do.
GENERAL = "general"

__all__ = ["DEFAULT_RUBRIC", "GENERAL", "JUDGE_PROMPT", "Judgement", "JudgeReward", "OnDomains", "RewardModelReward",
           "domains_of", "parse_score", "route_by_domain", "row_domains"]

#: The judge's default instructions (its system turn): R1's two criteria for general data (section 2.3.4).
DEFAULT_RUBRIC = (
    "You are an impartial judge of an AI assistant's response to a user's prompt. Rate the response on two "
    "criteria.\n"
    "- Helpfulness: it addresses the prompt correctly, completely and clearly, in the form asked for.\n"
    "- Harmlessness: it contains nothing dangerous, hateful, deceptive or otherwise harmful (declining a harmful "
    "request is harmless).\n"
    "A harmful response scores at most 2, however helpful. Give your reasons in at most three sentences, then end "
    "with a last line of exactly this form:\n"
    "Score: N/10\n"
    "where N is an integer from 0 (useless or harmful) to 10 (excellent and safe)."
)

#: The judge's user turn: the prompt the policy answered and its response.
JUDGE_PROMPT = "[User prompt]\n{prompt}\n\n[Assistant response]\n{response}"

# The last "score" followed (within a few characters, no digit or minus sign) by a number, and
# optionally "/ M" or "out of M". A linear scan: the gaps are bounded, nothing nests.
_SCORE = re.compile(r"\bscore\b[^0-9\n-]{0,16}?(\d{1,4}(?:\.\d{1,4})?)(?:\s*(?:/|out\s+of)\s*(\d{1,4}(?:\.\d{1,4})?))?",
                    re.IGNORECASE)


def parse_score(reply: str | None, scale: int = 10) -> float | None:
    """The judge's score in ``[0, 1]``: the last ``Score: N/M`` (or ``Score: N out of M``) of ``reply``
    as ``N / M``; a ``Score: N`` with no ``M`` as ``N / scale``. ``None`` when there is none, or when
    ``N`` is outside ``[0, M]`` (the judge did not follow its scale).

    >>> parse_score("Clear and correct.\\nScore: 7/10")
    0.7
    >>> parse_score("**Score**: 3 out of 5"), parse_score("Score: 8"), parse_score("Score: 12/10")
    (0.6, 0.8, None)
    >>> parse_score("A lovely haiku.") is None
    True
    """
    last = None
    for last in _SCORE.finditer(reply or ""):
        pass
    if last is None:
        return None
    value = float(last.group(1))
    top = float(last.group(2)) if last.group(2) else float(scale)
    if top <= 0 or not 0 <= value <= top:
        return None
    return value / top


def row_domains(n: int, domain: Sequence | None = None, answer_type: Sequence | None = None) -> list[str]:
    """Each of ``n`` rows' domain: its ``domain`` when set, else its ``answer_type``, else ``math``
    (the columns as TRL passes them, one entry per completion; ``None`` for a missing column).

    >>> row_domains(3, ["general", "", None], ["", "code", None])
    ['general', 'code', 'math']
    """
    out = []
    for i in range(n):
        d = str((domain[i] if domain is not None else "") or "").strip()
        t = str((answer_type[i] if answer_type is not None else "") or "").strip()
        out.append(d or t or "math")
    return out


def domains_of(rows) -> list[str]:
    """:func:`row_domains` of a DataFrame's rows (its ``domain`` and ``answer_type`` columns where present)."""
    n = len(rows)
    return row_domains(n, list(rows["domain"]) if "domain" in rows else None,
                       list(rows["answer_type"]) if "answer_type" in rows else None)


def _check_domains(domains, where: str) -> tuple[str, ...]:
    if isinstance(domains, str) or not domains or not all(isinstance(d, str) and d.strip() for d in domains):
        raise ValueError(f"reward_args.{where}.domains must be a non-empty list of row domains, e.g. [general]; "
                         f"got {domains!r}.")
    return tuple(d.strip() for d in domains)


def _prompt_text(prompt) -> str:
    """The user's turn of a TRL prompt: the last user message of a conversation, else the text itself."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return str(prompt)


def _response(prompt, completion) -> str:
    """The policy's whole response as text: a conversational completion's contents joined, after the
    ``<think>`` prefill its prompt ended with (:func:`r1core.prompts.response_text`)."""
    from r1core.prompts import response_text

    if isinstance(completion, list):
        completion = "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return response_text(prompt if isinstance(prompt, str) else "", str(completion))


def _summary(response: str) -> str:
    """The response after its chain of thought (the text after the last ``</think>``; all of it when there is none)."""
    head, sep, tail = response.rpartition("</think>")
    return tail.strip() if sep else response


@dataclass(frozen=True)
class Judgement:
    """One verdict of the judge.

    Attributes:
        score: the parsed score in ``[0, 1]``; ``None`` when the reply had none or the request failed.
        reply: the judge's reply (``""`` when the request failed).
        error: why the request failed after the client's retries (``None`` when it did not).
    """

    score: float | None
    reply: str
    error: str | None = None


class JudgeReward:
    """An LLM judge as a GRPO reward (R1 section 2.3.4's model-based reward, as a generative judge):
    ``score / scale`` from :func:`parse_score` of the judge's reply, range 0 to 1, for the rows of
    ``domains``; ``None`` for other rows and for unparsable replies (see the module docstring).

    The judge's system turn is ``rubric``; its user turn is :data:`JUDGE_PROMPT` with the row's
    ``problem`` (the prompt as posed, before the policy's chat template; the prompt's user turn when
    the data set has no ``problem`` column) and the policy's response (the ``<think>`` prefill
    included; only the text after ``</think>`` when ``include_reasoning`` is false). Requests are
    independent and run ``endpoint.max_concurrency`` at a time.

    Args:
        **settings: the fields of :class:`r1core.config.JudgeConfig` (a recipe's ``reward_args.judge``):
            ``endpoint`` (required: ``base_url``, ``model``, ``api_key_env``, ``max_concurrency``,
            ``timeout_s``, ``max_retries``), ``rubric``, ``scale``, ``include_reasoning``, ``domains``,
            ``max_tokens``, ``temperature``, ``seed``, ``extra_body``.

    Raises:
        ValueError: at construction, a setting that is missing, unknown or out of range (named by
            its ``reward_args.judge`` path), or ``endpoint.api_key_env`` naming an unset variable.
        r1core.sampling.EndpointError: from a call, when every one of its requests failed.
    """

    __name__ = "judge"

    def __init__(self, **settings):
        from pydantic import ValidationError

        from r1core.config import JudgeConfig

        try:
            cfg = JudgeConfig.model_validate(settings)
        except ValidationError as err:
            problems = "; ".join(
                f"reward_args.judge.{'.'.join(str(p) for p in e['loc'])}: "
                + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"]) for e in err.errors())
            raise ValueError(f"{problems}. The judge needs at least reward_args: {{judge: {{endpoint: "
                             "{base_url: http://127.0.0.1:8080/v1, model: <name>}}}; its keys are the fields of "
                             "r1core.config.JudgeConfig.") from None
        self.config = cfg
        self.rubric = cfg.rubric or DEFAULT_RUBRIC
        self.domains = tuple(cfg.domains)
        _check_domains(self.domains, "judge")
        self.id = f"{cfg.endpoint.base_url.rstrip('/')}#{cfg.endpoint.model}"
        self._client = self._new_client()  # checks the key variable now, before any training

    def _new_client(self):
        from r1core.sampling import endpoint_client

        ep = self.config.endpoint
        return endpoint_client(ep.base_url, api_key_env=ep.api_key_env, timeout_s=ep.timeout_s,
                               max_retries=ep.max_retries)

    def __getstate__(self) -> dict:  # picklable: the HTTP client is rebuilt where the reward is unpickled
        return {k: v for k, v in self.__dict__.items() if k != "_client"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._client = self._new_client()

    def _ask(self, prompt: str, response: str) -> Judgement:
        import openai

        cfg = self.config
        messages = [{"role": "system", "content": self.rubric},
                    {"role": "user", "content": JUDGE_PROMPT.format(prompt=prompt, response=response)}]
        try:
            resp = self._client.chat.completions.create(
                model=cfg.endpoint.model, messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                seed=cfg.seed, extra_body=dict(cfg.extra_body) or None)
        except openai.APIError as err:
            return Judgement(None, "", f"{type(err).__name__}: {err}")
        reply = (resp.choices[0].message.content or "") if resp.choices else ""
        return Judgement(parse_score(reply, cfg.scale), reply)

    def judge(self, prompts: list[str], responses: list[str]) -> list[Judgement]:
        """One :class:`Judgement` per ``(prompts[i], responses[i])``, in order.

        Raises:
            r1core.sampling.EndpointError: every request failed (after the client's retries).
        """
        from r1core.sampling import EndpointError

        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.config.endpoint.max_concurrency, len(prompts))) as pool:
            out = list(pool.map(self._ask, prompts, responses))
        failed = [j for j in out if j.error is not None]
        if len(failed) == len(out):
            raise EndpointError(f"judge {self.id}: all {len(out)} requests failed after "
                                f"{self.config.endpoint.max_retries} retries (first: {failed[0].error}). Check the "
                                "server; a run with save_steps resumes from its last checkpoint.")
        for j in failed:
            logger.warning("judge %s: a request failed after retries (scored None): %s", self.id, j.error)
        return out

    def __call__(self, completions, prompts=None, problem=None, domain=None, answer_type=None, log_metric=None,
                 **kwargs) -> list[float | None]:
        responses = [_response(prompts[i] if prompts else "", c) for i, c in enumerate(completions)]
        todo = [i for i, d in enumerate(row_domains(len(responses), domain, answer_type)) if d in self.domains]
        asked = [str(problem[i]) if problem is not None else _prompt_text(prompts[i] if prompts else "") for i in todo]
        views = [responses[i] if self.config.include_reasoning else _summary(responses[i]) for i in todo]
        verdicts = self.judge(asked, views)
        if log_metric is not None:
            log_metric("judge/requests", float(len(verdicts)))
            log_metric("judge/unparsable", float(sum(j.score is None and j.error is None for j in verdicts)))
            log_metric("judge/errors", float(sum(j.error is not None for j in verdicts)))
        out: list[float | None] = [None] * len(responses)
        for i, j in zip(todo, verdicts):
            out[i] = j.score
        return out


class RewardModelReward:
    """A reward model as a GRPO reward (R1 section 2.3.4: "reward models ... for general data"):
    a sequence classifier with one output, whose logit of the last token of prompt + completion is
    the reward (unbounded; the scale is the model's).

    TRL's ``GRPOTrainer`` does the work: it loads a reward model given by path or hub id as
    ``AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)`` with the model's own
    tokenizer, places it on the training device, and scores the prompt text plus the completion (the
    prompt as the policy saw it, its chat template included). :class:`r1core.grpo.R1GRPOTrainer`
    hands TRL :attr:`path`, logs the scores as ``rewards/reward_model/...`` and sets them to
    ``None`` on rows outside ``domains`` (TRL scores every row with a model).

    Args:
        model: the reward model: a checkpoint folder, a hub id, or an MLflow ``models:/`` URI
            (:func:`r1core.models.resolve_model`; not another stage's output).
        domains: the row domains it scores (see the module docstring).

    Raises:
        ValueError: no ``model`` given, or ``domains`` empty.
        r1core.models.ModelNotFoundError: ``model`` does not resolve (the message says what to fix).
    """

    __name__ = "reward_model"

    def __init__(self, model: str | None = None, domains: Sequence[str] = (GENERAL,)):
        from r1core.models import resolve_model

        if not model or not isinstance(model, str):
            raise ValueError("reward_model needs the model: reward_args: {reward_model: {model: <checkpoint folder, "
                             "hub id or models:/ URI of a sequence classifier with one output>}}.")
        self.model = model
        self.path = resolve_model(model).path
        self.domains = _check_domains(domains, "reward_model")

    def __call__(self, *args, **kwargs):
        raise TypeError("reward_model is scored by TRL's GRPOTrainer itself: pass it to r1core.grpo.R1GRPOTrainer "
                        "(which hands TRL the model), or give trl.GRPOTrainer its .path.")


class OnDomains:
    """``reward`` applied only to the rows of some domains: it is called with those rows (every
    list-valued argument cut to them) and every other row gets ``None``, TRL's "not applicable".
    Logged under the wrapped reward's name.

    Args:
        reward: a reward in TRL's signature.
        domains: the domains it applies to (``None``: all but ``exclude``).
        exclude: domains it never applies to.

    >>> from r1core.rewards import FormatReward
    >>> OnDomains(FormatReward(), exclude=("general",))(["<think>a</think><answer>4</answer>"] * 2,
    ...                                                  domain=["math", "general"])
    [1.0, None]
    """

    def __init__(self, reward: Callable, domains: Sequence[str] | None = None, exclude: Sequence[str] = ()):
        self.reward, self.exclude = reward, tuple(exclude)
        self.domains = None if domains is None else tuple(domains)
        self.__name__ = getattr(reward, "__name__", type(reward).__name__)

    def applies(self, domain: str) -> bool:
        return (self.domains is None or domain in self.domains) and domain not in self.exclude

    def __call__(self, completions, **kwargs) -> list[float | None]:
        n = len(completions)
        keep = [i for i, d in enumerate(row_domains(n, kwargs.get("domain"), kwargs.get("answer_type")))
                if self.applies(d)]
        if len(keep) == n:
            return self.reward(completions=completions, **kwargs)
        out: list[float | None] = [None] * n
        if keep:
            sub = {k: [v[i] for i in keep] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}
            for i, r in zip(keep, self.reward(completions=[completions[i] for i in keep], **sub)):
                out[i] = r
        return out


def _needs_answer(reward) -> bool:
    """Whether a reward's call requires the gold ``answer`` (so it cannot score a general row)."""
    try:
        param = inspect.signature(reward).parameters.get("answer")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def route_by_domain(reward_funcs) -> tuple[list, dict[int, RewardModelReward]]:
    """Reward functions as ``trl.GRPOTrainer`` takes them, routed by the row's domain (module docstring).

    Returns:
        ``(funcs, reward_models)``: each :class:`RewardModelReward` replaced by its :attr:`path` (TRL
        loads and scores it), each reward that needs the gold answer wrapped in :class:`OnDomains`
        (never on general rows), the rest (the judge, which routes itself; TRL's own model ids and
        models; async functions) unchanged; ``reward_models`` maps the position of each reward model
        to its :class:`RewardModelReward` (its name and domains).
    """
    from torch import nn

    if reward_funcs is None:
        return [], {}
    funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    out, reward_models = [], {}
    for i, f in enumerate(funcs):
        if isinstance(f, RewardModelReward):
            out.append(f.path)
            reward_models[i] = f
        elif (isinstance(f, (str, nn.Module, OnDomains)) or hasattr(f, "domains") or not callable(f)
              or inspect.iscoroutinefunction(f) or inspect.iscoroutinefunction(getattr(f, "__call__", None))
              or not _needs_answer(f)):
            out.append(f)
        else:
            out.append(OnDomains(f, exclude=(GENERAL,)))
    return out, reward_models
