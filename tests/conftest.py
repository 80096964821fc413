"""Shared fixtures."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

# --- orchestrator: one local Ray per test session, and a tiny 2-worker toy run ---------------------------

TINY_TOY2D = [
    "model.hidden=32",
    "model.depth=1",
    "train.steps=40",
    "train.batch_size=64",
    "train.log_every=5",
    "train.checkpoint_every=20",
    "eval.every=20",
    "eval.n_samples=200",
    "eval.steps=[1,2]",
    "trainer.num_workers=2",
]


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (4 logical CPUs, no dashboard) shared by the tests that need one; its start-up time."""
    import ray

    import orchestrator.launch  # noqa: F401  (selects Ray Train V2 before ray.train is imported)

    t0 = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield SimpleNamespace(startup_s=time.perf_counter() - t0)
    ray.shutdown()


@pytest.fixture
def tiny_toy2d(tmp_path):
    """Overrides for a 40-step, 2-worker toy2d run whose storage (MLflow, Ray checkpoints) lives in tmp_path."""
    return [*TINY_TOY2D, f"storage.root={tmp_path / 'runs'}"]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    """A real SQLite MLflow store shared by the session (creating one costs seconds): use your own experiment."""
    from orchestrator import tracking

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tracking.client(uri).search_experiments()  # creates the tables once
    return uri


@pytest.fixture
def no_ray(monkeypatch):
    """Trip if the command gets as far as connecting to Ray."""
    from orchestrator import cluster

    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started for input that should have been rejected first")

    monkeypatch.setattr(cluster, "connect", tripwire)
