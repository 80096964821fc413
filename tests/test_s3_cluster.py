"""The cluster setting on real processes on 127.0.0.1: an S3 server (moto), a real `mlflow server` with a
SQLite backend and `--artifacts-destination s3://...`, and 2-worker training runs on the session's Ray whose
checkpoints go to S3. Also: S3 answering 503 during checkpoint uploads, and no secret in any run record."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from orchestrator import cli, load_model
from orchestrator.track import tracking
from tests.faulty_s3 import FaultyS3
from tests.servers import MLFLOW_BUCKET as BUCKET

pytestmark = pytest.mark.slow


def keys(s3, prefix: str) -> dict[str, int]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def test_two_worker_run_keeps_everything_in_s3_and_its_model_is_promoted_and_sampled(
        ray_local, mlflow_server, s3_env, tiny_toy2d, tmp_path, capsys):
    args = ["train", "toy2d", *tiny_toy2d, f"storage.ray_storage=s3://{BUCKET}/ray",
            "--name", "on-s3", "--tracking-uri", mlflow_server, "--experiment", "s3"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    run_id = re.search(r"^mlflow run id: (\w+)$", out, re.M).group(1)
    assert f"final checkpoint: s3://{BUCKET}/ray/on-s3/checkpoint_0000040" in out

    ray_keys = keys(s3_env, "ray/on-s3/")
    assert {f"ray/on-s3/checkpoint_00000{s}/checkpoint.pt" for s in (20, 40)} <= set(ray_keys)
    client = tracking.client(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: the server holds the S3 credentials
    art = keys(s3_env, "mlflow/")
    names = {k.split(f"/{run_id}/artifacts/", 1)[1] for k in art if f"/{run_id}/artifacts/" in k}
    assert {"config.yaml", "checkpoint/checkpoint.pt"} <= names
    assert "samples.png" in names and not any(n.startswith(("images/", "samples/")) for n in names)
    final = next(k for k in art if k.endswith(f"{run_id}/artifacts/checkpoint/checkpoint.pt"))
    assert art[final] < 0.7 * ray_keys["ray/on-s3/checkpoint_0000040/checkpoint.pt"]  # without Adam's moments

    assert cli.main(["promote", "--run-id", run_id, "--metric", "energy/steps_1", "--model-name", "on-s3",
                     "--tracking-uri", mlflow_server]) == 0
    assert any(k.endswith(f"{run_id}/artifacts/model/MLmodel") for k in keys(s3_env, "mlflow/"))
    npy = tmp_path / "x.npy"
    assert cli.main(["sample", "--model", "models:/on-s3@champion", "--steps", "2", "--n", "100", "--out", str(npy),
                     "--tracking-uri", mlflow_server]) == 0
    gen = load_model("models:/on-s3@champion", tracking_uri=mlflow_server, device="cpu")
    assert torch.isfinite(gen.sample(100, 2, 0)).all()

    # No secret anywhere in what the run and the model version record.
    secrets = [os.environ["AWS_SECRET_ACCESS_KEY"], os.environ["AWS_ACCESS_KEY_ID"]]  # conftest's distinctive fakes
    version = client.get_model_version("on-s3", "1")
    records = [*run.data.params.items(), *run.data.tags.items(), *version.tags.items(), version.source or ""]
    assert not [r for r in records if any(s in str(r) for s in secrets)]
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=mlflow_server))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert len(files) >= 8
    assert not [p for p in files if any(s.encode() in p.read_bytes() for s in secrets)]


def test_checkpoint_uploads_survive_s3_answering_503(ray_local, s3_server, s3_env, tiny_toy2d, tmp_path, monkeypatch,
                                                     capsys):
    """The first 3 PUTs of the first checkpoint file get 503 SlowDown. pyarrow's default 3 attempts would give up;
    the configured bound (AWS_MAX_ATTEMPTS, default 8) retries through, and every checkpoint arrives whole."""
    s3_env.create_bucket(Bucket="faulty")

    def fail(method, path):
        return method == "PUT" and path.startswith("/faulty/ray/") and "checkpoint_0000020/checkpoint.pt" in path \
            and len(proxy.failed) < 3

    with FaultyS3(s3_server, fail) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # what the driver builds Ray's filesystem from
        args = ["train", "toy2d", *tiny_toy2d, "storage.ray_storage=s3://faulty/ray",
                "--name", "faults", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
        assert cli.main(args) == 0
    run_id = re.search(r"^mlflow run id: (\w+)$", capsys.readouterr().out, re.M).group(1)
    assert len(proxy.failed) == 3
    retried = [s for m, p, s in proxy.seen if m == "PUT" and "checkpoint_0000020/checkpoint.pt" in p]
    assert retried == [200]  # the fourth attempt went through

    for step in (20, 40):
        body = s3_env.get_object(Bucket="faulty", Key=f"ray/faults/checkpoint_00000{step}/checkpoint.pt")["Body"].read()
        state = torch.load(__import__("io").BytesIO(body), weights_only=True)  # whole, not truncated
        assert state["step"] == step
    artifact = Path(tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}").download_artifacts(
        run_id, "checkpoint/checkpoint.pt", str(tmp_path)))
    final = torch.load(artifact, weights_only=True)  # the last checkpoint, whole, less the optimizer's state
    assert set(final) == set(state) - set(tracking.TRAINING_STATE)
    for part in ("model", "ema"):
        assert all(torch.equal(final[part][k], state[part][k]) for k in state[part])
