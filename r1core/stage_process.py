"""Run one stage in a process of its own (what the pipeline does when stages run concurrently).

Model loading in transformers and TRL enters process-wide contexts (torch's default-device and
meta-device modes) that are not thread-safe: two stages loading models at once in one process
can leave a model on the meta device. So with ``concurrency > 1`` each stage runs as
``python -m r1core.stage_process SPEC`` (:func:`r1core.child_process.run_child`): the Prefect
task (its thread) waits for it, keeps its retries and caching, and reads the stage's result back.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any


def run_stage_in_process(recipe_json: str, stage: str, parent_run_id: str | None, inputs: dict[str, Any]) -> dict:
    """Run ``r1core.stages.run_stage(recipe, stage, parent_run_id, **inputs)`` in a child process
    (same environment, so the same MLflow store) and return its result.

    Raises:
        RuntimeError: the child failed; the message carries the end of its output.
    """
    from r1core.child_process import run_child
    from r1core.stage_utils import work_dir

    folder = Path(tempfile.mkdtemp(prefix=f"{stage}-", dir=work_dir("stage-process")))
    spec = {"recipe_json": recipe_json, "stage": stage, "parent_run_id": parent_run_id, "inputs": inputs}
    return run_child([sys.executable, "-m", "r1core.stage_process"], spec, folder, what=f"stage {stage!r}")


def main(argv: list[str] | None = None) -> None:
    from r1core import stages
    from r1core.child_process import read_spec, write_result
    from r1core.config import Recipe
    from r1core.settings import configure_environment

    configure_environment()
    spec_path = (argv or sys.argv[1:])[0]
    spec = read_spec(spec_path)
    recipe = Recipe.model_validate_json(spec["recipe_json"])
    write_result(spec_path, stages.run_stage(recipe, spec["stage"], spec["parent_run_id"], **spec["inputs"]))


if __name__ == "__main__":
    main()
