"""Inputs on S3, read through a real S3 endpoint (moto's server on 127.0.0.1) with pyarrow: a CIFAR-10 folder
as `cifar10:s3://...`, cached locally and written atomically, and a clear error for a missing object."""

from __future__ import annotations

import pytest

from imm.config import load_config
from imm.data import load_data
from imm.remote import local_copy


def test_cifar10_from_s3_is_copied_once_and_read_like_a_folder(s3_env, tmp_path, monkeypatch, write_fake_cifar):
    import imm.remote

    monkeypatch.setattr(imm.remote, "DEFAULT_CACHE", tmp_path / "cache")
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


def test_a_missing_s3_object_is_named(s3_env, tmp_path):
    s3_env.create_bucket(Bucket="empty")
    with pytest.raises(FileNotFoundError, match="s3://empty/nothing/here does not exist"):
        local_copy("s3://empty/nothing/here", tmp_path)
