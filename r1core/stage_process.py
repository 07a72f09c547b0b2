"""Run one stage in a process of its own (what the pipeline does when stages run concurrently).

Model loading in transformers and TRL enters process-wide contexts (torch's default-device and
meta-device modes) that are not thread-safe: two stages loading models at once in one process
can leave a model on the meta device. So with ``concurrency > 1`` each stage runs as
``python -m r1core.stage_process SPEC``: the Prefect task (its thread) waits for it, keeps its
retries and caching, and reads the stage's result back from a JSON file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def run_stage_in_process(recipe_json: str, stage: str, parent_run_id: str | None, inputs: dict[str, Any]) -> dict:
    """Run ``r1core.stages.STAGE_FUNCTIONS[type](recipe, stage, parent_run_id, **inputs)`` in a
    child process (same environment, so the same MLflow store) and return its result.

    Raises:
        RuntimeError: the child failed; the message carries the end of its output.
    """
    from r1core.stage_utils import work_dir

    folder = Path(tempfile.mkdtemp(prefix=f"{stage}-", dir=work_dir("stage-process")))
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"recipe_json": recipe_json, "stage": stage, "parent_run_id": parent_run_id,
                                "inputs": inputs}))
    log = folder / "output.log"
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, "-m", "r1core.stage_process", str(spec)], stdout=fh,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage!r} exited with {proc.returncode}; end of its output ({log}):\n"
                           + log.read_text()[-3000:])
    return json.loads((folder / "result.json").read_text())


def main(argv: list[str] | None = None) -> None:
    from r1core import stages
    from r1core.config import Recipe
    from r1core.settings import configure_environment

    configure_environment()
    spec_path = Path((argv or sys.argv[1:])[0])
    spec = json.loads(spec_path.read_text())
    recipe = Recipe.model_validate_json(spec["recipe_json"])
    fn = stages.STAGE_FUNCTIONS[recipe.stages[spec["stage"]].type]
    result = fn(recipe, spec["stage"], spec["parent_run_id"], **spec["inputs"])
    (spec_path.parent / "result.json").write_text(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
