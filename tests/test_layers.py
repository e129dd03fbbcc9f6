"""The layers of the design notes: a module may import only its own layer and those below, and
no modules import each other in a circle.

Every import counts: at module level, inside functions, under ``if TYPE_CHECKING:``, and
``importlib.import_module("...")`` with a literal name: a circle hidden in a function is still
a circle (a change to either side touches the other).
"""

import ast
from pathlib import Path

import cotune

PACKAGE = Path(cotune.__file__).parent
# lowest first; the package root, the CLI and runs sit on top
LAYERS = ["core", "lm", "adapters", "evaluate", "finetune", "optimize", "tasks", "runs", "cli"]
LATE_BOUND = {("core/runtime.py", "cotune.adapters.names")}
"""Upward references allowed by name at call time, each documented where it is made: core
resolves an adapter name (``"chat"``, ``"json"``) through the adapters layer, which owns the
names, instead of a table registered by importing the package."""


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "cotune" or len(parts) < 2:
        return None
    return parts[1]


def module_name(path: Path) -> str:
    parts = ["cotune", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(encoding="utf-8"), module_name(path),
                      is_package=path.name == "__init__.py")


def imports_in(source: str, own: str, *, is_package: bool = False) -> set[str]:
    """The dotted names module ``own`` imports, relative imports resolved; ``from a import b``
    gives ``a.b`` when that is a module of cotune, else ``a``."""
    package = own if is_package else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
        elif (isinstance(node, ast.Call) and _called_name(node.func) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return found


def _called_name(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def _is_module(dotted: str) -> bool:
    if dotted.split(".")[0] != "cotune":
        return False
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (
        PACKAGE / relative / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """cotune's modules and, for each, the cotune modules it imports."""
    modules = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {name: {m for m in imports_of(path) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each group of ``strongly_connected`` modules, as the module names in
    import order, the first repeated at the end."""
    return [circle_in(graph, group) for group in strongly_connected(graph)]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of two or more modules that each reach all the others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def circle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """The shortest circle from the group's first module back to itself (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no circle in {sorted(group)}")  # pragma: no cover


def test_no_layer_imports_a_higher_one():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py")
        if own not in LAYERS:
            continue  # the package root wires everything together
        for module in imports_of(path):
            target = layer_of(module)
            if (target in LAYERS and LAYERS.index(target) > LAYERS.index(own)
                    and (relative.as_posix(), module) not in LATE_BOUND):
                violations.append(f"{relative} imports {module}")
    assert violations == []


def test_no_layer_imports_the_package_facade():
    """``cotune/__init__.py`` re-exports the layers; a layer that imports it depends on all of
    them (the version lives in ``cotune._version``)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0].removesuffix(".py") in LAYERS and "cotune" in imports_of(path):
            offenders.append(f"{relative} imports the package root")
    assert offenders == []


def test_no_modules_import_each_other_in_a_circle():
    graph = import_graph()
    circles = [f"{' -> '.join(circle_in(graph, group))}  "
               f"(in a group of {len(group)}: {', '.join(sorted(group))})"
               for group in strongly_connected(graph)]
    assert circles == [], "import circles:\n" + "\n".join(circles)


def test_the_circle_check_finds_imports_in_functions_and_names_the_circle():
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .signature import X\n"
              "def f():\n    from cotune.core import predict\n"
              "import importlib\nimportlib.import_module('cotune.lm')\n")
    assert imports_in(source, "cotune.core.trace") == {
        "typing", "cotune.core.signature", "cotune.core.predict", "importlib", "cotune.lm"}
    graph = {"a": {"b", "d"}, "b": {"c"}, "c": {"a"}, "d": set(), "e": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]


def test_core_does_no_io():
    banned = {"open", "sqlite3", "socket", "urllib", "http", "subprocess", "pathlib", "os",
              "rich", "sys"}
    offenders = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        modules = {m.split(".")[0] for m in imports_of(path)}
        offenders += [f"{path.name} imports {m}" for m in modules & banned]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("open", "print"):
                offenders.append(f"{path.name} calls {node.func.id}()")
    assert offenders == []
