"""orchestrator/ was grouped into rooms: run/, track/, registry/, infra/ beside commands/ and sweep/. Its
old module paths (orchestrator.tracking, orchestrator.launch, ...) are what old scripts, Ray job entrypoints and
anything pickled by module path name: each imports the very module that lives at the new path, in this process and
in a fresh one, while the project itself imports only the new paths."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import orchestrator
from orchestrator import MOVED

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_module_at_its_new_path(old):
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])
    # and `from orchestrator import X`, which finds the attribute the import set
    assert getattr(orchestrator, old.rsplit(".", 1)[1]) is importlib.import_module(MOVED[old])


@pytest.mark.parametrize("old", sorted(MOVED))
def test_no_file_is_left_at_an_old_path(old):
    assert not (ROOT / (old.replace(".", "/") + ".py")).exists()


def test_a_module_that_finds_the_checkout_from_its_own_file_still_finds_it():
    """`imm-orch submit` ships the checkout its code runs from: one room deeper, it still names that checkout."""
    from orchestrator.infra.submit import checkout_root

    assert checkout_root() == ROOT


def test_the_split_tracking_module_still_names_the_workers_logger():
    """tracking.py was split: the driver's client stayed (orchestrator.track.tracking), rank 0's logger went to
    orchestrator.track.rank_zero; the old names on the old path find it."""
    from orchestrator.track import rank_zero

    old = importlib.import_module("orchestrator.tracking")
    assert old.RankZeroLogger is rank_zero.RankZeroLogger and old.Superseded is rank_zero.Superseded
    with pytest.raises(AttributeError):
        old.NoSuchName  # noqa: B018


def test_the_split_sweep_spec_still_names_what_it_held():
    from orchestrator.sweep import space, spec, validation

    assert spec.Sweep is space.Sweep and spec.Param is space.Param and spec.validate_sweep is validation.validate_sweep
    assert spec.OPTUNA_SAMPLERS is validation.OPTUNA_SAMPLERS and spec.PRUNERS is validation.PRUNERS


def test_old_paths_and_objects_pickled_under_them_load_in_a_fresh_process(tmp_path):
    """A KillSwitch and a function pickled by their old module path (as a job or a pickle of the flat layout named
    them) load in a process that has imported nothing of orchestrator yet."""
    from orchestrator.run import worker

    cls, func = worker.KillSwitch, worker.train_worker
    try:
        cls.__module__ = func.__module__ = "orchestrator.worker"
        data = pickle.dumps((cls(step=3, rank=1, marker="m"), func))
    finally:
        cls.__module__ = func.__module__ = "orchestrator.run.worker"
    assert b"orchestrator.worker" in data and b"orchestrator.run.worker" not in data
    (tmp_path / "old.pkl").write_bytes(data)
    code = (
        "import pickle, sys\n"
        "kill, func = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "from orchestrator import tracking\n"
        "from orchestrator.tracking import RankZeroLogger\n"
        "from orchestrator.progress import ProgressPrinter\n"
        "import orchestrator.launch, orchestrator.run.launch\n"
        "assert orchestrator.launch is orchestrator.run.launch\n"
        "print(type(kill).__module__, kill.step, func.__module__, tracking.__name__, RankZeroLogger.__module__,\n"
        "      ProgressPrinter.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "old.pkl")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["orchestrator.run.worker", "3", "orchestrator.run.worker", "orchestrator.track.tracking",
                                  "orchestrator.track.rank_zero", "orchestrator.run.printer"]


def test_the_project_imports_only_the_new_paths():
    """Old paths are for what lives outside the project; inside it every import names the module where it is."""
    from tests.test_layout import imports

    old_imports = [f"{path.relative_to(ROOT)} {name}" for folder in ("orchestrator", "tests", "imm")
                   for path in sorted((ROOT / folder).rglob("*.py")) for name in sorted(imports(path, MOVED))]
    assert not old_imports, "imports of old orchestrator paths:\n" + "\n".join(old_imports)
