"""Shared fixtures."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.servers import MLFLOW_BUCKET, PostgresServer, free_port, wait_for_health

# Set before anything starts, so that Ray workers (started later from this process) inherit it all:
# - trained feature extractors and reference statistics go to this session's cache, never ~/.cache/imm;
# - S3 means the session's moto server (`s3_server`) with fake credentials, never AWS. The secret is
#   distinctive so that tests can search runs for it.
S3_PORT = free_port()
S3_SECRET = f"imm-test-secret-{os.getpid()}-{time.time_ns()}"
os.environ["IMM_CACHE"] = tempfile.mkdtemp(prefix="imm-test-cache-")
os.environ.update({
    "AWS_ACCESS_KEY_ID": "IMMTESTACCESSKEY",
    "AWS_SECRET_ACCESS_KEY": S3_SECRET,
    "AWS_REGION": "us-east-1",
    "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{S3_PORT}",
    "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
})
for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(var, None)

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

    import orchestrator.run.launch  # noqa: F401  (selects Ray Train V2 before ray.train is imported)

    t0 = time.perf_counter()
    # log_to_driver=False: the workers' log lines would otherwise reach whatever test captures output at the time
    # address="local": a Ray of its own, even where a `ray start` cluster runs (or ran and left its address file)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield SimpleNamespace(startup_s=time.perf_counter() - t0)
    ray.shutdown()


@pytest.fixture
def tiny_toy2d(tmp_path):
    """Overrides for a 40-step, 2-worker toy2d run whose storage (MLflow, Ray checkpoints) lives in tmp_path."""
    return [*TINY_TOY2D, f"storage.root={tmp_path / 'runs'}"]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    """A real SQLite MLflow store shared by the session (creating one costs seconds): use your own experiment."""
    from orchestrator.track import tracking

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tracking.client(uri).search_experiments()  # creates the tables once
    return uri


@pytest.fixture
def no_ray(monkeypatch):
    """Trip if the command gets as far as connecting to Ray."""
    from orchestrator.infra import cluster

    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started for input that should have been rejected first")

    monkeypatch.setattr(cluster, "connect", tripwire)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible HTTP endpoint on 127.0.0.1 (moto's server mode), where this session's environment
    points S3 (AWS_ENDPOINT_URL_S3); yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT)
    server.start()
    yield f"http://127.0.0.1:{S3_PORT}"
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real `mlflow server` (SQLite backend, artifacts proxied to s3://MLFLOW_BUCKET/mlflow on the session's S3
    server) shared by the session: give each test its own experiment. Yields its URL."""
    import subprocess
    import sys

    import boto3

    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=MLFLOW_BUCKET)
    port, root = free_port(), tmp_path_factory.mktemp("mlflow-server")
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/mlflow", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    wait_for_health(url, proc, root / "server.log")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session (`tests.servers.PostgresServer`): `postgres.database()` is a
    fresh database's URL."""
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="imm-test-pg-")), free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server):
    """A boto3 client of the session's S3 server (the environment already has the endpoint and fake credentials)."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")


@pytest.fixture
def write_fake_cifar():
    """write(root, n=20): CIFAR-10's python batches in the official format (a dict of a uint8 array and a list of
    Python ints) with random pixels; returns test_batch."""

    def write(root, n=20):
        import pickle

        import numpy as np

        rng = np.random.default_rng(0)
        root.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, n).tolist()}
            with open(root / name, "wb") as f:
                pickle.dump(batch, f)
        return batch

    return write


@pytest.fixture
def mlflow_ui(tmp_path):
    """`imm-orch ui` (a real `mlflow server` process) on a SQLite store in tmp_path: its uri, url, port and log."""
    import subprocess
    import sys

    from orchestrator.track import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.client(uri).search_experiments()
    port, log = free_port(), tmp_path / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(url, proc, log)
    yield SimpleNamespace(uri=uri, url=url, port=port, log=log)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory):
    """A randomly initialised diffusers AutoencoderKL (3 -> 4 channels, 2x down), saved as save_pretrained writes a
    folder; yields (folder, the model in eval mode)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path, vae.eval()


@pytest.fixture(scope="session")
def inception_file(tmp_path_factory):
    """The FID Inception network with random weights, saved like pytorch-fid's file (what FID tests can use)."""
    import torch

    from imm.metrics.inception import InceptionV3

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "pt_inception-random.pth"
    torch.save(InceptionV3().state_dict(), path)
    return path
