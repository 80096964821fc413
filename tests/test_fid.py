"""FID's parts: the Inception network (architecture, loading from a file and from S3), the project's own
feature extractors, cached reference statistics, and evaluation sharded over two real gloo processes.

The real Inception weights cannot be downloaded here: the network is checked with random weights saved to a
file, against torchvision's parameter count and key names, and the FID variant's pooling quirks.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from imm.config import load_config
from imm.data import load_data
from imm.metrics.evaluator import Evaluator, metric_names
from imm.metrics.features import (
    FeatureExtractor,
    build_extractor,
    classifier_extractor,
    inception_extractor,
    resolve_kind,
    rff_extractor,
)
from imm.metrics.fid import reference_statistics
from imm.metrics.inception import InceptionV3, avg3, load_inception


def test_inception_has_torchvisions_layout_and_size():
    net = InceptionV3()
    # torchvision's inception_v3 has 27,161,264 parameters; without AuxLogits (3,326,696) and with the FID
    # graph's 1008-way classifier (+8 x 2049) that is 23,850,960.
    assert sum(p.numel() for p in net.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049 == 23_850_960
    keys = net.state_dict()
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch_pool.bn.running_var", "Mixed_6e.branch7x7dbl_5.conv.weight",
            "Mixed_7c.branch3x3dbl_3b.bn.bias", "fc.weight"} <= set(keys)
    assert keys["fc.weight"].shape == (1008, 2048) and keys["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    # The FID graph's quirks: average pools that do not count padding, and a max pool in the last block.
    assert torch.equal(avg3(torch.ones(1, 1, 5, 5)), torch.ones(1, 1, 5, 5))
    assert net.Mixed_7c.max_pool and not net.Mixed_7b.max_pool


def test_inception_features_from_a_file_are_deterministic(inception_file):
    ext = inception_extractor(str(inception_file))
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    f1, f2 = ext(x), inception_extractor(str(inception_file))(x)
    assert f1.shape == (3, 2048) and torch.equal(f1, f2) and (f1 >= 0).all()
    assert not torch.equal(f1[0], f1[1])
    grey = ext(torch.rand(2, 1, 8, 8) * 2 - 1)  # digits-like: one channel, any size
    assert grey.shape == (2, 2048) and torch.isfinite(grey).all()
    assert ext.metric_prefix == "fid" and ext.id.startswith("inception-")


def test_inception_weights_load_from_s3(inception_file, s3_env, tmp_path, monkeypatch):
    import imm.metrics.features

    monkeypatch.setattr(imm.metrics.features, "local_copy",
                        lambda uri: __import__("imm.data.remote").data.remote.local_copy(uri, tmp_path / "cache"))
    s3_env.create_bucket(Bucket="weights")
    s3_env.upload_file(str(inception_file), "weights", "fid/pt_inception.pth")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    from_s3 = inception_extractor("s3://weights/fid/pt_inception.pth")
    assert torch.equal(from_s3(x), inception_extractor(str(inception_file))(x))
    assert from_s3.id == inception_extractor(str(inception_file)).id  # the id is the content hash
    with pytest.raises(FileNotFoundError, match="eval.inception_weights: .*pt_inception-2015-12-05-6726825d.pth"):
        inception_extractor("s3://weights/fid/missing.pth")


def test_missing_or_wrong_inception_weights_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"eval.inception_weights: no file at .*pytorch-fid"):
        load_inception(tmp_path / "nope.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="is not the pytorch-fid Inception-v3 state dict"):
        load_inception(wrong)
    with pytest.raises(Exception, match="eval.inception_weights: eval.features=inception needs"):
        load_config("digits", ["eval.features=inception"])


def test_auto_picks_inception_then_classifier_then_rff():
    assert resolve_kind("auto", "w.pth", 10, True) == "inception"
    assert resolve_kind("auto", None, 10, True) == "classifier"
    assert resolve_kind("auto", None, 0, False) == "rff"
    with pytest.raises(ValueError, match="eval.features: 'classifier' needs data with at least 2 classes"):
        resolve_kind("classifier", None, 0, False)
    assert metric_names(load_config("toy2d", ["eval.steps=[1,2]"])) == [
        "train/loss", "energy/steps_1", "energy/steps_2", "fd/steps_1", "fd/steps_2"]
    assert "fid/steps_2" in metric_names(load_config("digits", ["eval.inception_weights=w.pth"]))
    assert metric_names(load_config("toy2d", ["eval.features=none", "eval.steps=[1]"])) == ["train/loss", "energy/steps_1"]


def test_random_fourier_features_approximate_the_gaussian_kernel():
    train = torch.randn(5000, 2) * 1.5
    ext = rff_extractor(train, dim=40000)
    lengthscale = float(train.flatten(1).std())
    x, y = torch.tensor([[0.3, -0.2]]), torch.tensor([[1.1, 0.9]])
    k = float(ext(x) @ ext(y).T)
    assert k == pytest.approx(math.exp(-float(((x - y) ** 2).sum()) / (2 * lengthscale**2)), abs=0.02)
    assert float(ext(x) @ ext(x).T) == pytest.approx(1.0, abs=0.02)


def test_the_digits_classifier_is_trained_once_and_cached(tmp_path, monkeypatch):
    import imm.metrics.features as features

    data = load_data(load_config("digits").data)
    ext = classifier_extractor(data, tmp_path)
    assert ext.kind == "classifier" and ext.metric_prefix == "fd" and "held-out accuracy" in ext.note
    assert float(ext.note.rsplit(" ", 1)[1]) > 0.9  # it learned the digits: its features mean something
    assert len(list(tmp_path.glob("classifier-*.pt"))) == 1
    monkeypatch.setattr(features, "train_classifier", lambda *a, **k: pytest.fail("trained twice"))
    again = classifier_extractor(data, tmp_path)
    assert again.id == ext.id and torch.equal(again(data.heldout[:20]), ext(data.heldout[:20]))


def test_reference_statistics_are_cached_by_extractor_and_data(tmp_path):
    train = torch.randn(300, 2)
    ext = rff_extractor(train, dim=64)
    (mu, sigma), path = reference_statistics(ext, train, tmp_path)
    feats = ext(train).double().numpy()
    assert np.allclose(mu, feats.mean(0)) and np.allclose(sigma, np.cov(feats, rowvar=False))
    assert Path(path).is_file() and ext.id in Path(path).name

    class Exploding:
        id = ext.id

        def __call__(self, *a, **k):
            raise AssertionError("recomputed instead of read from the cache")

    (mu2, sigma2), path2 = reference_statistics(Exploding(), train, tmp_path)
    assert path2 == path and np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    other = reference_statistics(ext, train + 1, tmp_path)[1]  # other data: another file
    assert other != path and len(list(tmp_path.glob("stats-*.npz"))) == 2


def _tiny_model_and_cfg(cache, extra=()):
    from imm.methods import build_model

    cfg = load_config("toy2d", ["model.hidden=16", "model.depth=1", "eval.n_samples=250", "eval.batch_size=100",
                                "eval.steps=[1,2]", "data.n_train=600", "data.n_heldout=300", f"eval.cache={cache}",
                                *extra])
    data = load_data(cfg.data)
    torch.manual_seed(0)
    return build_model(cfg, data.shape, 1.0), cfg, data


def test_evaluation_is_reproducible_and_reports_every_step_count(tmp_path):
    model, cfg, data = _tiny_model_and_cfg(tmp_path)
    ev = Evaluator(cfg, data)
    first, second = ev(model), ev(model)
    assert set(first.metrics) == set(metric_names(cfg)) - {"train/loss"}
    assert first.metrics == second.metrics and all(v > 0 for v in first.metrics.values())
    assert first.samples[1].shape == (250, 2)
    assert ev.tags["imm.eval.features"] == "rff" and ev.tags["imm.eval.reference_stats"].endswith(".npz")
    # Perfect samples (the training set itself) have a Frechet distance of zero to the reference.
    from imm.metrics.fid import frechet_to_reference

    assert frechet_to_reference(ev.extractor(data.train), ev.reference) == pytest.approx(0.0, abs=1e-9)
    # A fresh draw (a report's rescoring): other samples, the same for the same seed, only the step counts asked for.
    fresh, again = ev(model, steps=[2], seed=10_000), ev(model, steps=[2], seed=10_000)
    assert set(fresh.samples) == {2} and torch.equal(fresh.samples[2], again.samples[2])
    assert not torch.allclose(fresh.samples[2], first.samples[2])
    assert fresh.metrics["energy/steps_2"] != first.metrics["energy/steps_2"]


def _sharded_worker(rank, world, port, cache, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, cfg, data = _tiny_model_and_cfg(cache)
        result = Evaluator(cfg, data, rank=rank, world_size=world)(model)
        if rank == 0:
            torch.save({"metrics": result.metrics, "samples": result.samples}, out)
        else:
            assert result.metrics == {} and result.samples == {}
    finally:
        dist.destroy_process_group()


def test_two_workers_give_exactly_the_single_process_metrics(tmp_path):
    """3 chunks of 100/100/50 samples over 2 gloo processes: rank 0 draws chunks 0 and 2, rank 1 chunk 1."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.spawn(_sharded_worker, args=(2, port, str(tmp_path / "cache"), str(out)), nprocs=2)
    sharded = torch.load(out, weights_only=True)
    model, cfg, data = _tiny_model_and_cfg(tmp_path / "cache")
    single = Evaluator(cfg, data)(model)
    for k in (1, 2):
        assert torch.allclose(sharded["samples"][k], single.samples[k], atol=1e-6)
    assert sharded["metrics"] == pytest.approx(single.metrics, rel=1e-6)


def test_build_extractor_names_the_missing_weights_key(tmp_path):
    data = load_data(OmegaConf.create({"name": "digits", "heldout_fraction": 0.3, "seed": 0}))
    with pytest.raises(ValueError, match="eval.inception_weights"):
        build_extractor("inception", data, inception_weights=None, cache=tmp_path)


def test_a_reference_batch_in_adms_format_gives_the_statistics_of_its_images(tmp_path):
    """eval.reference: an .npz whose arr_0 holds (N, H, W, 3) uint8 images (ADM's VIRTUAL_imagenet256_labeled.npz
    layout) gives the same statistics as those images passed as a [-1, 1] tensor, and is cached by content."""
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (37, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=np.zeros(3))  # ADM's files also carry TF-Inception stats
    ext = FeatureExtractor("test", "flatten-test", torch.nn.Flatten(), 90)
    as_tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    (mu, sigma), _ = reference_statistics(ext, as_tensor, tmp_path / "cache-a", batch_size=10)
    (mu_npz, sigma_npz), where = reference_statistics(ext, str(tmp_path / "ref.npz"), tmp_path / "cache-b",
                                                      batch_size=10)
    assert np.allclose(mu_npz, mu) and np.allclose(sigma_npz, sigma) and mu.shape == (90,)
    assert "-npz-" in where and Path(where).is_file()
    (tmp_path / "ref.npz").unlink()
    np.savez(tmp_path / "ref.npz", images=images)
    with pytest.raises(ValueError, match=r"^eval.reference: .* has no arr_0"):
        reference_statistics(ext, str(tmp_path / "ref.npz"), tmp_path / "cache-b")
