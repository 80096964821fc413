"""The layout a newcomer reads top-down: imm/ stands on floors whose imports run one way (down), no import cycle
anywhere, no module over 400 lines and no definition over 150. Imports inside functions count: they hide an upward
arrow or a cycle, they do not remove it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("imm", "orchestrator")
MAX_LINES = 400
MAX_DEFINITION_LINES = 150

# imm/'s floors, bottom first (README.md, "The code"): a module may import from its own floor and those below.
FLOORS = (
    ("imm", "imm.maths"),  # the package's own __init__ imports nothing of it; the maths of the method
    ("imm.checks",),  # ConfigError and the checks every floor may use
    ("imm.data",),
    ("imm.networks",),
    ("imm.methods",),
    ("imm.sampling",),
    ("imm.metrics",),
    ("imm.training",),
    ("imm.config",),  # the run config's schema, assembled from what the floors below register
    ("imm.trained", "imm.import_official"),  # what loads a stored config: a trained model, official checkpoints
    ("imm.train", "imm.sample"),  # the command lines
    ("orchestrator",),
)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, mods) -> set[str]:
    """The project's modules `path` imports anywhere in its body (a `from m import x` counts m, and m.x if x is a
    module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        out |= {t for t in targets if t in mods}
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports anywhere in its body. A package's own submodules are left out
    (a registry package imports the modules that register themselves, and they import its `register`)."""
    mods = modules()
    return {name: {t for t in imports(path, mods)
                   if t != name and not t.startswith(name + ".") and not name.startswith(t + ".")}
            for name, path in mods.items()}


def floor(module: str) -> int:
    """The floor of the longest prefix that names `module`'s room."""
    best = max(((len(p), i) for i, room in enumerate(FLOORS) for p in room
                if module == p or module.startswith(p + ".")), default=None)
    assert best is not None, f"{module} stands on no floor: add its room to FLOORS"
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (floor {floor(m)}) imports {t} (floor {floor(t)})"
                  for m, targets in graph.items() for t in targets if floor(t) > floor(m))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[m] = 2
        path.pop()
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_imports_run_down_the_floors():
    up = upward_imports(import_graph())
    assert not up, "imports that run up a floor:\n" + "\n".join(up)


def test_the_floor_check_sees_an_import_inside_a_function():
    graph = {"imm.methods.x": {"imm.sampling.y"}, "imm.sampling.y": set()}
    assert upward_imports(graph) == ["imm.methods.x (floor 4) imports imm.sampling.y (floor 5)"]
    source = "def f():\n    from imm.config import load_config\n"
    mods = {"imm.config": None}
    tmp = ROOT / "tests" / "__floor_probe.py"
    try:
        tmp.write_text(source)
        assert imports(tmp, mods) == {"imm.config"}
    finally:
        tmp.unlink()


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_definition_over_150_lines():
    long = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                n = node.end_lineno - node.lineno + 1 + len(node.decorator_list)
                if n > MAX_DEFINITION_LINES:
                    long[f"{name}.{node.name}"] = n
    assert not long, f"definitions over {MAX_DEFINITION_LINES} lines: {long}"


def test_no_two_modules_of_one_name_in_different_rooms():
    """A name says what a module is wherever it is met; a command may share its module's name (commands/promote.py
    runs the registry's promote.py), and each registry room has its `registry` and `common`."""
    rooms: dict[str, list[str]] = {}
    for name in modules():
        parts = name.split(".")
        if len(parts) > 1 and parts[-1] not in ("registry", "common"):
            rooms.setdefault(parts[-1], []).append(name)
    clashes = {base: names for base, names in rooms.items() if len([n for n in names if ".commands." not in n]) > 1}
    assert not clashes, f"modules of one name in different rooms: {clashes}"
