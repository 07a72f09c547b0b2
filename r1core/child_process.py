"""The one way the project runs work in a child process: a JSON spec file in, a JSON result file
out, the child's output kept in a log file beside them.

Used by the pipeline to run a stage in a process of its own (:mod:`r1core.stage_process`) and by
multi-process training (:mod:`r1core.launch`: ``accelerate launch`` of the same entry point per rank).
The child is started in a session of its own, and is killed with its process group if the
parent is interrupted while waiting, so no rank outlives the stage that started it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

SPEC_FILE, RESULT_FILE, LOG_FILE = "spec.json", "result.json", "output.log"


def run_child(command: list[str], spec: dict[str, Any], folder: Path, *, env: dict[str, str] | None = None,
              what: str = "child process") -> dict[str, Any]:
    """Write ``spec`` to ``folder/spec.json``, run ``command + [spec path]`` (its stdout and stderr
    to ``folder/output.log``) and return what it wrote to ``folder/result.json``
    (:func:`write_result`).

    Raises:
        RuntimeError: the child exited non-zero or wrote no result; the message names ``what``,
            the exit status and carries the end of its output.
    """
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = folder / SPEC_FILE, folder / RESULT_FILE, folder / LOG_FILE
    spec_path.write_text(json.dumps(spec, default=float))
    result_path.unlink(missing_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen([*command, str(spec_path)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            returncode = proc.wait()
        except BaseException:  # interrupted while waiting: stop the child and what it started
            _kill_group(proc)
            raise
    if returncode != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} exited with {returncode}" + ("" if returncode else " without a result")
                           + f"; end of its output ({log_path}):\n{tail}")
    return json.loads(result_path.read_text())


def read_spec(spec_path: str | Path) -> dict[str, Any]:
    """The spec a child was started with."""
    return json.loads(Path(spec_path).read_text())


def write_result(spec_path: str | Path, result: dict[str, Any]) -> None:
    """Write the child's result beside its spec (atomically: a kill never leaves half a result)."""
    out = Path(spec_path).with_name(RESULT_FILE)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=float))
    os.replace(tmp, out)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's own process group (it was started in a new session), then SIGKILL after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
