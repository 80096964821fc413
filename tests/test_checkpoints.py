"""The checkpoints a one-worker trial keeps itself (`orchestrator.run.checkpoints`), on a folder and on a real S3 server
(moto over HTTP): the newest whole one is restored, `keep` are kept, and an upload cut short is never taken."""

from __future__ import annotations

from pathlib import Path

import pytest

from imm.training.checkpoint import CHECKPOINT_FILE
from orchestrator.infra.storage import ray_storage
from orchestrator.run.checkpoints import CheckpointFolder
from tests.servers import MLFLOW_BUCKET


def _storage(kind: str, tmp_path, request):
    from omegaconf import OmegaConf

    if kind == "s3":
        import boto3

        url = request.getfixturevalue("s3_server")
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        if MLFLOW_BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket=MLFLOW_BUCKET)
        where = f"s3://{MLFLOW_BUCKET}/ckpt-test/{tmp_path.name}"
    else:
        where = str(tmp_path / "ray")
    return ray_storage(OmegaConf.create({"storage": {"ray_storage": where, "root": str(tmp_path)}}))


def _local_checkpoint(tmp_path, step: int) -> str:
    d = tmp_path / f"local-{step}"
    d.mkdir()
    (d / CHECKPOINT_FILE).write_bytes(f"step {step}".encode())
    (d / "extra.json").write_text("{}")
    return str(d)


def _read(checkpoint) -> bytes:
    with checkpoint.as_directory() as d:
        return (Path(d) / CHECKPOINT_FILE).read_bytes()


@pytest.mark.parametrize("kind", ["folder", "s3"])
def test_the_newest_whole_checkpoint_is_restored_and_keep_are_kept(kind, tmp_path, request):
    storage = _storage(kind, tmp_path, request)
    folder = CheckpointFolder(storage, "run", keep=2)
    assert folder.latest() is None
    for step in (10, 20, 30):
        saved = folder.save(step, _local_checkpoint(tmp_path, step))
        assert _read(saved) == f"step {step}".encode()
    assert _read(folder.latest()) == b"step 30"
    assert folder._folders() == (["checkpoint_0000020", "checkpoint_0000030"],) * 2  # the oldest went

    # A process killed while uploading step 40 left its folder with a part file only: not a checkpoint.
    folder.fs.create_dir(f"{folder.root}/checkpoint_0000040")
    with folder.fs.open_output_stream(f"{folder.root}/checkpoint_0000040/.{CHECKPOINT_FILE}.part") as f:
        f.write(b"half a chec")
    assert _read(CheckpointFolder(storage, "run", keep=2).latest()) == b"step 30"
    # The relaunch writes step 40 again, whole this time; a later save prunes what is older than the kept two.
    folder.save(40, _local_checkpoint(tmp_path, 40))
    folder.save(50, _local_checkpoint(tmp_path, 50))
    assert _read(folder.latest()) == b"step 50"
    assert folder._folders()[0] == ["checkpoint_0000040", "checkpoint_0000050"]
    assert storage.delete_run("run") and CheckpointFolder(storage, "run", keep=2).latest() is None
