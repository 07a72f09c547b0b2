"""Rejection sampling: a teacher samples k completions per problem; only verified ones are kept.

DeepSeek-R1 (arXiv:2501.12948, section 2.3.3) builds its SFT data this way: sample from a
checkpoint, keep responses whose answer is correct (rule-based check) and whose form passes
the filters. Here every answer check is :func:`r1core.verify.verify_batch`, the same verifier
the GRPO accuracy reward and evaluation use.

Filters, in order (each rejection is counted under its reason): ``truncated`` (hit the token cap
without ending), ``too_long`` (over ``max_completion_tokens``), ``format`` (when
``require_format``), ``incorrect`` (does not verify; includes no extractable answer),
``duplicate`` (same text as a kept trace of the same problem), ``not_shortest`` (policy
``shortest_correct`` keeps one per problem).

Fallback ``reference`` (off by default): a problem for which the teacher kept nothing gets the
data set's human-written worked solution as its trace, formatted in the prompt template
(:func:`reference_response`) and kept only if it verifies. This is R1's cold-start data idea
(section 2.3.1: readable, human-curated chains of thought); such traces carry
``origin=reference`` and are counted apart (``num_kept_reference``), so a weak teacher is visible.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import pandas as pd

from r1core.generation import SamplingParams, generate
from r1core.prompts import messages, render, response_text
from r1core.rewards import FormatReward
from r1core.verify import verify_batch

logger = logging.getLogger(__name__)
REJECTION_REASONS = ("truncated", "too_long", "format", "incorrect", "duplicate", "not_shortest")
TRACE_COLUMNS = ["id", "source", "answer", "origin", "num_tokens", "prompt", "completion"]


def reference_response(solution: str, answer: str, template: str) -> str:
    """A worked solution written as a response in ``template``'s format.

    ``r1_zero``: ``<think>`` solution ``</think>`` then ``<answer>`` answer ``</answer>``;
    ``r1_eval``: ``<think>`` solution ``</think>`` then "The final answer is $\\boxed{answer}$."
    """
    solution = solution.strip()
    if template == "r1_zero":
        return f"<think>\n{solution}\n</think>\n<answer>{answer}</answer>"
    return f"<think>\n{solution}\n</think>\n\nThe final answer is $\\boxed{{{answer}}}$."


def reference_traces(problems: pd.DataFrame, template: str, tokenizer) -> tuple[pd.DataFrame, dict]:
    """SFT traces from the data set's worked solutions (R1's cold-start data, section 2.3.1):
    each ``solution`` written in ``template``'s format (:func:`reference_response`), kept only if
    its answer verifies against the gold ``answer``.

    Returns:
        ``(traces, stats)``: traces in the format of :func:`rejection_sample`'s ``kept``
        (``origin=reference``, ``num_tokens`` in tokens); stats ``num_problems``,
        ``without_solution``, ``not_verified``, ``num_kept``.
    """
    rows = [r for _, r in problems.iterrows()]
    with_solution = [r for r in rows if str(r.get("solution") or "").strip()]
    responses = [reference_response(str(r["solution"]), str(r["answer"]), template) for r in with_solution]
    verdicts = verify_batch(responses, [str(r["answer"]) for r in with_solution])
    kept = [_trace(r, resp, len(tokenizer(resp, add_special_tokens=False)["input_ids"]), "reference", template)
            for r, resp, v in zip(with_solution, responses, verdicts) if v.correct]
    stats = {"num_problems": len(rows), "without_solution": len(rows) - len(with_solution),
             "not_verified": len(with_solution) - len(kept), "num_kept": len(kept)}
    return pd.DataFrame(kept, columns=TRACE_COLUMNS), stats


def rejection_sample(model, tokenizer, problems: pd.DataFrame, cfg, *, seed: int = 0,
                     progress: Callable[[int, int, float], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Sample ``cfg.num_samples`` completions per problem and keep the verified ones.

    Args:
        model, tokenizer: the teacher.
        problems: rows with ``id``, ``problem``, ``answer`` (and ``source``, ``level``).
        cfg: the recipe's :class:`r1core.config.RejectionSamplingConfig`.
        seed: sampling seed.
        progress: called after each generation batch with ``(done, total, tokens_per_s)``.

    Returns:
        ``(kept, samples, stats)``: ``kept`` has one row per kept trace with ``prompt`` and
        ``completion`` as chat messages (TRL's conversational prompt-completion format, so SFT
        trains on the completion only), ``id``, ``answer``, ``source``, ``num_tokens``;
        ``samples`` has every sample with its verdict and rejection reason; ``stats`` has
        ``num_samples``, ``num_kept`` (= ``num_kept_teacher`` + ``num_kept_reference``),
        ``acceptance_rate`` (teacher traces kept / samples), ``problems_with_kept`` and
        ``rejected/<reason>`` counts.
    """
    k = cfg.num_samples
    rows = problems.reset_index(drop=True)
    prompts = [render(tokenizer, p, cfg.prompt_template, cfg.prefill) for p in rows["problem"] for _ in range(k)]
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed)
    outs = generate(model, tokenizer, prompts, params, batch_size=cfg.batch_size, on_batch=progress)
    golds = [str(a) for a in rows["answer"] for _ in range(k)]
    responses = [response_text(p, o.text) for p, o in zip(prompts, outs)]
    verdicts = verify_batch(responses, golds)
    formatted = FormatReward()(responses)

    records, kept_text = [], {}
    for j, (out, resp, verdict, fmt) in enumerate(zip(outs, responses, verdicts, formatted)):
        row = rows.iloc[j // k]
        reason = None
        if out.truncated:
            reason = "truncated"
        elif cfg.max_completion_tokens and out.num_tokens > cfg.max_completion_tokens:
            reason = "too_long"
        elif cfg.require_format and fmt < 1.0:
            reason = "format"
        elif not verdict.correct:
            reason = "incorrect"
        elif resp.strip() in kept_text.setdefault(row["id"], set()):
            reason = "duplicate"
        if reason is None:
            kept_text[row["id"]].add(resp.strip())
        records.append({"id": row["id"], "sample": j % k, "source": row.get("source", ""),
                        "level": int(row.get("level", 0) or 0), "answer": str(row["answer"]),
                        "extracted": verdict.answer, "correct": bool(verdict.correct),
                        "verifier_status": verdict.status, "format": fmt, "num_tokens": out.num_tokens,
                        "truncated": out.truncated, "kept": reason is None, "reason": reason or "",
                        "response": resp})
    samples = pd.DataFrame.from_records(records)
    if cfg.keep == "shortest_correct" and len(samples):
        kept_idx = samples[samples["kept"]].groupby("id")["num_tokens"].idxmin()
        drop = samples["kept"] & ~samples.index.isin(kept_idx)
        samples.loc[drop, "kept"] = False
        samples.loc[drop, "reason"] = "not_shortest"

    by_id = {r["id"]: r for _, r in rows.iterrows()}
    kept_rows = []
    for _, s in samples[samples["kept"]].iterrows():
        kept_rows.append(_trace(by_id[s["id"]], s["response"], int(s["num_tokens"]), "teacher", cfg.prompt_template))
    n_reference = 0
    if cfg.fallback == "reference":
        covered = {r["id"] for r in kept_rows}
        references, _ = reference_traces(rows[~rows["id"].isin(covered)], cfg.prompt_template, tokenizer)
        kept_rows += references.to_dict("records")
        n_reference = len(references)
    kept = pd.DataFrame(kept_rows, columns=TRACE_COLUMNS)
    reasons = Counter(samples["reason"]) if len(samples) else Counter()
    n_teacher = len(kept) - n_reference
    stats = {"num_problems": len(rows), "num_samples": len(samples), "num_kept": len(kept),
             "num_kept_teacher": n_teacher, "num_kept_reference": n_reference,
             "acceptance_rate": n_teacher / max(len(samples), 1),
             "problems_with_kept": int(kept["id"].nunique()) if len(kept) else 0,
             "verifier_timeouts": int((samples["verifier_status"] == "timeout").sum()) if len(samples) else 0,
             **{f"rejected/{r}": int(reasons.get(r, 0)) for r in REJECTION_REASONS}}
    return kept, samples, stats


def _trace(problem_row, response: str, num_tokens: int, origin: str, template: str) -> dict:
    """One SFT row in TRL's conversational prompt-completion format."""
    return {"id": problem_row["id"], "source": problem_row.get("source", ""), "answer": str(problem_row["answer"]),
            "origin": origin, "num_tokens": num_tokens, "prompt": messages(problem_row["problem"], template),
            "completion": [{"role": "assistant", "content": response.strip()}]}
