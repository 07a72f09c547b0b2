"""``r1``: the command line. ``r1 --help`` lists the subcommands.

- ``r1 pipeline --recipe recipes/quickstart.yaml [--set key=value ...] [--fresh]``
- ``r1 eval --model MODEL [--recipe R] [--benchmarks math500,aime24] [--num-samples K] [--limit N] [--max-new-tokens T]
  [--budgets 64,128,256 [--num-waits M]]``
- ``r1 recipe --recipe R [--set ...]``: validate a recipe and print it resolved.
- ``r1 ui [--prefect-port 4200] [--mlflow-port 5000] [--backend-store-uri URI] [--artifacts-destination D]``:
  start the Prefect and MLflow servers (UIs).
- ``r1 serve [--prefect-api-url URL]``: serve the deployments against that Prefect server.
- ``r1 deploy --pool NAME [--source DIR|GIT_URL] [--stages-only]``: register them on a work pool.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="recipes/quickstart.yaml", help="recipe YAML (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set grpo.max_steps=2 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1", description="The DeepSeek-R1 recipe as tracked Prefect flows.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pipeline", help="run a recipe's stages (e.g. curate, grpo, rejection sampling, sft, evaluate, register)")
    _common(p)
    p.add_argument("--fresh", action="store_true", help="re-run every stage even if a cached result exists")
    e = sub.add_parser("eval", help="evaluate a model with the R1 protocol")
    _common(e)
    e.add_argument("--model", default=None, help="MLflow model URI, hub id or path (default: the recipe's base model)")
    e.add_argument("--benchmarks", default=None, help="comma-separated, e.g. math500,aime24")
    e.add_argument("--num-samples", type=int, default=None, help="k samples per problem")
    e.add_argument("--limit", type=int, default=None, help="first N problems per benchmark")
    e.add_argument("--max-new-tokens", type=int, default=None)
    e.add_argument("--budgets", default=None, help="s1 budget forcing sweep: comma-separated thinking budgets in tokens")
    e.add_argument("--num-waits", type=int, default=None, help="budget forcing: times 'Wait' extends the thinking")
    r = sub.add_parser("recipe", help="validate a recipe and print it with overrides applied")
    _common(r)
    u = sub.add_parser("ui", help="start prefect server and mlflow server on 127.0.0.1 and print their URLs")
    u.add_argument("--prefect-port", type=int, default=4200)
    u.add_argument("--mlflow-port", type=int, default=5000)
    u.add_argument("--backend-store-uri", default=None,
                   help="MLflow store, e.g. postgresql://user@host:5432/mlflow (default: the project's SQLite file)")
    u.add_argument("--artifacts-destination", default=None,
                   help="where the MLflow server keeps the artifacts it serves (default: <state>/mlartifacts)")
    u.add_argument("--prefect-database-url", default=None,
                   help="Prefect's database, e.g. postgresql+asyncpg://user@host:5432/prefect (default: SQLite)")
    u.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0: reachable from other machines)")
    s = sub.add_parser("serve", help="serve the deployments (Run them from the Prefect UI)")
    s.add_argument("--prefect-api-url", default=None, help="default: $PREFECT_API_URL or http://127.0.0.1:4200/api")
    d = sub.add_parser("deploy", help="register the deployments on a Prefect work pool (run by its workers)")
    d.add_argument("--pool", required=True, help="work pool name (created as a process pool when missing)")
    d.add_argument("--source", default=None,
                   help="project folder or git URL the workers run the flows from (default: this project folder)")
    d.add_argument("--stages-only", action="store_true",
                   help="register only r1-stage/POOL, which runs the recipe stages placed on POOL (work_pool: POOL)")
    d.add_argument("--pool-type", default="process", help="type of a pool that must be created (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)  # "no model card on the hub" for local models
    import warnings

    # Deprecation notices from transformers/pyarrow and MLflow's schema hints: not the user's to act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*dataset source can be interpreted in multiple ways.*")
    warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
    from r1core.config import RecipeError, load_recipe
    from r1core.data import DataError
    from r1core.models import ModelNotFoundError

    try:
        if args.command == "recipe":
            import yaml

            from r1core import stages

            recipe = load_recipe(args.recipe, args.overrides)
            stages.validate(recipe)  # everything r1 pipeline checks before it starts: data, models, rewards, args
            print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
            return 0
        if args.command in ("pipeline", "eval"):
            return _with_prefect_api(_pipeline if args.command == "pipeline" else _eval, args)
        if args.command == "ui":
            from deployments import servers

            return servers.ui(args.prefect_port, args.mlflow_port, backend_store_uri=args.backend_store_uri,
                              artifacts_destination=args.artifacts_destination,
                              prefect_database_url=args.prefect_database_url, host=args.host)
        if args.command == "serve":
            from deployments.serve import main as serve

            return serve(args.prefect_api_url)
        if args.command == "deploy":
            from deployments.deploy import main as deploy

            return deploy(args.pool, args.source, args.stages_only, args.pool_type)
    except (RecipeError, DataError, ModelNotFoundError, ValueError, servers_error()) as err:
        print(f"r1: error: {err}", file=sys.stderr)
        return 2
    return 1


def servers_error() -> type:
    from deployments.servers import ServerStartError

    return ServerStartError


def _with_prefect_api(command, args) -> int:
    """Run ``command(args)`` with SIGTERM handled as Ctrl-C (the flow run ends Crashed or Cancelled,
    then the servers stop) and, when no ``PREFECT_API_URL`` is set, against a temporary Prefect
    server this process owns (:func:`deployments.servers.temporary_prefect_server`: no orphan
    after a ``kill -9``). ``command`` checks the recipe before the server starts."""
    import contextlib
    import os

    from deployments import servers

    servers.sigterm_as_interrupt()

    @contextlib.contextmanager
    def server():
        """A Prefect API (the temporary one when none is set) where this process's flow runs are
        tagged with their owner, and runs a killed owner left Running are marked Crashed first."""
        with servers.temporary_prefect_server() if not os.environ.get("PREFECT_API_URL") else contextlib.nullcontext():
            from prefect import tags

            from tasks.stages import crash_orphaned_flow_runs, owner_flow_tag

            marked = crash_orphaned_flow_runs()
            if marked:
                print(f"r1: marked Crashed {len(marked)} flow run(s) a killed r1 process left Running: "
                      + ", ".join(marked), file=sys.stderr)
            with tags(owner_flow_tag()):
                yield

    try:
        return command(args, server)
    except KeyboardInterrupt:
        print("r1: interrupted; the flow run was marked and the servers stopped", file=sys.stderr)
        return 130


def _pipeline(args, server) -> int:
    from r1core import stages, summary
    from r1core.config import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    stages.validate(recipe, here=True)  # fail fast, before Prefect starts
    with server():
        from flows.pipeline import r1_pipeline

        t0 = time.perf_counter()
        out = r1_pipeline(recipe=args.recipe, overrides=args.overrides, fresh=args.fresh)
    minutes = (time.perf_counter() - t0) / 60
    print("\n" + summary.text_table(recipe, out["parent_run_id"], out))
    print(f"pipeline finished in {minutes:.1f} min")
    return 0


def _eval(args, server) -> int:
    from r1core import stages
    from r1core.config import evaluation_recipe, load_recipe

    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else None
    recipe = load_recipe(args.recipe, args.overrides)
    model = args.model or recipe.model
    params = dict(benchmarks=args.benchmarks.split(",") if args.benchmarks else None, num_samples=args.num_samples,
                  limit=args.limit, max_new_tokens=args.max_new_tokens, budgets=budgets, num_waits=args.num_waits)
    settings = {k: v for k, v in params.items() if v is not None and k not in ("budgets", "num_waits")}
    # bad settings, benchmarks or model references fail here, before Prefect starts
    stages.validate(evaluation_recipe(recipe, model, None, settings)[0])
    with server():
        from flows.evaluate import evaluate

        out = evaluate(model=model, recipe=args.recipe, overrides=args.overrides, **params)
    for k, v in sorted(out["metrics"].items()):
        print(f"{k:40s} {v:.4f}")
    print(f"MLflow run: {out['run_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
