import numpy as np
import pytest
import torch

from imm.config import load_config
from imm.data import load_data, shard
from imm.metrics import energy_distance, noise_floor


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard", "moons"])
def test_toy_sets_are_deterministic_and_split(name):
    cfg = load_config("toy2d", [f"data.name={name}", "data.n_train=1000", "data.n_heldout=300"]).data
    a = load_data(cfg)
    a_train, a_held, b_train = a.train, a.heldout, load_data(cfg).train
    assert a_train.shape == (1000, 2) and a_held.shape == (300, 2)
    assert torch.equal(a_train, b_train)
    assert a_train.abs().max() < 3


def test_checkerboard_occupies_the_dark_squares():
    cfg = load_config("toy2d", ["data.name=checkerboard"]).data
    x = load_data(cfg).train
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])) % 2
    assert bool((parity == parity[0]).all())


def test_npy_split(tmp_path):
    arr = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    np.save(tmp_path / "pts.npy", arr)
    cfg = load_config("toy2d", [f"data.name=npy:{tmp_path / 'pts.npy'}", "data.heldout_fraction=0.25"]).data
    d = load_data(cfg)
    train, held = d.train, d.heldout
    assert train.shape == (150, 3) and held.shape == (50, 3)
    rows = {tuple(r) for r in np.concatenate([train.numpy(), held.numpy()])}
    assert rows == {tuple(r) for r in arr}


def test_npy_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.name"):
        load_data(load_config("toy2d", [f"data.name=npy:{tmp_path}/missing.npy"]).data)
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        load_data(load_config("toy2d", [f"data.name=npy:{tmp_path}/bad.npy"]).data)


def test_shard_partitions():
    x = torch.arange(10)[:, None]
    parts = [shard(x, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).flatten().tolist()) == list(range(10))


def test_energy_distance_closed_form():
    """For 1-D N(0,1) vs N(mu,1): D^2 = 2 E|X-Y| - E|X-X'| - E|Y-Y'| with E|N(m, 2)| closed form."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4000, 1, generator=g), torch.randn(4000, 1, generator=g) + 1.0
    s = np.sqrt(2.0)
    from math import erf, exp, pi, sqrt

    e_abs = lambda m: s * sqrt(2 / pi) * exp(-(m**2) / (2 * s**2)) + m * erf(m / (s * sqrt(2)))  # noqa: E731
    ref = 2 * e_abs(1.0) - 2 * e_abs(0.0)
    assert abs(energy_distance(x, y) - ref) < 0.02
    assert abs(energy_distance(x, torch.randn(4000, 1, generator=g))) < 0.01
    # summed in blocks of rows (memory), the value is the same to rounding, for blocks that do not divide n
    assert energy_distance(x[:1001], y[:999], block=97) == pytest.approx(energy_distance(x[:1001], y[:999], block=4096),
                                                                        rel=1e-12)


def test_the_noise_floor_bounds_about_95_percent_of_what_a_perfect_model_reads():
    """Twice the std: about 95% of fresh exact-sample scores lie within the floor of their mean (one std would hold
    about 68%), and averaging sample draws, as the studies score models, lowers it."""
    draw = lambda n, g: torch.randn(n, 2, generator=g)  # noqa: E731
    heldout = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
    floor = noise_floor(draw, heldout, 500, draws=24)
    scores = torch.tensor([energy_distance(draw(500, torch.Generator().manual_seed(100 + i)), heldout)
                           for i in range(60)])
    inside = float(((scores - scores.mean()).abs() <= floor).double().mean())
    assert 0.85 <= inside <= 1.0 and float((scores - scores.mean()).abs().max()) > floor / 2, (inside, floor)
    assert noise_floor(draw, heldout, 500, draws=24, average=4) < 0.8 * floor


def test_digits_are_real_8x8_images_in_the_unit_range_with_labels():
    d = load_data(load_config("toy2d", ["data.name=digits"]).data)
    assert d.train.shape[1:] == (1, 8, 8) and d.is_image and d.num_classes == 10
    assert len(d.train) + len(d.heldout) == 1797 and len(d.heldout) == 180
    assert d.train.min() == -1.0 and d.train.max() == 1.0
    assert set(d.train_labels.tolist()) == set(range(10)) and len(d.train_labels) == len(d.train)
    # the same digit looks alike: class means are further apart than the spread within a class
    zeros, ones = d.train[d.train_labels == 0], d.train[d.train_labels == 1]
    assert (zeros.mean(0) - ones.mean(0)).norm() > 0.5 * zeros.std(0).norm()


def test_cifar10_python_batches(tmp_path, write_fake_cifar):
    last = write_fake_cifar(tmp_path / "cifar-10-batches-py")
    d = load_data(load_config("toy2d", [f"data.name=cifar10:{tmp_path / 'cifar-10-batches-py'}"]).data)
    assert d.train.shape == (100, 3, 32, 32) and d.heldout.shape == (20, 3, 32, 32) and d.num_classes == 10
    # the test batch is held out, pixel (c, h, w) = data[c * 1024 + h * 32 + w] scaled to [-1, 1]
    assert d.heldout[3, 2, 5, 7].item() == pytest.approx(last[b"data"][3, 2 * 1024 + 5 * 32 + 7] / 127.5 - 1)
    assert d.heldout_labels.tolist() == [int(v) for v in last[b"labels"]]


def test_missing_cifar10_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_data(load_config("toy2d", [f"data.name=cifar10:{tmp_path}"]).data)


def test_image_folder_with_one_subfolder_per_class(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    d = load_data(load_config("toy2d", [f"data.name=folder:{tmp_path}", "data.heldout_fraction=0.2"]).data)
    assert d.train.shape == (8, 3, 6, 6) and d.heldout.shape == (2, 3, 6, 6) and d.num_classes == 2
    assert sorted(d.train_labels.tolist() + d.heldout_labels.tolist()) == [0] * 5 + [1] * 5
    Image.fromarray(np.zeros((7, 7, 3), dtype=np.uint8)).save(tmp_path / "cat" / "odd.png")
    with pytest.raises(ValueError, match="different sizes"):
        load_data(load_config("toy2d", [f"data.name=folder:{tmp_path}"]).data)


def test_xflip_mirrors_about_half_of_the_images():
    from imm.data import random_xflip

    torch.manual_seed(0)
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(1000, 1, 1, 1)
    y = random_xflip(x)
    flipped = (y[:, 0, 0, 0] == 3).float().mean()
    assert 0.45 < flipped < 0.55 and bool(((y[:, 0, 0, 0] == 0) | (y[:, 0, 0, 0] == 3)).all())
    assert torch.equal(y[y[:, 0, 0, 0] == 3][0, 0, 0], torch.tensor([3.0, 2.0, 1.0, 0.0]))


def test_image_grid_png(tmp_path):
    from PIL import Image

    from imm.sampling.pictures import image_grid_png

    image_grid_png(torch.rand(10, 1, 8, 8) * 2 - 1, tmp_path / "g.png")
    img = Image.open(tmp_path / "g.png")
    assert img.mode == "L" and img.size == (37 * 7, 28 * 7)  # 4x3 grid of 8x8 with borders, enlarged to >= 256
    image_grid_png(torch.zeros(4, 3, 5, 5), tmp_path / "c.png", min_size=1)
    c = np.asarray(Image.open(tmp_path / "c.png"))
    assert c.shape == (13, 13, 3) and c[1, 1].tolist() == [128, 128, 128] and c[0, 0].tolist() == [0, 0, 0]


class _Payload:
    """What a crafted batch would hold: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _cifar_archive(folder, write_fake_cifar):
    """The official archive's layout (cifar-10-batches-py/ in a .tar.gz), with small random batches."""
    import tarfile

    write_fake_cifar(folder / "cifar-10-batches-py")
    (folder / "cifar-10-batches-py" / "readme.html").write_text("<html></html>")
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_a_crafted_cifar_batch_is_refused_before_its_payload_runs(tmp_path, write_fake_cifar):
    import pickle

    root = tmp_path / "cifar-10-batches-py"
    write_fake_cifar(root)
    marker = tmp_path / "ran"
    batch = {b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 20, b"filenames": [_Payload(marker)]}
    (root / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=r"data_batch_3 is not a CIFAR-10 batch: asks for posix\.system; the "
                                         r"CIFAR-10 format holds only numpy arrays"):
        load_data(load_config("toy2d", [f"data.name=cifar10:{root}"]).data)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is real: a plain unpickler runs it
    assert marker.exists()


def test_the_data_command_turns_the_archive_into_arrays_that_load_without_unpickling(tmp_path, write_fake_cifar):
    from imm.data import cifar10
    from imm.data.remote import file_digest

    archive = _cifar_archive(tmp_path, write_fake_cifar)
    shapes = cifar10.prepare(archive, tmp_path / "arrays", expected_md5=file_digest(archive, "md5"))
    assert shapes == {"train_x.npy": (100, 3, 32, 32), "train_y.npy": (100,), "test_x.npy": (20, 3, 32, 32),
                      "test_y.npy": (20,)}
    assert sorted(p.name for p in (tmp_path / "arrays").iterdir()) == sorted(shapes)  # no partial file left
    arrays = load_data(load_config("toy2d", [f"data.name=cifar10:{tmp_path / 'arrays'}"]).data)
    batches = load_data(load_config("toy2d", [f"data.name=cifar10:{tmp_path / 'cifar-10-batches-py'}"]).data)
    for field in ("train", "heldout", "train_labels", "heldout_labels"):
        assert torch.equal(getattr(arrays, field), getattr(batches, field)), field
    assert np.load(tmp_path / "arrays" / "test_x.npy", allow_pickle=False).dtype == np.uint8


def test_the_data_command_refuses_an_archive_that_is_not_the_official_one(tmp_path, write_fake_cifar, capsys):
    from orchestrator import cli

    archive = _cifar_archive(tmp_path, write_fake_cifar)
    assert cli.main(["data", "cifar10", str(archive), "--out", str(tmp_path / "arrays")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imm-orch: error: archive: ") and err.count("\n") == 1, err
    assert "not the official cifar-10-python.tar.gz's c58f30108f718f92721af3b95e74349a" in err
    assert not (tmp_path / "arrays").exists()


def test_the_inception_weights_are_checked_and_written_as_safetensors(tmp_path, inception_file):
    import hashlib

    from imm.metrics.inception import load_inception, to_safetensors

    out = tmp_path / "inception.safetensors"
    with pytest.raises(ValueError, match=r"weights: .* has SHA-256 .*, not the 6726825d\.\.\. that "
                                         r"pt_inception-2015-12-05-6726825d\.pth's name publishes"):
        to_safetensors(inception_file, out)
    assert not out.exists()
    digest = hashlib.sha256(inception_file.read_bytes()).hexdigest()
    assert to_safetensors(inception_file, out, sha256_prefix=digest[:8]) > 300
    a, b = load_inception(out).state_dict(), load_inception(inception_file).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
