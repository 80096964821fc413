"""A data set's content digest (`imm.data.digest`) and the run's MLflow dataset input (`provenance.log_dataset`):
the same content gives the same digest wherever and whenever it is read, any change of content gives another."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from imm.config import load_config
from imm.data.digest import data_digest
from imm.data.latents import MANIFEST, LatentWriter
from imm.data.remote import file_sha256
from orchestrator.track import provenance, tracking


def digest(name: str, *overrides: str):
    return data_digest(load_config("toy2d", [f"data.name={name}", *overrides]).data)


def test_a_generated_set_is_its_recipe():
    a = digest("8gaussians")
    assert a.basis == "recipe" and a.digest == digest("8gaussians").digest
    assert digest("8gaussians", "data.seed=1").digest != a.digest and digest("moons").digest != a.digest


def test_a_local_folder_is_its_files_contents(tmp_path):
    folder = tmp_path / "set"
    (folder / "a").mkdir(parents=True)
    np.save(folder / "a" / "x.npy", np.arange(6.0).reshape(3, 2))
    (folder / "b.txt").write_text("b")
    first = data_digest(load_config("toy2d", [f"data.name=folder:{folder}"]).data)
    assert first.basis == "files" and first.source == str(folder)
    os.utime(folder / "b.txt", (1, 1))  # touched, not changed: the same
    assert data_digest(load_config("toy2d", [f"data.name=folder:{folder}"]).data).digest == first.digest
    (folder / "b.txt").write_text("c")  # one byte
    assert data_digest(load_config("toy2d", [f"data.name=folder:{folder}"]).data).digest != first.digest


def test_an_s3_prefix_is_its_objects_etags_without_downloading(s3_env):
    s3_env.create_bucket(Bucket="digest")
    for key, body in (("set/a.npy", b"1"), ("set/b.npy", b"2"), ("other/c.npy", b"3")):
        s3_env.put_object(Bucket="digest", Key=key, Body=body)
    cfg = load_config("toy2d", ["data.name=npy:s3://digest/set"]).data
    first = data_digest(cfg)
    assert first.basis == "objects" and data_digest(cfg).digest == first.digest
    s3_env.put_object(Bucket="digest", Key="other/d.npy", Body=b"4")  # outside the prefix
    assert data_digest(cfg).digest == first.digest
    s3_env.put_object(Bucket="digest", Key="set/b.npy", Body=b"5")
    assert data_digest(cfg).digest != first.digest


def test_a_latent_set_is_its_manifest_which_holds_each_shards_hash(tmp_path):
    writer = LatentWriter(tmp_path / "lat", (4, 2, 2), shard_size=3, num_classes=2)
    writer.add(np.random.default_rng(0).normal(size=(7, 4, 2, 2)), np.arange(7) % 2)
    writer.add_heldout(np.zeros((2, 4, 2, 2)), np.zeros(2, np.int64))
    writer.close()
    manifest = json.loads((tmp_path / "lat" / MANIFEST).read_text())
    assert len(manifest["shards"]) == 3
    for shard in manifest["shards"]:
        assert shard["sha256"] == file_sha256(tmp_path / "lat" / shard["file"])
        assert shard["labels_sha256"] == file_sha256(tmp_path / "lat" / shard["labels"])
    d = data_digest(load_config("toy2d", [f"data.name=latents:{tmp_path / 'lat'}"]).data)
    assert d.basis == "manifest"
    assert d.digest == hashlib.sha256((tmp_path / "lat" / MANIFEST).read_bytes()).hexdigest()


def test_a_run_shows_its_data_set_as_an_mlflow_dataset_input(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlc = tracking.client(uri)
    run_id = mlc.create_run(mlc.create_experiment("data")).info.run_id
    cfg = load_config("toy2d", []).data
    sha = provenance.log_dataset(mlc, run_id, cfg)
    provenance.log_dataset(mlc, run_id, cfg)  # a relaunch: the same input, once
    run = mlc.get_run(run_id)
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest, inp.dataset.source) == ("8gaussians", sha[:36], "generated")
    assert json.loads(inp.dataset.profile) == {"sha256": sha, "basis": "recipe"}
    assert [t.value for t in inp.tags if t.key == "mlflow.data.context"] == ["training"]
    assert run.data.tags[provenance.DATA_DIGEST_TAG] == sha == data_digest(cfg).digest


def test_trials_opening_their_runs_at_once_each_log_the_data_set(tmp_path):
    """A sweep's trials open their own runs, at the same moment: MLflow's store adds a data set new to the
    experiment with a check and then an insert, so all but one of them broke its unique key (seen in a sweep, and
    every time with 8 threads here). Each run gets the input all the same."""
    import threading

    mlc = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config("toy2d", []).data
    errors = []
    for round_ in range(3):
        exp = mlc.create_experiment(f"race-{round_}")
        runs = [mlc.create_run(exp).info.run_id for _ in range(8)]
        start = threading.Barrier(len(runs))

        def open_run(run_id, start=start):
            start.wait()
            try:
                provenance.log_dataset(mlc, run_id, cfg, tagged=True)
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=open_run, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [len(mlc.get_run(r).inputs.dataset_inputs) for r in runs] == [1] * len(runs)
    assert errors == []
