"""`imm-orch encode` on the session's Ray: a tiny randomly initialised AutoencoderKL in a temp folder encodes an
image folder (and the same from moto's S3 server) into shards + manifest that imm/data/latents.py reads back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orchestrator import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """64 images in two class folders, 20x16 (not square: encode center-crops), seeded colours."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    g = np.random.default_rng(0)
    for i in range(64):
        cls = root / ("cat" if i % 2 else "dog")
        cls.mkdir(exist_ok=True)
        Image.fromarray(g.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(cls / f"{i:03d}.png")
    return root


def direct_latents(vae, root) -> tuple[torch.Tensor, np.ndarray]:
    """What the VAE gives for every image, encoded here in one process, and the class labels (cat 0, dog 1)."""
    from orchestrator.infra.encode import read_image

    files = sorted(root.glob("*/*.png"))
    x = torch.from_numpy(np.stack([read_image(str(f), 16) for f in files])).float() / 127.5 - 1
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean, np.array([0 if f.parent.name == "cat" else 1 for f in files])


def check_set(m, read, vae, root) -> None:
    want, want_labels = direct_latents(vae, root)
    assert m.count == 56 and [s["count"] for s in m.shards] == [16, 16, 16, 8] and m.heldout["count"] == 8
    assert m.num_classes == 2 and m.shape == (4, 8, 8)
    z = np.concatenate([read(s["file"]) for s in m.shards] + [read(m.heldout["file"])]).astype(np.float32)
    y = np.concatenate([read(s["labels"]) for s in m.shards] + [read(m.heldout["labels"])])
    # every image exactly once (rows come in Ray Data's order): match each stored latent to its nearest direct one
    dist = torch.cdist(torch.from_numpy(z).flatten(1), want.flatten(1))
    nearest = dist.argmin(1).numpy()
    assert sorted(nearest) == list(range(64)) and (y == want_labels[nearest]).all()
    stored, direct = torch.from_numpy(z), want[nearest]
    assert torch.allclose(stored, direct, rtol=2e-3, atol=2e-3)  # float16 storage
    with torch.no_grad():  # decoded through the normalisation and back: the VAE's own reconstruction
        x = m.normalise(z)
        assert torch.allclose(vae.decode(m.decode_scale(x)).sample, vae.decode(direct).sample, atol=1e-2)
    train = np.concatenate([read(s["file"]) for s in m.shards]).astype(np.float64)
    assert np.allclose(m.mean, train.mean(axis=(0, 2, 3)), atol=1e-3)  # the training latents' own statistics


def test_encode_a_folder_on_ray_writes_a_set_that_reads_back(ray_local, tiny_vae, images, tmp_path, capsys):
    from imm.data.latents import Manifest

    vae_path, vae = tiny_vae
    out = tmp_path / "latents"
    argv = ["encode", f"folder:{images}", "--vae", str(vae_path), "--out", str(out), "--resolution", "16",
            "--shard-size", "16", "--heldout", "8", "--batch-size", "8", "--workers", "2"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert "encode: 64 images (2 classes)" in said and "2 VAE actor(s) on CPU" in said and "images/s" in said
    m = Manifest.read(str(out))
    check_set(m, lambda f: np.load(out / f), vae, images)
    assert m.vae == str(vae_path)
    # a finished set is never overwritten
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith(f"imm-orch: error: --out: '{out}' already holds a latent set")


def test_encode_as_the_official_encoder_stores_the_posterior_and_the_official_constants(ray_local, tiny_vae, images,
                                                                                        tmp_path, capsys):
    from imm.data.latents import OFFICIAL_NORMALISATION, Manifest

    vae_path, vae = tiny_vae
    out = tmp_path / "latents"
    argv = ["encode", f"folder:{images}", "--vae", str(vae_path), "--out", str(out), "--resolution", "16",
            "--shard-size", "16", "--heldout", "8", "--batch-size", "8", "--workers", "1",
            "--posterior", "sample", "--normalisation", "official"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    m = Manifest.read(str(out))
    assert m.posterior == "sample" and m.shape == (4, 8, 8) and m.mean == OFFICIAL_NORMALISATION["mean"]
    rows = np.concatenate([np.load(out / s["file"]) for s in m.shards]).astype(np.float32)
    want, _ = direct_latents(vae, images)
    nearest = torch.cdist(torch.from_numpy(rows[:, :4]).flatten(1), want.flatten(1)).argmin(1)
    assert torch.allclose(torch.from_numpy(rows[:, :4]), want[nearest], rtol=2e-3, atol=2e-3)
    assert (rows[:, 4:] > 0).all()  # the posterior's std beside its mean


def test_encode_from_s3_to_s3(ray_local, tiny_vae, images, s3_env, tmp_path, capsys):
    import io

    from imm.data.latents import Manifest

    vae_path, vae = tiny_vae
    s3_env.create_bucket(Bucket="encode")
    for f in images.glob("*/*.png"):
        s3_env.upload_file(str(f), "encode", f"images/{f.parent.name}/{f.name}")
    for f in vae_path.iterdir():
        s3_env.upload_file(str(f), "encode", f"vae/{f.name}")
    argv = ["encode", "folder:s3://encode/images", "--vae", "s3://encode/vae", "--out", "s3://encode/latents",
            "--resolution", "16", "--shard-size", "16", "--heldout", "8", "--batch-size", "8", "--workers", "1"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    m = Manifest.read("s3://encode/latents")

    def read(name):
        return np.load(io.BytesIO(s3_env.get_object(Bucket="encode", Key=f"latents/{name}")["Body"].read()))

    check_set(m, read, vae, images)


def test_bad_encode_input_is_one_line_before_ray_starts(tmp_path, capsys, no_ray, images):
    cases = [(["folder:" + str(tmp_path / "none"), "--vae", str(tmp_path)], "source: folder"),
             (["images/", "--vae", str(tmp_path)], "source: 'images/' is not folder:PATH"),
             (["folder:" + str(images), "--vae", str(tmp_path)], "--vae: "),
             (["folder:" + str(images), "--vae", str(tmp_path), "--heldout", "-1"], "--heldout: -1 must be >= 0")]
    for args, start in cases:
        assert cli.main(["encode", *args, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"imm-orch: error: {start}") and err.count("\n") == 1, err
