"""benchmarks/ is a package sorted by kind: every script imports as a module of it (no sys.path edits, here or in the
tests), and benchmarks/README.md indexes every script with the command that runs it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.rglob("*.py") if p.name != "__init__.py")


def module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_every_folder_is_a_package_of_one_kind():
    folders = {p.parent for p in SCRIPTS}
    assert folders == {BENCH, BENCH / "speed", BENCH / "studies", BENCH / "reports"}
    assert all((f / "__init__.py").is_file() for f in folders)
    assert [p.name for p in SCRIPTS if p.parent == BENCH] == ["device_check.py"]  # the GPU check keeps its path


def test_nothing_edits_sys_path_to_reach_a_benchmark():
    edits = re.compile(r"sys\.path\.(insert|append)\(|runpy\.run_path\(")
    assert [str(p.relative_to(ROOT)) for p in SCRIPTS if edits.search(p.read_text())] == []
    reach = re.compile(r"(sys\.path\.\w+\(|runpy\.run_path\().*benchmarks")
    assert [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").glob("*.py")) if reach.search(p.read_text())] == []


def test_the_index_names_every_script_with_its_command():
    text = (BENCH / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    for path in SCRIPTS:
        rel = str(path.relative_to(BENCH))
        matches = [r for r in rows if r.startswith(f"| `{rel}` |")]
        assert len(matches) == 1, f"benchmarks/README.md: {len(matches)} rows for {rel}"
        row = matches[0]
        if path.name not in ("common.py", "device_check.py"):
            assert f"python -m {module(path)}" in row, row
    assert "python3 benchmarks/device_check.py" in text


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(BENCH)))
def test_every_script_imports_as_a_module_of_the_package(path):
    mod = importlib.import_module(module(path))
    assert path.name == "common.py" or callable(getattr(mod, "main", None))
