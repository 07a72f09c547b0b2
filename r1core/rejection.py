"""Rejection sampling: a teacher samples k completions per problem; only verified ones are kept.

DeepSeek-R1 (arXiv:2501.12948, section 2.3.3) builds its SFT data this way: sample from a
checkpoint, keep responses whose answer is correct (rule-based check) and whose form passes
the filters. Here every answer check is :func:`r1core.verify.verify_batch`, the same verifier
the GRPO accuracy reward and evaluation use.

Filters, in order (each rejection is counted under its reason): ``truncated`` (hit the token cap
without ending), ``too_long`` (over ``max_completion_tokens``), ``format`` (when
``require_format``), ``language_mixed`` (the chain of thought's share of words in the target
language is under ``min_language_consistency``; R1 filters "mixed languages"), ``repetition``
(share of repeated word 3-grams over ``max_repetition``: degenerate loops), ``incorrect`` (does
not verify; includes no extractable answer), ``duplicate`` (same text as a kept trace of the same
problem), ``not_shortest`` (policy ``shortest_correct`` keeps one per problem).

Sampling is resumable and exact (:func:`sample_with_resume`): every finished problem is on disk at
once, so a crash or an endpoint outage loses only what was in flight, and samples are seeded by
fixed chunks of the full problem list, so a resumed run keeps the samples (and so the traces and
counts) of one that was never interrupted, on a deterministic sampler (the project's engine).

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
from dataclasses import replace
from pathlib import Path

import pandas as pd

from r1core.generation import SamplingParams
from r1core.prompts import messages
from r1core.rewards import FormatReward, LanguageConsistencyReward, RepetitionReward
from r1core.samplelog import SampleLog
from r1core.sampling import Completion, LocalSampler
from r1core.verify import checks_of, verify_batch

logger = logging.getLogger(__name__)
REJECTION_REASONS = ("truncated", "too_long", "format", "language_mixed", "repetition", "incorrect", "duplicate",
                     "not_shortest")
TRACE_COLUMNS = ["id", "source", "level", "answer", "origin", "num_tokens", "prompt", "completion", "messages"]


def reference_response(solution: str, answer: str, template: str) -> str:
    """A worked solution written as a response in ``template``'s format.

    ``r1_zero``: ``<think>`` solution ``</think>`` then ``<answer>`` answer ``</answer>``;
    ``r1_eval``: ``<think>`` solution ``</think>`` then "The final answer is $\\boxed{answer}$."
    """
    solution = solution.strip()
    if template == "r1_zero":
        return f"<think>\n{solution}\n</think>\n<answer>{answer}</answer>"
    return f"<think>\n{solution}\n</think>\n\nThe final answer is $\\boxed{{{answer}}}$."


def reference_traces(problems: pd.DataFrame, template: str, counter) -> tuple[pd.DataFrame, dict]:
    """SFT traces from the data set's worked solutions (R1's cold-start data, section 2.3.1):
    each ``solution`` written in ``template``'s format (:func:`reference_response`), kept only if
    its answer verifies against the gold ``answer``. ``counter`` counts tokens: a teacher
    (``count_tokens``) or a tokenizer.

    Returns:
        ``(traces, stats)``: traces in the format of :func:`rejection_sample`'s ``kept``
        (``origin=reference``, ``num_tokens`` in tokens); stats ``num_problems``,
        ``without_solution``, ``not_verified``, ``num_kept``.
    """
    rows = [r for _, r in problems.iterrows()]
    with_solution = [r for r in rows if str(r.get("solution") or "").strip()]
    responses = [reference_response(str(r["solution"]), str(r["answer"]), template) for r in with_solution]
    verdicts = verify_batch(responses, [str(r["answer"]) for r in with_solution], **checks_of(with_solution))
    count = getattr(counter, "count_tokens", None) or (lambda t: len(counter(t, add_special_tokens=False)["input_ids"]))
    kept = [_trace(r, resp, count(resp), "reference", template)
            for r, resp, v in zip(with_solution, responses, verdicts) if v.correct]
    stats = {"num_problems": len(rows), "without_solution": len(rows) - len(with_solution),
             "not_verified": len(with_solution) - len(kept), "num_kept": len(kept)}
    return pd.DataFrame(kept, columns=TRACE_COLUMNS), stats


def sample_with_resume(teacher, problems: pd.DataFrame, k: int, params: SamplingParams, folder: Path,
                       shard_size: int = 64, progress: Callable[[int, int], None] | None = None
                       ) -> dict[str, list[Completion]]:
    """Sample ``k`` responses per problem from ``teacher``, resumably and exactly.

    The problems are cut into fixed chunks of ``shard_size`` by their position in ``problems``;
    chunk ``c`` (rows ``c * shard_size`` on) is sampled by one ``teacher.sample`` call seeded with
    ``params.seed`` plus its offset in the full list, and each of its problems is appended, as it
    finishes, to the :class:`r1core.samplelog.SampleLog` ``folder/shard-<c>.jsonl`` as
    ``{"id", "samples"}`` (one fsync-ed line per problem, so a kill leaves at most a cut last line).

    A rerun reads every shard (a cut line is dropped, counted in the log, and that problem sampled
    again), skips the chunks whose problems are all there, and samples the rest the way the
    uninterrupted run did, so on a deterministic sampler (the project's engine) a run killed at any
    point and resumed keeps exactly the samples of one never killed:

    - a local engine (:class:`r1core.sampling.LocalSampler`: a sample depends on the whole batch it
      was decoded in) samples a partly written chunk whole again; problems already in the log keep
      their logged samples (the same ones, on a deterministic engine), so nothing is written twice;
    - any other sampler (an endpoint, one request per problem, problem ``i`` of a call seeded with
      ``seed + i``) is asked only for the missing problems, each run of consecutive ones seeded from
      its own offset: the seeds an uninterrupted run used, and no request is paid for twice.

    A crash or an endpoint outage loses only the problems in flight (a local engine: the chunk).

    Args:
        teacher: a :class:`r1core.sampling.Sampler` (a local engine, vLLM or an endpoint).
        problems: rows with ``id`` (unique) and ``problem``; their order fixes the chunks.
        params: sampling settings; ``params.seed`` is the run's seed.
        folder: the stage's work folder, keyed by teacher, prompts and settings (created).
        shard_size: problems per chunk (and per shard file).
        progress: called with ``(problems done, problems total)`` after each problem.

    Returns:
        ``{problem id: [Completion, ...]}`` for every problem.

    Raises:
        Whatever the teacher raises (e.g. :class:`r1core.sampling.EndpointError`), after the
        finished problems are on disk.
    """
    folder.mkdir(parents=True, exist_ok=True)
    done: dict[str, list[Completion]] = {}
    cut = 0
    for shard in sorted(folder.glob("shard-*.jsonl")):
        log = SampleLog(shard)
        for rec in log.read():
            done[rec["id"]] = [Completion(x["text"], int(x["num_tokens"]), bool(x["truncated"]))
                               for x in rec["samples"]]
        cut += log.dropped
    ids = list(problems["id"])
    texts = list(problems["problem"])
    n_done = already = sum(i in done for i in ids)
    if already:
        logger.info("resuming: %d of %d problems already sampled%s", already, len(ids),
                    f" ({cut} cut line(s) dropped, sampled again)" if cut else "")
    batched = isinstance(teacher, LocalSampler)
    for start in range(0, len(ids), shard_size):
        chunk = range(start, min(start + shard_size, len(ids)))
        missing = [i for i in chunk if ids[i] not in done]
        if not missing:
            continue
        log = SampleLog(folder / f"shard-{start // shard_size:05d}.jsonl")
        runs = [(chunk.start, len(chunk))] if batched else _runs(missing)
        for first, n in runs:
            for j, samples in teacher.sample(texts[first : first + n], k, replace(params, seed=params.seed + first)):
                pid = ids[first + j]
                if pid in done:  # written before the kill; a deterministic engine drew the same again
                    continue
                log.append([{"id": pid, "samples": [{"text": x.text, "num_tokens": x.num_tokens,
                                                     "truncated": x.truncated} for x in samples]}])
                done[pid] = samples
                n_done += 1
                if progress is not None:
                    progress(n_done, len(ids))
    return {pid: done[pid] for pid in ids}


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """Sorted positions as runs of consecutive ones: ``[(first, length), ...]``.

    >>> _runs([2, 3, 4, 7, 9, 10])
    [(2, 3), (7, 1), (9, 2)]
    """
    out: list[tuple[int, int]] = []
    for p in positions:
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def rejection_sample(teacher, problems: pd.DataFrame, cfg, *, seed: int = 0, folder: Path,
                     progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Sample ``cfg.num_samples`` responses per problem from ``teacher`` (resumably, see
    :func:`sample_with_resume`) and keep the ones that pass every filter.

    Args:
        teacher: a :class:`r1core.sampling.Sampler` (a local engine, vLLM or an endpoint).
        problems: rows with ``id``, ``problem``, ``answer`` (and ``source``, ``level``, ``solution``).
        cfg: the recipe's :class:`r1core.config.RejectionSamplingConfig`.
        seed: sampling seed.
        folder: the resumable sample log's folder.
        progress: called with ``(problems done, problems total)``.

    Returns:
        ``(kept, samples, stats)``: ``kept`` has one row per kept trace with ``prompt`` and
        ``completion`` as chat messages (TRL's conversational prompt-completion format, so SFT
        trains on the completion only) and ``messages`` (the whole conversation), ``id``,
        ``answer``, ``source``, ``level``, ``origin``, ``num_tokens``; ``samples`` has every
        sample with its verdict and rejection reason; ``stats`` has ``num_samples``, ``num_kept``
        (= ``num_kept_teacher`` + ``num_kept_reference``), ``acceptance_rate`` (teacher traces
        kept / samples), ``problems_with_kept`` and ``rejected/<reason>`` counts.
    """
    k = cfg.num_samples
    rows = problems.reset_index(drop=True)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed)
    sampled = sample_with_resume(teacher, rows, k, params, folder, cfg.shard_size, progress)
    flat = [(row, j, smp) for _, row in rows.iterrows() for j, smp in enumerate(sampled[row["id"]])]
    responses = [smp.text for _, _, smp in flat]
    verdicts = verify_batch(responses, [str(row["answer"]) for row, _, _ in flat],
                            **checks_of([row for row, _, _ in flat]))
    formatted = FormatReward()(responses)
    language = LanguageConsistencyReward(cfg.language)(responses)
    repeated = [-v for v in RepetitionReward(ngram_size=3, max_penalty=-1.0)(responses)]  # share of repeated 3-grams

    records, kept_text = [], {}
    for (row, j, smp), verdict, fmt, lang, rep in zip(flat, verdicts, formatted, language, repeated):
        reason = None
        if smp.truncated:
            reason = "truncated"
        elif cfg.max_completion_tokens and smp.num_tokens > cfg.max_completion_tokens:
            reason = "too_long"
        elif cfg.require_format and fmt < 1.0:
            reason = "format"
        elif cfg.min_language_consistency is not None and lang < cfg.min_language_consistency:
            reason = "language_mixed"
        elif cfg.max_repetition is not None and rep > cfg.max_repetition:
            reason = "repetition"
        elif not verdict.correct:
            reason = "incorrect"
        elif smp.text.strip() in kept_text.setdefault(row["id"], set()):
            reason = "duplicate"
        if reason is None:
            kept_text[row["id"]].add(smp.text.strip())
        records.append({"id": row["id"], "sample": j, "source": row.get("source", ""),
                        "level": int(row.get("level", 0) or 0), "answer": str(row["answer"]),
                        "extracted": verdict.answer, "correct": bool(verdict.correct),
                        "verifier_status": verdict.status, "format": fmt, "language_consistency": lang,
                        "repetition": rep, "num_tokens": smp.num_tokens, "truncated": smp.truncated,
                        "kept": reason is None, "reason": reason or "", "response": smp.text})
    samples = pd.DataFrame.from_records(records)
    if cfg.keep == "shortest_correct" and len(samples):
        kept_idx = samples[samples["kept"]].groupby("id")["num_tokens"].idxmin()
        drop = samples["kept"] & ~samples.index.isin(kept_idx)
        samples.loc[drop, "kept"] = False
        samples.loc[drop, "reason"] = "not_shortest"

    by_id = {r["id"]: r for _, r in rows.iterrows()}
    kept_rows = [_trace(by_id[s["id"]], s["response"], int(s["num_tokens"]), "teacher", cfg.prompt_template)
                 for _, s in samples[samples["kept"]].iterrows()]
    n_reference = 0
    if cfg.fallback == "reference":
        covered = {r["id"] for r in kept_rows}
        references, _ = reference_traces(rows[~rows["id"].isin(covered)], cfg.prompt_template, teacher)
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
    """One SFT row: TRL's conversational prompt-completion format plus the whole ``messages``."""
    prompt = messages(problem_row["problem"], template)
    completion = [{"role": "assistant", "content": response.strip()}]
    return {"id": problem_row["id"], "source": problem_row.get("source", ""),
            "level": int(problem_row.get("level", 0) or 0), "answer": str(problem_row["answer"]),
            "origin": origin, "num_tokens": num_tokens, "prompt": prompt, "completion": completion,
            "messages": prompt + completion}
