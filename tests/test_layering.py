"""The layering the project's layout promises: ``r1core`` is the library (no Prefect, no flows,
tasks or deployments), its modules import one another without cycles, and a stage is found at
``r1core/stages/<type>.py``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
R1CORE = ROOT / "r1core"
FORBIDDEN = ("prefect", "flows", "tasks", "deployments")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(imported module, at module level)`` for every import in ``path`` (relative ones resolved;
    imports only type checkers see, under ``if TYPE_CHECKING:``, are not imports at run time)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    top = set(map(id, tree.body))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.append((base, id(node) in top))
            out += [(f"{base}.{a.name}", id(node) in top) for a in node.names]
    return out


def test_r1core_imports_none_of_prefect_flows_tasks_deployments():
    bad = [f"{p.relative_to(ROOT)} imports {name}" for p in R1CORE.rglob("*.py")
           for name, _ in _imports(p) if name.split(".")[0] in FORBIDDEN]
    assert bad == []


def test_no_import_cycle_inside_r1core():
    """Imports between r1core modules form no cycle, deferred imports (inside functions) included."""
    modules = {_module_name(p): p for p in R1CORE.rglob("*.py")}
    graph = {m: sorted({n for n, _ in _imports(p) if n in modules and n != m}) for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages are built, not a cycle
    graph = {m: [n for n in deps if not (n.startswith(m + ".") and modules[m].name == "__init__.py")]
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                cycles.append(" -> ".join(path[path.index(n):] + [n]) if n in path else f"{m} -> {n}")
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_r1core_imports_with_prefect_absent():
    """Every stage imports in a process where ``import prefect`` fails."""
    code = ("import sys; sys.modules['prefect'] = None\n"
            "import r1core.stages, r1core.sampling, r1core.evaluation, r1core.grpo, r1core.sft, r1core.rejection\n"
            "print(sorted(r1core.stages.STAGE_FUNCTIONS))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(sorted(["curate", "grpo", "rejection_sampling", "sft", "evaluate", "register",
                                                 "compare"]))


def test_one_module_per_stage_type():
    from r1core.config import STAGE_TYPES
    from r1core.stages import STAGE_FUNCTIONS

    assert set(STAGE_FUNCTIONS) == set(STAGE_TYPES)
    for type_, fn in STAGE_FUNCTIONS.items():
        assert fn.__module__ == f"r1core.stages.{type_}" and (R1CORE / "stages" / f"{type_}.py").is_file()
