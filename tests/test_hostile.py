"""Hostile completions against the one verifier and the text rewards (issue #21, "hostile inputs").

Over 1,000 adversarial completions are generated from named families (1 MB of text, 10k unclosed
``<answer>`` tags, 10k nested braces, unterminated ``\\boxed{``, power towers, eval bait, NUL bytes,
lone surrogates, invalid UTF-8, deep ``\\frac``, long numbers, many ``\\boxed{}`` ...), each
family varied by a seed. For each one: its time in a verifier worker is bounded (the maximum is
printed), nothing it contains is executed (eval bait writes a file that must never appear), and
interleaved with MATH-500's gold answers it never changes a gold's verdict from the one it gets
scored alone. The text-level steps (answer-block lookup, last ``\\boxed{}``, the format and tag
rewards' regexes) are timed on 1 MB inputs, where a quadratic step would take hours.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from r1core import rewards, signals, verify
from r1core.verify import MAX_CHARS, TIMEOUT_S, Verdict, verify_batch

#: Per completion: at most two math-verify parses (as if boxed, then as is) and one comparison,
#: each under math-verify's own ``TIMEOUT_S``; anything beyond this is a step nothing bounds.
ITEM_BOUND_S = 3 * TIMEOUT_S + 5


def _payloads(pwned: Path) -> list[str]:
    """Strings that would create ``pwned`` if anything ``eval``-ed or shelled them."""
    p = str(pwned)
    return [f"__import__('os').system('touch {p}')",
            f"__import__(\"os\").system(\"touch {p}\")",
            f"exec(\"open('{p}', 'w').close()\")",
            f"eval(\"__import__('os').system('touch {p}')\")",
            f"open('{p}', 'w')",
            f"getattr(__builtins__, 'exec')(\"open('{p}','w')\")",
            f"[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0](['touch', '{p}'])",
            f"lambda: __import__('subprocess').run(['touch', '{p}'])",
            f"Symbol('x') + __import__('os').system('touch {p}')",
            f"sympify(\"__import__('os').system('touch {p}')\")",
            f"$(touch {p})", f"`touch {p}`", f"{{{{ open('{p}','w') }}}}",
            f"\\operatorname{{__import__}}('os').system('touch {p}')",
            f"\\text{{__import__('os').system('touch {p}')}}"]


def _wrap(r: random.Random, answer: str) -> str:
    """``answer`` as a model would end with it: boxed, in an ``<answer>`` block, in ``$``, or bare."""
    form = r.choice(["\\boxed{%s}", "<answer>%s</answer>", "<think>so</think>\n<answer>%s</answer>",
                     "The answer is $%s$.", "%s", "Final: \\boxed{%s}."])
    return form.replace("%s", answer)


def _random_text(r: random.Random, n: int) -> str:
    words = ["the", "so", "x", "=", "+", "2", "\\frac{1}{2}", "$", "{", "}", "(", ")", "<think>", "wait", "\n"]
    return " ".join(r.choice(words) for _ in range(n // 4))[:n]


def _families(pwned: Path) -> dict:
    """Family name -> ``f(r: random.Random) -> str``."""
    bait = _payloads(pwned)
    return {
        "text_1mb": lambda r: (_random_text(r, 1_000_000) if r.random() < 0.5 else r.choice("ab ") * 1_000_000)
        + r.choice(["", "\\boxed{4}", "<answer>4</answer>", "<answer>", "\\boxed{"]),
        "text_1mb_answer_first": lambda r: "<answer>4</answer>" + "y" * 1_000_000 + r.choice(["", "</answer>"]),
        "unclosed_answer_tags": lambda r: "<answer>" * r.randint(9_000, 11_000)
        + r.choice(["", "4", "</answer", "\\boxed{4"]),
        "unclosed_answer_tags_text": lambda r: ("<answer>" + "x" * r.randint(0, 3)) * r.randint(9_000, 11_000)
        + r.choice(["", "</answer>"]),
        "close_tag_spam": lambda r: r.choice(["</answer>", "</think>", "<answer></answer", "<think><answer>"])
        * r.randint(5_000, 10_000),
        "nested_braces": lambda r: _wrap(r, "{" * r.randint(9_000, 11_000) + "4" + "}" * r.choice([0, 10_000, 11_001])),
        "nested_braces_bare": lambda r: "{" * r.randint(9_000, 11_000) + r.choice(["", "4", "}" * 10_000]),
        "boxed_unterminated": lambda r: "so \\boxed{" + r.choice(["1+", "{", "\\frac{1}{", "x"]) * r.randint(1, 20_000),
        "boxed_unterminated_many": lambda r: "\\boxed{" * r.randint(5_000, 20_000) + r.choice(["", "4", "4}"]),
        "power_tower_latex": lambda r: _wrap(r, "^{".join([r.choice(["10", "9", "2", "x"])] * r.randint(3, 8))
                                           + "}" * 8),
        "power_tower_python": lambda r: _wrap(r, "**".join([r.choice(["9", "10", "99"])] * r.randint(3, 30))),
        "power_tower_caret": lambda r: _wrap(r, "^".join([r.choice(["9", "10"])] * r.randint(3, 30))),
        "big_exponent": lambda r: _wrap(r, f"{r.choice(['2', '10', 'x', '(x+1)'])}^{{{r.randint(10**5, 10**12)}}}"),
        "factorial_bomb": lambda r: _wrap(r, r.choice([
            f"{r.randint(10**5, 10**9)}!", f"{r.randint(10**5, 10**9)}!!", f"\\Gamma({r.randint(10**5, 10**9)})",
            f"\\binom{{{r.randint(10**6, 10**9)}}}{{{r.randint(10**5, 10**6)}}}"])),
        "eval_bait": lambda r: _wrap(r, r.choice(bait)),
        "nul_bytes": lambda r: "\x00" * r.randint(1, 100_000) + _wrap(r, r.choice(["4", "4\x00", "\x00"])),
        "lone_surrogates": lambda r: "".join(chr(r.randint(0xD800, 0xDFFF)) for _ in range(r.randint(1, 5_000)))
        + _wrap(r, r.choice(["4", "\udcff4"])),
        "invalid_utf8": lambda r: bytes(r.randrange(256) for _ in range(r.randint(1, 20_000))).decode(
            "utf-8", r.choice(["surrogateescape", "replace", "ignore"])) + r.choice(["", "\\boxed{4}"]),
        "nested_frac": lambda r: _wrap(r, "\\frac{1}{" * (d := r.choice([8, 16, 31, 33, 100, 3000])) + "2" + "}" * d),
        "nested_sqrt": lambda r: _wrap(r, "\\sqrt{" * (d := r.randint(20, 5_000)) + "2" + "}" * d),
        "deep_parens": lambda r: _wrap(r, "(" * r.randint(20, 10_000) + "1" + ")" * r.randint(0, 10_000)),
        "long_number": lambda r: _wrap(r, "".join(r.choice("0123456789") for _ in range(r.randint(1_000, 19_000)))),
        "many_boxed": lambda r: "".join(f"\\boxed{{{i}}} " for i in range(r.randint(1_000, 5_000))),
        "matrix_bomb": lambda r: _wrap(r, "\\begin{pmatrix}" + "\\\\".join(
            "&".join(["x"] * r.randint(10, 100)) for _ in range(r.randint(10, 50))) + "\\end{pmatrix}"),
        "dollar_spam": lambda r: r.choice(["$", "$$", "\\(", "\\["]) * r.randint(1_000, 20_000) + r.choice(["", "4"]),
        "text_macro_spam": lambda r: _wrap(r, r.choice(["\\text{", "\\text ", "\\mathrm{"]) * r.randint(1_000, 5_000)),
        "think_spam": lambda r: "<think>" * r.randint(5_000, 20_000) + "</think>" * r.randint(0, 3)
        + r.choice(["", "<answer>4</answer>"]),
        "confusables": lambda r: r.choice(["\u202e", "\u200b", "\ufeff", "\u00a0"]) * r.randint(1, 5_000)
        + _wrap(r, r.choice(["４", "4\u200b", "\u202e4", "Ⅳ"])),
        "control_chars": lambda r: "".join(chr(r.randint(0, 31)) for _ in range(r.randint(1, 20_000)))
        + _wrap(r, "4"),
        "latex_commands": lambda r: _wrap(r, "".join(r.choice(["\\left(", "\\right)", "\\over", "\\int", "\\sum_{",
                                                                 "\\lim_{", "^", "_", "\\\\", "&"])
                                                     for _ in range(r.randint(100, 5_000)))),
    }


def hostile_completions(pwned: Path, per_family: int = 34) -> list[tuple[str, str]]:
    """``(family, completion)`` pairs, ``per_family`` of each family, each varied by its own seed,
    plus ``mixed``: two others joined."""
    out = []
    fams = _families(pwned)
    for name, make in fams.items():
        out += [(name, make(random.Random(f"{name}/{i}"))) for i in range(per_family)]
    r = random.Random("mixed")
    singles = [c for _, c in out]
    out += [("mixed", (r.choice(singles) + r.choice(singles))[-1_100_000:]) for _ in range(per_family)]
    return out


def _math500(data_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "math500" / "test.jsonl").read_text().splitlines() if line]


def _timed_verify_one(item: tuple[str, str]) -> tuple[tuple, float]:
    """Runs in a verifier worker: one completion's verdict fields and its seconds."""
    t0 = time.perf_counter()
    out = verify._verify_one(*item)
    return out, time.perf_counter() - t0


def _alone(items: list[tuple[str, str]]) -> tuple[list[Verdict], list[float]]:
    """Each item verified on its own, on its own worker task (main thread, math-verify's timeouts on):
    its verdict alone and its seconds."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn"), initializer=verify._worker_init)
    try:
        futures = [pool.submit(_timed_verify_one, item) for item in items]
        results = [f.result(timeout=len(items) * ITEM_BOUND_S) for f in futures]
    finally:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
    return [Verdict(*r) for r, _ in results], [s for _, s in results]


def _interleave(golds: list[tuple[str, str]], hostile: list[tuple[str, str]]) -> list[tuple[str, str, bool]]:
    """Gold items spread among the hostile ones: ``(completion, gold, is_gold_item)``."""
    out, step = [], max(len(hostile) // max(len(golds), 1), 1)
    h = iter(hostile)
    for g in golds:
        out.append((*g, True))
        out += [(*x, False) for x in [next(h, None) for _ in range(step)] if x is not None]
    out += [(*x, False) for x in h]
    return out


def _check(items, golds, pwned, capsys, label):
    """Time every hostile item alone, then verify the interleaved batch; assert the guarantees.

    ``items``: ``(family, completion, gold)``; ``golds``: ``(completion, gold)`` of real answers."""
    family = {id(c): f for f, c, _ in items}
    mixed = _interleave(golds, [(c, g) for _, c, g in items])
    pairs = [(c, g) for c, g, _ in mixed]
    t0 = time.perf_counter()
    alone, seconds = _alone(pairs)
    t_alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = verify_batch([c for c, _ in pairs], [g for _, g in pairs])
    t_batch = time.perf_counter() - t0
    hostile_s = sorted(s for s, (_, _, is_gold) in zip(seconds, mixed) if not is_gold)
    by_family: dict[str, float] = {}
    for s, (c, _, is_gold) in zip(seconds, mixed):
        if not is_gold:
            by_family[family[id(c)]] = max(by_family.get(family[id(c)], 0.0), s)
    slowest = ", ".join(f"{f} {s:.2f} s" for f, s in sorted(by_family.items(), key=lambda x: -x[1])[:4])
    median = hostile_s[len(hostile_s) // 2]
    with capsys.disabled():
        print(f"\n[{label}] {len(items)} hostile completions ({len(by_family)} families) + {len(golds)} MATH-500 "
              f"golds: max {hostile_s[-1]:.3f} s per hostile completion (median {median:.4f} s, "
              f"{sum(s > 1 for s in hostile_s)} over 1 s; slowest families: {slowest}); alone {t_alone:.1f} s, "
              f"interleaved batch {t_batch:.1f} s")
    assert not pwned.exists(), "a hostile completion was executed"
    assert hostile_s[-1] < ITEM_BOUND_S
    for (c, _, is_gold), a, b in zip(mixed, alone, together):
        if is_gold:  # a neighbour: its verdict in the hostile batch is its verdict alone
            assert b == a, (c[:80], a, b)
    gold_verdicts = [a for (_, _, is_gold), a in zip(mixed, alone) if is_gold]
    assert sum(v.correct is True for v in gold_verdicts) >= 0.98 * len(gold_verdicts)  # the golds are real
    assert not [v for v in together if v.status == "timeout"], "every hostile completion finished in time"


@pytest.mark.faults
def test_over_1000_hostile_completions_are_bounded_inert_and_leave_neighbours_alone(tmp_path, data_dir, capsys):
    pwned = tmp_path / "pwned"
    items = [(f, c, "4") for f, c in hostile_completions(pwned)]
    assert len(items) >= 1_000
    golds = [(f"\\boxed{{{r['answer']}}}", r["answer"]) for r in _math500(data_dir)]
    _check(items, golds, pwned, capsys, "hostile x1000")


def test_one_of_each_hostile_family_leaves_its_neighbours_alone(tmp_path, data_dir, capsys):
    pwned = tmp_path / "pwned"
    fams = _families(pwned)
    items = [(name, make(random.Random(f"{name}/small")), "4") for name, make in fams.items()]
    items += [("eval_bait", _wrap(random.Random(i), p), "4") for i, p in enumerate(_payloads(pwned))]
    golds = [(f"\\boxed{{{r['answer']}}}", r["answer"]) for r in _math500(data_dir)[: len(items)]]
    _check(items, golds, pwned, capsys, "hostile sample")


MB = 1_000_000
TEXT_STEPS = {
    "answer block": verify._answer_block,
    "last boxed": verify._last_boxed,
    "answer span": verify.extract_answer_span,
    "nesting depth": lambda s: verify._nesting_depth(s[-MAX_CHARS:]),
    "normalise text": verify.normalise_text_answer,
    "text gold": verify.is_text_gold,
    "format reward": lambda s: rewards.FormatReward()([s]),
    "tag_count reward": lambda s: rewards.TagCountReward()([s]),
    "think block": rewards._think_text,
    "language reward": lambda s: rewards.LanguageConsistencyReward("en")([s]),
    "thought_switch reward": lambda s: rewards.ThoughtSwitchReward()([s]),
    "repetition reward": lambda s: rewards.RepetitionReward()([s]),
    "reflection signal": lambda s: signals.ReflectionRate().flags([s]),
}
TEXT_INPUTS = {
    "unclosed <answer>": "<answer>" * (MB // 8),
    "unclosed <think>": "<think>" * (MB // 7),
    "tags alternating": "<think>a</think><answer>" * (MB // 24),
    "nested braces": "\\boxed{" + "{" * MB,
    "many boxed": "\\boxed{1}" * (MB // 9),
    "words and hyphens": "ab-" * (MB // 3) + "1",
    "words and spaces": "ab " * (MB // 3) + "1",
    "text macros": "\\text " * (MB // 6) + "{",
    "whitespace": " " * MB + "x",
    "switch prefixes": "alternativel" * (MB // 12),
    "angle brackets": "<think>" + "<" * MB,
}


@pytest.mark.parametrize("step", list(TEXT_STEPS))
def test_text_steps_take_linear_time_on_1mb_inputs(step):
    """Every regex or scan that reads model output, on 1 MB built to make backtracking blow up
    (the old ``<answer>(.*?)</answer>`` took 4-19 s on 64 KB, and hours on this)."""
    fn = TEXT_STEPS[step]
    for name, text in TEXT_INPUTS.items():
        t0 = time.perf_counter()
        fn(text)
        took = time.perf_counter() - t0
        assert took < 10.0, f"{step} on {name}: {took:.1f} s"  # linear: under 2 s here; quadratic: hours


def test_64kb_of_unclosed_answer_tags_verifies_in_well_under_a_second(capsys):
    """The case issue #21 measured: 64 KB of unclosed ``<answer>`` took 18.6 s (quadratic regex)."""
    text = "<answer>" * (65_536 // 8)
    verify_batch(["<answer>4</answer>"], ["4"])  # workers started
    t0 = time.perf_counter()
    (v,) = verify_batch([text], ["4"])
    took = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n64 KB of unclosed <answer>: {took:.3f} s ({v.status})")
    assert v == Verdict(False, None, "no_answer") and took < 1.0


def test_guards_keep_real_answers():
    """The depth and size guards leave ordinary answers to math-verify (their verdicts unchanged)."""
    assert verify._nesting_depth("\\left( \\frac{\\sqrt{3}}{2}, [1, 2) \\right)") == 3
    assert verify._nesting_depth(")) (") == 1  # a closer without an opener is ignored
    cases = [("\\boxed{2^{10}}", "1024", True), ("\\boxed{10!}", "3628800", True),
             ("<answer>\\frac{1}{\\frac{1}{\\frac{1}{2}}}</answer>", "1/2", True),
             ("\\boxed{10^{10^{10}}}", "10^{10^{10}}", True),  # too large to evaluate: compared as text
             ("\\boxed{10^{10^{10}}}", "4", False), ("\\boxed{(10^9)!}", "4", False),
             ("\\boxed{" + "{" * 40 + "4" + "}" * 40 + "}", "4", False)]  # nested past MAX_DEPTH
    verdicts = verify_batch([c for c, _, _ in cases], [g for _, g, _ in cases])
    assert [v.correct for v in verdicts] == [ok for _, _, ok in cases], verdicts
    assert verdicts[-1].status == "no_answer"


if __name__ == "__main__":  # print the families' sizes
    for fam, text in hostile_completions(Path(os.devnull))[::34]:
        print(f"{fam:28s} {len(text):>9d} chars")
