"""The layers of the design notes: a module may import only its own layer and those below."""

import ast
from pathlib import Path

import cotune

PACKAGE = Path(cotune.__file__).parent
# lowest first; the package root, the CLI and runs sit on top
LAYERS = ["core", "lm", "adapters", "evaluate", "finetune", "optimize", "tasks", "runs", "cli"]


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "cotune" or len(parts) < 2:
        return None
    return parts[1]


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_layer_imports_a_higher_one():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py")
        if own not in LAYERS:
            continue  # the package root wires everything together
        for module in imported_modules(path):
            target = layer_of(module)
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(own):
                violations.append(f"{relative} imports {module}")
    assert violations == []


def test_core_does_no_io():
    banned = {"open", "sqlite3", "socket", "urllib", "http", "subprocess", "pathlib", "os"}
    offenders = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        modules = {m.split(".")[0] for m in imported_modules(path)}
        offenders += [f"{path.name} imports {m}" for m in modules & banned]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                offenders.append(f"{path.name} calls open()")
    assert offenders == []
