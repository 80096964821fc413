"""Inputs on S3, read through a real S3 endpoint (moto's server on 127.0.0.1) with pyarrow: a CIFAR-10 folder
as `cifar10:s3://...`, cached locally and written atomically, and a clear error for a missing object."""

from __future__ import annotations

import pytest

from imm.config import load_config
from imm.data import load_data
from imm.data.remote import local_copy


def test_cifar10_from_s3_is_copied_once_and_read_like_a_folder(s3_env, tmp_path, monkeypatch, write_fake_cifar):
    import imm.data.remote

    monkeypatch.setattr(imm.data.remote, "DEFAULT_CACHE", tmp_path / "cache")
    local = tmp_path / "cifar"
    last = write_fake_cifar(local)
    s3_env.create_bucket(Bucket="data")
    for f in local.iterdir():
        s3_env.upload_file(str(f), "data", f"sets/cifar-10-batches-py/{f.name}")

    cfg = load_config("toy2d", ["data.name=cifar10:s3://data/sets/cifar-10-batches-py"]).data
    d = load_data(cfg)
    assert d.train.shape == (100, 3, 32, 32) and d.heldout_labels.tolist() == [int(v) for v in last[b"labels"]]
    cached = local_copy("s3://data/sets/cifar-10-batches-py")
    assert cached.is_dir() and sorted(p.name for p in cached.iterdir()) == sorted(p.name for p in local.iterdir())
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".partial-")]
    s3_env.delete_object(Bucket="data", Key="sets/cifar-10-batches-py/test_batch")
    assert load_data(cfg).heldout.shape == (20, 3, 32, 32)  # the cached copy serves the next run


def test_the_data_command_writes_the_arrays_to_s3_where_training_reads_them(s3_env, tmp_path, monkeypatch,
                                                                          write_fake_cifar, capsys):
    import tarfile

    import imm.data.cifar10
    import imm.data.remote
    from orchestrator import cli

    monkeypatch.setattr(imm.data.remote, "DEFAULT_CACHE", tmp_path / "cache")
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    # this archive's checksum stands in for the official one
    monkeypatch.setattr(imm.data.cifar10, "ARCHIVE_MD5", imm.data.remote.file_digest(archive, "md5"))
    s3_env.create_bucket(Bucket="prepared")
    assert cli.main(["data", "cifar10", str(archive), "--out", "s3://prepared/cifar10"]) == 0
    assert "next: data.name=cifar10:s3://prepared/cifar10" in capsys.readouterr().out
    keys = sorted(o["Key"] for o in s3_env.list_objects_v2(Bucket="prepared")["Contents"])
    assert keys == [f"cifar10/{a}" for a in sorted(imm.data.cifar10.ARRAYS)]
    d = load_data(load_config("toy2d", ["data.name=cifar10:s3://prepared/cifar10"]).data)
    assert d.train.shape == (100, 3, 32, 32) and d.heldout.shape == (20, 3, 32, 32)


def test_a_missing_s3_object_is_named(s3_env, tmp_path):
    s3_env.create_bucket(Bucket="empty")
    with pytest.raises(FileNotFoundError, match="s3://empty/nothing/here does not exist"):
        local_copy("s3://empty/nothing/here", tmp_path)


def test_retries_are_bounded_and_configurable(monkeypatch):
    from imm.data.remote import retry_settings, s3_client, s3_filesystem

    assert retry_settings() == ("standard", 8)
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    retries = s3_client().meta.config.retries
    assert retries["mode"] == "adaptive" and retries["total_max_attempts"] == 3
    import pickle

    shipped = pickle.loads(pickle.dumps(s3_filesystem()))  # what a Ray worker receives keeps the retries
    assert shipped.max_attempts == 3 and shipped.region == "us-east-1"
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")
    with pytest.raises(ValueError, match=r"AWS_RETRY_MODE: 'legacy' is not one of \['standard', 'adaptive'\]"):
        s3_client()
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="AWS_MAX_ATTEMPTS: '0' must be an integer >= 1"):
        s3_filesystem()


def test_reference_statistics_are_shared_through_an_s3_cache(s3_env, tmp_path, monkeypatch):
    import numpy as np
    import torch

    import imm.metrics.fid as fid
    from imm.metrics.features import rff_extractor

    s3_env.create_bucket(Bucket="cache")
    train = torch.randn(200, 2)
    ext = rff_extractor(train, dim=32)
    (mu, sigma), where = fid.reference_statistics(ext, train, "s3://cache/metrics")
    keys = [o["Key"] for o in s3_env.list_objects_v2(Bucket="cache")["Contents"]]
    assert keys == [f"metrics/stats-{ext.id}-{where.rsplit('-', 1)[1]}"] and where == f"s3://cache/{keys[0]}"

    monkeypatch.setattr(ext, "net", lambda x: pytest.fail("recomputed although the S3 cache holds the statistics"))
    (mu2, sigma2), _ = fid.reference_statistics(ext, train, "s3://cache/metrics")
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
