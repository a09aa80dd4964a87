"""The package's folders show the data path: imports point one way, from a later stage to an earlier one, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import t2ilab

PACKAGE = Path(t2ilab.__file__).resolve().parent
# The data path, first to last. A module may import from its own stage, an earlier one, or the shared base
# (the top-level modules that import no stage). Entry points at the top (cli, demo, train_cli) may import anything.
STAGES = ["datasets", "training", "sampling", "review", "reporting"]
ENTRY_POINTS = {"t2ilab.cli", "t2ilab.demo", "t2ilab.train_cli", "t2ilab.__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "_bundled" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the t2ilab modules it imports (at the top or inside functions)."""
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("t2ilab"):
                candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c not in (name, "t2ilab")}
        graph[name] = targets
    return graph


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in STAGES else None


def test_every_module_lives_in_a_stage_or_is_shared_base_or_an_entry_point():
    flat = {m for m in _modules() if m.count(".") == 1 and m.split(".")[1] not in STAGES}
    base = flat - ENTRY_POINTS
    assert base <= {"t2ilab.config", "t2ilab.config_yaml", "t2ilab.files", "t2ilab.image_grids", "t2ilab.intervals", "t2ilab.paths", "t2ilab.readable"}, base
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and len(doc) > 30, f"t2ilab.{stage}.__init__ says what it holds"


def test_imports_point_down_the_data_path():
    graph = _imports(_modules())
    wrong = []
    for module, targets in graph.items():
        if module in ENTRY_POINTS:
            continue
        here = _stage(module)
        for target in targets:
            there = _stage(target)
            if target in ENTRY_POINTS:  # nothing imports an entry point
                wrong.append((module, target))
            elif there is not None and (here is None or STAGES.index(there) > STAGES.index(here)):
                wrong.append((module, target))  # the base imports no stage; a stage only its own or earlier ones
    assert not wrong, "imports against the data path: " + ", ".join(f"{a} -> {b}" for a, b in sorted(wrong))


def test_no_import_cycles():
    graph = _imports(_modules())
    seen, on_path, cycles = set(), [], []

    def visit(node: str) -> None:
        if node in on_path:
            cycles.append(on_path[on_path.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        on_path.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
