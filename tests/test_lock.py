"""One lock for every environment: requirements.lock pins every package (transitives included), the suite runs in
exactly that environment, the lock is pyproject.toml's (not stale), pyproject.toml declares every package the code
imports, and the image installs the same lock."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import sysconfig
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"pip"}  # the venv's installer, not part of the environment the lock describes


def locked(text: str | None = None) -> dict[str, str]:
    """{name: version} of requirements.lock's pins."""
    text = (ROOT / "requirements.lock").read_text() if text is None else text
    return {canonicalize_name(m[1]): m[2] for m in re.finditer(r"(?m)^([A-Za-z0-9_.-]+)==(\S+)", text)}


def installed() -> dict[str, str]:
    """The environment's own packages: those in its site-packages. Not sys.path's other folders, such as the
    copies Ray vendors and puts on sys.path once imported (ray/thirdparty_files: colorama)."""
    folders = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions(path=folders)}


def differences(lock: dict[str, str], env: dict[str, str]) -> list[str]:
    """How `env` differs from `lock`. A local label (torch's +cpu) is not a difference: the lock pins the public
    version, which the CPU build here and the CUDA build in the image both are."""
    wrong = [f"{name}: locked {v}, installed {env.get(name, 'nothing')}" for name, v in sorted(lock.items())
             if name not in env or Version(env[name]).public != Version(v).public]
    extra = [f"{name} {env[name]}: installed, not in the lock" for name in sorted(set(env) - set(lock) - TOOLS)
             if name != "imm-orch"]
    return wrong + extra


def test_the_suite_runs_in_the_locked_environment():
    found = differences(locked(), installed())
    assert not found, "the environment differs from requirements.lock (make clean test rebuilds it):\n" + \
        "\n".join(found)


def test_a_difference_from_the_lock_is_caught():
    lock = {"numpy": "2.4.6", "torch": "2.13.0"}
    assert differences(lock, {"numpy": "2.4.6", "torch": "2.13.0+cpu", "pip": "26.0"}) == []
    assert differences(lock, {"numpy": "2.4.5", "torch": "2.13.0+cu130"}) == ["numpy: locked 2.4.6, installed 2.4.5"]
    assert differences(lock, {"numpy": "2.4.6", "torch": "2.13.0", "leftover": "1.0"}) == \
        ["leftover 1.0: installed, not in the lock"]


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    reqs = [Requirement(r) for r in project["dependencies"] + [r for name in ("postgres", "gpu", "test")
                                                                for r in extras[name]]]
    return [r for r in reqs if canonicalize_name(r.name) != "imm-orch"]


def test_the_lock_satisfies_pyproject():
    """A requirement added or raised in pyproject.toml without `make lock` fails here."""
    lock = locked()
    stale = [str(r) for r in requirements() if canonicalize_name(r.name) not in lock
             or not r.specifier.contains(Version(lock[canonicalize_name(r.name)]).public, prereleases=True)]
    assert not stale, f"requirements.lock does not satisfy {stale}: run make lock"


def test_pyproject_declares_every_package_the_code_imports():
    modules = set()
    for path in [*(ROOT / "imm").rglob("*.py"), *(ROOT / "orchestrator").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"imm", "orchestrator"}
    providers = md.packages_distributions()
    declared = {canonicalize_name(r.name) for r in requirements()}
    undeclared = {m: providers.get(m) for m in third_party
                  if not {canonicalize_name(d) for d in providers.get(m, [])} & declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_image_installs_the_lock_and_its_torch_is_the_makefiles():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^COPY requirements\.lock ", dockerfile, re.M)
    assert re.search(r"^RUN pip install -r /tmp/requirements\.lock", dockerfile, re.M)
    assert "requirements.txt" not in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    assert f"torch=={locked()['torch']}" == re.search(r"^TORCH := (\S+)$", makefile, re.M).group(1)
    assert re.search(r"pip install --quiet( --no-compile)? -r requirements\.lock", makefile)  # laptops and CI (make test)
