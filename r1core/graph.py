"""A recipe's stage graph: what feeds what, checked before anything runs, and run order.

Each stage declares its inputs (:attr:`r1core.config._Stage.INPUTS`; this module reads recipes and never imports
:mod:`r1core.config`, which calls :func:`check_graph` when a recipe loads): a ``model``, a
``dataset``, an ``evaluation`` or a ``registration``. An input is a reference:

- ``base``: the recipe's ``model`` (models only);
- ``<stage>.output``: the output of another stage, which must be of the input's kind (grpo and
  sft stages output models; curate and rejection_sampling stages data sets; evaluate stages
  evaluations; register stages registrations; compare stages reports, which nothing reads);
- anything else: a model reference (hub id, path, ``models:/...``; models only).

:func:`check_graph` names the key of every unknown stage, wrong kind or cycle;
:func:`waves` gives the run order, stages whose inputs are all ready grouped together (the
pipeline flow runs a wave's stages concurrently, up to the recipe's ``concurrency``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from r1core.errors import RecipeError

if TYPE_CHECKING:
    from r1core.config import Recipe

OUTPUT_SUFFIX = ".output"
PRODUCERS = {"model": ("grpo", "sft"), "dataset": ("curate", "rejection_sampling"), "evaluation": ("evaluate",),
             "registration": ("register",)}
_OUTPUT_KEY = {"model": "model_uri", "dataset": "dataset_uri"}


def upstream(ref: str) -> str | None:
    """The stage a reference reads from (``"grpo.output"`` -> ``"grpo"``), or None."""
    return ref[: -len(OUTPUT_SUFFIX)] if ref.endswith(OUTPUT_SUFFIX) else None


def dependencies(recipe: Recipe) -> dict[str, list[str]]:
    """Stage name -> the stages it reads from, in recipe order."""
    return {name: [u for ref, _ in st.input_refs().values() if (u := upstream(ref)) is not None]
            for name, st in recipe.stages.items()}


def _input_key(key: str) -> str:
    return "pass_rate.model" if key == "reference_model" else key


def check_graph(recipe: Recipe, source: str = "<recipe>") -> None:
    """Check every input reference and the absence of cycles.

    Raises:
        RecipeError: listing each bad input by its key (``stages.grpo.model: ...``) with the fix,
            or the stages that form a cycle.
    """
    problems = []
    for name, st in recipe.stages.items():
        for key, (ref, kind) in st.input_refs().items():
            where = f"stages.{name}.{_input_key(key)}"
            wanted = " or ".join(PRODUCERS[kind])
            up = upstream(ref)
            if up is None:
                if kind != "model":
                    problems.append(f"{where}: {ref!r} is not a stage output; name a {wanted} stage as '<stage>.output'")
                elif ref in recipe.stages:
                    problems.append(f"{where}: {ref!r} is a stage; its output is '{ref}{OUTPUT_SUFFIX}'")
                continue
            if up not in recipe.stages:
                problems.append(f"{where}: {ref!r} names no stage of this recipe (its stages: {', '.join(recipe.stages)})")
                continue
            produced = recipe.stages[up].OUTPUT
            if produced != kind:
                problems.append(f"{where}: {ref!r} is a {produced} (stage {up!r} is a {recipe.stages[up].type} stage); "
                                f"this input takes a {kind}, from a {wanted} stage")
        if st.type == "register" and (ev := upstream(st.evaluation)) in recipe.stages and \
                recipe.stages[ev].type == "evaluate" and recipe.stages[ev].model != st.model:
            problems.append(f"stages.{name}.evaluation: stage {ev!r} evaluates {recipe.stages[ev].model!r}, but this "
                            f"stage registers {st.model!r}; the gate must read the registered model's metrics")
        if st.type == "compare":
            problems += _compare_problems(recipe, name, st)
    if problems:
        raise RecipeError(f"Recipe {source} has a bad stage graph:\n" + "\n".join(f"  {p}" for p in problems))
    waves(recipe, source)


def _compare_problems(recipe: Recipe, name: str, st) -> list[str]:
    """A compare stage's protocol must be an evaluate stage, and the version it tags the student's."""
    problems = []
    if st.protocol is not None and (recipe.stages.get(st.protocol) is None or
                                    recipe.stages[st.protocol].type != "evaluate"):
        evals = [n for n, s in recipe.stages.items() if s.type == "evaluate"]
        problems.append(f"stages.{name}.protocol: {st.protocol!r} is not an evaluate stage of this recipe (its evaluate "
                        f"stages: {', '.join(evals) or 'none'}); name one, or leave protocol out for the defaults")
    reg = recipe.stages.get(upstream(st.registration or "") or "")
    if reg is not None and reg.type == "register" and reg.model != st.student:
        problems.append(f"stages.{name}.registration: stage {upstream(st.registration)!r} registers {reg.model!r}, but "
                        f"this stage reports on student {st.student!r}; tag the version of the student")
    return problems


def waves(recipe: Recipe, source: str = "<recipe>") -> list[list[str]]:
    """Run order: successive groups of stages whose inputs the earlier groups produce.

    Raises:
        RecipeError: the stages form a cycle (named in order, e.g. ``a -> b -> a``).
    """
    deps = dependencies(recipe)
    done: set[str] = set()
    order: list[list[str]] = []
    remaining = list(recipe.stages)
    while remaining:
        ready = [n for n in remaining if all(d in done for d in deps[n])]
        if not ready:
            raise RecipeError(f"Recipe {source} has a bad stage graph:\n  stages form a cycle: {_cycle(deps, remaining)}")
        order.append(ready)
        done.update(ready)
        remaining = [n for n in remaining if n not in done]
    return order


def _cycle(deps: dict[str, list[str]], remaining: list[str]) -> str:
    path, node = [], remaining[0]
    while node not in path:
        path.append(node)
        node = next(d for d in deps[node] if d in remaining)
    cycle = path[path.index(node):] + [node]
    return " -> ".join(cycle)


def ancestors(recipe: Recipe, name: str) -> list[str]:
    """Every stage ``name`` depends on, directly or not, in recipe order."""
    deps = dependencies(recipe)
    seen: set[str] = set()
    stack = list(deps[name])
    while stack:
        s = stack.pop()
        if s not in seen:
            seen.add(s)
            stack.extend(deps[s])
    return [s for s in recipe.stages if s in seen]


def select(recipe: Recipe, targets: list[str]) -> list[str]:
    """The stages to run for ``targets`` (stage names or types): those stages and every stage
    they depend on, in recipe order.

    Raises:
        RecipeError: a target that is neither a stage nor a stage type of the recipe.
    """
    chosen: set[str] = set()
    for target in targets:
        names = [target] if target in recipe.stages else recipe.stages_of_type(target)
        if not names:
            raise RecipeError(f"{target!r} is neither a stage nor a stage type of recipe {recipe.name} "
                              f"(its stages: {', '.join(recipe.stages)}).")
        for name in names:
            chosen.update([name, *ancestors(recipe, name)])
    return [s for s in recipe.stages if s in chosen]


def resolve_inputs(recipe: Recipe, name: str, outputs: dict[str, dict]) -> dict[str, Any]:
    """The values a stage's inputs take, given earlier outputs (``outputs["base"]`` is the base model).

    Models and data sets resolve to URIs; an evaluation or a registration to the producing stage's result dict.
    """
    values: dict[str, Any] = {}
    for key, (ref, kind) in recipe.stages[name].input_refs().items():
        source = "base" if ref == "base" else upstream(ref)
        if source is None:
            values[key] = ref
        elif kind in ("evaluation", "registration"):
            values[key] = outputs[source]
        else:
            values[key] = outputs[source][_OUTPUT_KEY[kind]]
    return values


def order(recipe: Recipe) -> list[str]:
    """Every stage in an order where each comes after the stages it reads from (:func:`waves`, flattened)."""
    return [name for wave in waves(recipe) for name in wave]
