"""``r1 deploy``: register the project's deployments on a Prefect work pool, to run on any machine
whose worker serves that pool.

    r1 deploy --pool cpu                 # the 7 deployments (nightly schedule included) + r1-stage/cpu
    r1 deploy --pool gpu --stages-only   # r1-stage/gpu only: stages a recipe places on gpu
    prefect worker start --pool gpu      # on the GPU machine (MLFLOW_TRACKING_URI set to the shared server)

Each deployment carries a pull step instead of a path baked into a flow object: with ``--source
DIR`` (default: this project folder) the worker runs the flows from that folder on its machine
(Prefect's ``set_working_directory`` step: the same path, e.g. a shared mount or the same
checkout location); with ``--source https://.../repo.git`` it clones the repository first
(``git_clone``). Either way the worker's Python environment must have the project installed
(``pip install -e .``): a process worker runs flows in its own environment.
"""

from __future__ import annotations

from pathlib import Path

#: The project folder (where flows/ and recipes/ are), the default ``--source``.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def ensure_pool(pool: str, pool_type: str) -> bool:
    """Create work pool ``pool`` of ``pool_type`` when it does not exist; return whether it was created.

    Raises:
        ValueError: the pool exists with another type, or ``pool_type`` has no default job template here.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            existing = None
        if existing is not None:
            if existing.type != pool_type:
                raise ValueError(f"work pool {pool!r} exists with type {existing.type!r}, not {pool_type!r}; pass "
                                 f"--pool-type {existing.type} or use another pool name.")
            return False
        if pool_type != "process":
            raise ValueError(f"work pool {pool!r} does not exist; create it with `prefect work-pool create {pool} "
                             f"--type {pool_type}` (its job template comes with its worker's package), then rerun.")
        from prefect.workers.process import ProcessWorker

        client.create_work_pool(WorkPoolCreate(name=pool, type=pool_type,
                                               base_job_template=ProcessWorker.get_default_base_job_template()))
        return True


def deploy(pool: str, *, source: str | None = None, stages_only: bool = False, pool_type: str = "process",
           recipe: str = "recipes/quickstart.yaml") -> list[str]:
    """Register the deployments on work pool ``pool`` (created as a ``process`` pool when missing);
    return their names (``flow/deployment``).

    Args:
        pool: the work pool's name.
        source: project folder or git URL the workers run the flows from (default: :data:`PROJECT_DIR`).
        stages_only: register only ``r1-stage/<pool>`` (a pool that runs placed stages, not pipelines).
        pool_type: the pool's type when it has to be created (``process``; others must exist already).
        recipe: the recipe the deployments' parameters default to (relative to the project folder).
    """
    import prefect

    from deployments.serve import deployments, stage_deployment

    source = str(source or PROJECT_DIR)
    ensure_pool(pool, pool_type)
    deps = [] if stages_only else deployments(recipe, source=source)
    deps.append(stage_deployment(pool, source))
    prefect.deploy(*deps, work_pool_name=pool, build=False, push=False, print_next_steps_message=False)
    return [f"{d.flow_name}/{d.name}" for d in deps]


def main(pool: str, source: str | None, stages_only: bool, pool_type: str) -> int:
    """``r1 deploy``: register and print what was registered, and the worker command."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        raise ValueError("r1 deploy registers deployments on a Prefect server: set PREFECT_API_URL (r1 ui prints "
                         "it, e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api).")
    names = deploy(pool, source=source, stages_only=stages_only, pool_type=pool_type)
    url = os.environ.get("PREFECT_API_URL", "(PREFECT_API_URL)")
    print(f"registered {len(names)} deployments on work pool {pool!r} at {url}:\n"
          + "".join(f"  {n}\n" for n in names)
          + f"Start a worker for it (on the machine that should run them, MLFLOW_TRACKING_URI set):\n"
          f"  prefect worker start --pool {pool}")
    return 0
