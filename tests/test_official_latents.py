"""The official latents. The official ImageNet-256 model works on (z - raw_mean) * 0.5 / raw_std with fixed
constants and z drawn from the VAE posterior at each read; a set encoded here can be stored that way, and an imported
model carries the constants and decodes with them whatever set is at hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imm.config import config_from_dict, load_config
from imm.data.latents import OFFICIAL_NORMALISATION, LatentDecoder, LatentWriter, ShardReader, load_latents

SHAPE = (4, 8, 8)
RAW_MEAN = torch.tensor(OFFICIAL_NORMALISATION["mean"]).view(-1, 1, 1)
RAW_STD = torch.tensor(OFFICIAL_NORMALISATION["std"]).view(-1, 1, 1)


def write_posterior_set(root, n=200, per_shard=50, own_std=None):
    """Posterior means N(3, 2^2), posterior stds 1 (channels 0-3 then 4-7 of each stored row)."""
    w = LatentWriter(root, SHAPE, shard_size=per_shard, posterior="sample", dtype="float32")
    g = np.random.default_rng(0)
    mu = 3 + 2 * g.standard_normal((n, *SHAPE)).astype(np.float32)
    w.add(np.concatenate([mu, np.ones_like(mu)], axis=1))
    w.add_heldout(np.concatenate([mu[:10], np.ones_like(mu[:10])], axis=1))
    return w.close(), mu


def test_a_posterior_set_stores_mean_and_std_and_each_read_draws_from_it(tmp_path):
    m, mu = write_posterior_set(tmp_path / "set")
    assert m.posterior == "sample" and m.shape == SHAPE and m.stored_shape == (8, 8, 8)
    assert np.load(tmp_path / "set" / "shard-00000.npy").shape == (50, 8, 8, 8)
    # the statistics of what training draws: E[z] = E[mu] = 3, Var[z] = Var[mu] + E[std^2] = 4 + 1
    assert m.mean == pytest.approx([3.0] * 4, abs=0.05) and m.std == pytest.approx([5**0.5] * 4, abs=0.05)
    reader = ShardReader(m, 0, 1, cache_bytes=1e9)
    torch.manual_seed(1)
    x1, _ = reader.batch(4000, step=1, device="cpu")
    torch.manual_seed(1)
    assert torch.equal(reader.batch(4000, step=1, device="cpu")[0], x1)  # the step's seed decides the draw too
    torch.manual_seed(2)
    x2, _ = reader.batch(4000, step=1, device="cpu")
    z1, z2 = m.decode_scale(x1), m.decode_scale(x2)
    # a draw, not the mean: z - mu has the posterior's std 1 (rows are matched by recomputing the draw's mean)
    rows = torch.from_numpy(np.concatenate([np.load(tmp_path / "set" / f"shard-0000{i}.npy") for i in range(4)]))
    mu_all = rows[:, :4].flatten(1)
    nearest = torch.cdist(z1.flatten(1), mu_all).argmin(1)
    resid = z1.flatten(1) - mu_all[nearest]
    assert float(resid.std()) == pytest.approx(1.0, abs=0.05)
    assert not torch.allclose(z1, z2)
    # the held-out latents the metrics compare with are the posterior means, not a draw
    held = load_latents(load_config("imagenet256_dit", [f"data.name=latents:{tmp_path / 'set'}", "data.latent_mean=null",
                                                         "data.latent_std=null"]).data).heldout
    torch.testing.assert_close(m.decode_scale(held), torch.from_numpy(mu[:10]), atol=1e-4, rtol=0)


def test_a_posterior_sets_cache_window_counts_its_stored_rows(tmp_path):
    """A stored row holds mean and std (2C channels): the S3 cache's window is sized on that, not on C."""
    m, _ = write_posterior_set(tmp_path / "set")  # 4 shards of 50 rows of 8x8x8 float32: 102,400 bytes a shard
    object.__setattr__(m, "root", "s3://bucket/set")  # only the window's size is under test: nothing is fetched
    assert ShardReader(m, 0, 1, cache_bytes=2.5 * 102_400).window == 2  # counted on C it would be 4 (all)


def test_the_papers_config_normalises_with_the_official_constants_whatever_the_sets(tmp_path):
    m, _ = write_posterior_set(tmp_path / "set")
    assert m.mean != OFFICIAL_NORMALISATION["mean"]  # the set's own statistics
    cfg = load_config("imagenet256_dit", [f"data.name=latents:{tmp_path / 'set'}"])
    used = load_latents(cfg.data).manifest
    assert used.mean == OFFICIAL_NORMALISATION["mean"] and used.std == OFFICIAL_NORMALISATION["std"]
    x = torch.randn(3, *SHAPE)
    torch.testing.assert_close(used.decode_scale(x), x * RAW_STD / 0.5 + RAW_MEAN)  # z = x raw_std / 0.5 + raw_mean
    z = torch.randn(3, 8, *SHAPE[1:]).numpy()
    torch.testing.assert_close(used.normalise(z, draw=False), (torch.from_numpy(z[:, :4]) - RAW_MEAN) * 0.5 / RAW_STD)


def test_an_imported_imagenet_model_decodes_with_the_official_constants(tmp_path, tiny_vae):
    """The set at hand was normalised with its own statistics; the imported model's samples still decode through
    the official constants (they live in the released weights' space)."""
    from imm.import_official import import_official
    from imm.networks.dit import DiT

    folder, vae = tiny_vae
    torch.manual_seed(0)
    net = DiT.named("S/2", 4, 32, num_classes=1000)
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, tmp_path / "official.pt")
    write_posterior_set(tmp_path / "set")
    ckpt = import_official("official-imagenet256-ts-a2", tmp_path / "official.pt",
                           ["model.dit=S/2", f"data.name=latents:{tmp_path / 'set'}"])
    data = config_from_dict(ckpt["config"]).data
    assert list(data.latent_mean) == OFFICIAL_NORMALISATION["mean"]
    assert list(data.latent_std) == OFFICIAL_NORMALISATION["std"]
    decoder = LatentDecoder(load_latents(data).manifest, str(folder), "cpu")
    x = torch.randn(2, *SHAPE) * 0.5
    with torch.no_grad():
        want = vae.decode(x * RAW_STD / 0.5 + RAW_MEAN).sample.clamp(-1, 1)
    torch.testing.assert_close(decoder(x), want, atol=1e-5, rtol=0)


def test_the_encoder_stores_the_posteriors_mean_and_std(tmp_path, tiny_vae):
    from PIL import Image

    from orchestrator.infra.encode import Encoder, read_image

    folder, vae = tiny_vae
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    batch = {"path": np.array(paths), "label": np.zeros(3), "heldout": np.zeros(3, bool)}
    z = Encoder(str(folder), 16, "sample")(batch)["z"]
    x = torch.from_numpy(np.stack([read_image(p, 16) for p in paths])).float() / 127.5 - 1
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    assert z.shape == (3, 8, 8, 8)
    torch.testing.assert_close(torch.from_numpy(z), torch.cat([dist.mean, dist.std], 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.latent_mean=[0.0, 1.0]"], "data.latent_mean, data.latent_std: both null, or per-channel lists"),
    (["data.latent_mean=[0.0]", "data.latent_std=[0.0]"], "data.latent_mean, data.latent_std: both null, or"),
])
def test_a_bad_normalisation_is_one_line_naming_the_keys(overrides, message):
    from imm.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config("imagenet256_dit", ["data.latent_mean=null", "data.latent_std=null", *overrides])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
