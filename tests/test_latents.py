"""Latent data sets (imm/data/latents.py): the shard format, each worker reading only its own shards (memory-mapped
locally, through a bounded cache from moto's S3 server), memory that does not grow with the set, and training a
DiT on latents end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imm.config import ConfigError, load_config
from imm.data.latents import FORMAT, LatentWriter, Manifest, ShardReader

SHAPE = (4, 8, 8)


def write_set(root: Path, shards: int = 6, per_shard: int = 50, classes: int = 10, heldout: int = 40,
              shape=SHAPE, dtype="float16") -> Manifest:
    """Latents whose channel 0 holds the row's global index (so a read row tells which shard it came from),
    the other channels N(3, 2^2); labels = index mod classes."""
    w = LatentWriter(root, shape, shard_size=per_shard, num_classes=classes, vae="tiny-test-vae", dtype=dtype)
    g = np.random.default_rng(0)
    n = shards * per_shard
    for start in range(0, n, 35):  # batches that do not line up with the shards
        idx = np.arange(start, min(start + 35, n))
        z = 3 + 2 * g.standard_normal((len(idx), *shape)).astype(np.float32)
        z[:, 0] = idx[:, None, None] / 100.0  # float16 resolves 0.01 up to 4 (idx < 400)
        w.add(z, idx % classes)
    w.add_heldout(3 + 2 * g.standard_normal((heldout, *shape)), np.arange(heldout) % classes)
    return w.close()


def row_index(x: torch.Tensor, m: Manifest) -> np.ndarray:
    """The global row index written into channel 0, read back from training-space latents."""
    z = m.decode_scale(x)
    return np.rint(z[:, 0].mean(dim=(-1, -2)).numpy() * 100).astype(int)


def test_the_manifest_records_the_set_and_normalising_is_undone_by_decode_scale(tmp_path):
    m = write_set(tmp_path / "set")
    raw = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert raw["format"] == FORMAT and raw["count"] == 300 and len(raw["shards"]) == 6
    assert raw["shape"] == list(SHAPE) and raw["num_classes"] == 10 and raw["vae"] == "tiny-test-vae"
    assert np.load(tmp_path / "set" / "shard-00002.npy", mmap_mode="r").dtype == np.float16
    # channels 1-3 were N(3, 4): the measured mean and std are the per-channel statistics of what was written
    assert m.mean[1:] == pytest.approx([3.0] * 3, abs=0.1) and m.std[1:] == pytest.approx([2.0] * 3, abs=0.1)
    z = torch.from_numpy(np.load(tmp_path / "set" / "shard-00000.npy").astype(np.float32))
    x = m.normalise(z.numpy())
    assert x[:, 1:].std().item() == pytest.approx(0.5, abs=0.03)  # final_std: the model's sigma_d
    assert torch.allclose(m.decode_scale(x), z, atol=1e-5)


def test_each_worker_reads_only_its_own_shards_and_batches_are_seeded(tmp_path):
    m = write_set(tmp_path / "set")
    for rank in range(3):
        reader = ShardReader(m, rank, 3, cache_bytes=1e9)
        torch.manual_seed(0)
        x, y = reader.batch(500, step=1, device="cpu")
        idx = row_index(x, m)
        assert set(idx // 50) == {rank, rank + 3}  # shards r and r + 3 of 6, and every row of them reachable
        assert torch.equal(y, torch.from_numpy(idx % 10))  # labels travel with their rows
        torch.manual_seed(0)
        assert torch.equal(reader.batch(500, step=1, device="cpu")[0], x)  # the step's seed decides the batch


def test_more_workers_than_shards_is_one_line_naming_the_set(tmp_path):
    m = write_set(tmp_path / "set", shards=2)
    with pytest.raises(ConfigError, match=r"^data.name=latents:.*: 2 shard\(s\) for 3 workers; every worker needs one"):
        ShardReader(m, 2, 3, cache_bytes=1e9)


def test_bad_latent_input_is_one_line_before_anything_runs(tmp_path):
    from imm.data import load_data, probe

    with pytest.raises(FileNotFoundError, match=r"data.name=latents:.*: no manifest.json there"):
        probe(f"latents:{tmp_path}")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ConfigError, match=r"format 'something-else', expected 'imm-latents/1'"):
        probe(f"latents:{tmp_path}")
    write_set(tmp_path / "set")
    cfg = load_config("imagenet256_dit", [f"data.name=latents:{tmp_path / 'set'}", "data.xflip=true"])
    with pytest.raises(ConfigError, match=r"^data.xflip: not for latents"):
        load_data(cfg.data)
    with pytest.raises(ConfigError, match=r"^eval.features: 'classifier' needs training images, which a latent set"):
        load_config("imagenet256_dit", ["eval.features=classifier"])
    from orchestrator.infra.preflight import check_local

    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"")
    cfg = load_config("imagenet256_dit", [f"data.name=latents:{tmp_path / 'set'}", "trainer.use_gpu=false",
                                          "eval.reference=null", f"eval.inception_weights={weights}"])
    with pytest.raises(ConfigError, match=r"^eval.vae: FID on latents decodes the samples first; the set names the "
                                          r"VAE 'tiny-test-vae', which is not here"):
        check_local(cfg)


def test_a_set_larger_than_memory_is_read_without_loading_it(tmp_path):
    """48 shards of 4 MB (192 MB, float32 4x32x32): one worker draws batches from every shard, and its anonymous
    memory (what np.load would have filled) grows by well under one shard's worth of rows per batch."""
    m = write_set(tmp_path / "big", shards=48, per_shard=256, shape=(4, 32, 32), dtype="float32", heldout=8)
    assert sum((tmp_path / "big" / s["file"]).stat().st_size for s in m.shards) > 190 * 2**20

    before, seen = _anon_mb(), set()
    reader = ShardReader(m, 0, 1, cache_bytes=1e12)
    for step in range(2, 102):
        seen |= set(row_index(reader.batch(64, step=step, device="cpu")[0], m) // 256)
    assert seen == set(range(48))  # every shard was read from
    assert _anon_mb() - before < 16, (before, _anon_mb())  # against 192 MB had the set been loaded


@pytest.mark.slow
def test_training_on_a_set_larger_than_memory_keeps_its_peak_memory_below_a_quarter_of_it(tmp_path):
    """The training loop on the 192 MB set (200 steps of 64 rows: every shard read): the peak anonymous memory,
    sampled every 10 ms, stays below a quarter of the set (had it been loaded, it would exceed it)."""
    import threading

    from imm.training.loop import train_loop

    m = write_set(tmp_path / "big", shards=48, per_shard=256, shape=(4, 32, 32), dtype="float32", heldout=64)
    over = ["model.arch=mlp", "model.hidden=32", "model.depth=1", "model.class_conditional=true", "train.batch_size=64",
            "train.log_every=50", "eval.n_samples=64", "eval.batch_size=32", "eval.steps=[1]", "eval.features=none",
            "trainer.use_gpu=false", f"data.name=latents:{m.root}"]
    steps = lambda n: [f"train.steps={n}", f"train.checkpoint_every={n}", f"eval.every={n}"]  # noqa: E731
    small = write_set(tmp_path / "small", shards=1, per_shard=64, shape=(4, 32, 32), dtype="float32", heldout=64)
    warm = [*over[:-1], f"data.name=latents:{small.root}", *steps(2)]
    train_loop(load_config("imagenet256_dit", warm), device="cpu")  # what any run allocates, on another set
    peak, done = [_anon_mb()], threading.Event()

    def watch():
        while not done.wait(0.01):
            peak.append(_anon_mb())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        train_loop(load_config("imagenet256_dit", [*over, *steps(200)]), device="cpu")
    finally:
        done.set()
        watcher.join()
    assert len(peak) > 20 and max(peak) - peak[0] < 48, (peak[0], max(peak))


def _anon_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("RssAnon:"))) / 1024


def test_from_s3_a_worker_fetches_its_shards_once_a_window_at_a_time(s3_env, tmp_path):
    bucket = "latents-window"
    s3_env.create_bucket(Bucket=bucket)
    m_local = write_set(tmp_path / "set", shards=8, per_shard=50)
    for f in (tmp_path / "set").iterdir():
        s3_env.upload_file(str(f), bucket, f"in/{f.name}")
    m = Manifest.read(f"s3://{bucket}/in")
    shard_bytes = (tmp_path / "set" / "shard-00000.npy").stat().st_size
    # room for 2 of the worker's 4 shards (1, 3, 5, 7): windows {1, 3} then {5, 7}, 100 rows each
    reader = ShardReader(m, 1, 2, cache_bytes=2.5 * shard_bytes, cache_dir=tmp_path / "cache")
    assert reader.window == 2
    mine = [f"shard-{i:05d}.npy" for i in (1, 3, 5, 7)]
    seen = []
    for step in range(1, 9):  # 8 batches of 25 rows: one pass over the worker's 200 rows
        torch.manual_seed(step)
        seen.append(set(row_index(reader.batch(25, step=step, device="cpu")[0], m_local) // 50))
        cached = sorted(p.name for p in (tmp_path / "cache").glob("shard-?????.npy"))
        assert cached == (mine[:2] if step <= 4 else mine[2:])  # the previous window's copies are gone
    assert set().union(*seen[:4]) == {1, 3} and set().union(*seen[4:]) == {5, 7}
    assert [f for f in reader.fetched_files if not f.endswith("labels.npy")] == mine  # each once, none of rank 0's
    labels_bytes = sum((tmp_path / "set" / f"shard-{i:05d}.labels.npy").stat().st_size for i in (1, 3, 5, 7))
    assert reader.fetched_bytes == 4 * shard_bytes + labels_bytes


@pytest.mark.slow
def test_a_dit_trains_on_latents_and_samples(tmp_path):
    """DiT-S/2 on a toy latent set, class-conditional with CFG, on the CPU: the loss falls and samples are finite;
    the checkpoint records the latent set's sigma_d (final_std), not a measured one."""
    from imm.methods import build_model
    from imm.sampling import generate
    from imm.training.loop import CHECKPOINT_FILE, train_loop

    root = tmp_path / "set"
    write_set(root, shards=2, per_shard=64, heldout=64)
    cfg = load_config("imagenet256_dit", [
        f"data.name=latents:{root}", "model.dit=S/2", "train.batch_size=16", "train.steps=12", "train.lr=3e-4",
        "train.log_every=4", "train.checkpoint_every=12", "eval.every=12", "eval.n_samples=32", "eval.batch_size=16",
        "eval.steps=[1,2]", "eval.features=none", "trainer.num_workers=1", "trainer.use_gpu=false",
        f"train.out_dir={tmp_path / 'run'}"])
    seen = []

    def report(metrics, checkpoint_dir):
        seen.append(metrics)
        if checkpoint_dir:
            seen.append(torch.load(Path(checkpoint_dir) / CHECKPOINT_FILE, weights_only=False))

    train_loop(cfg, device="cpu", report=report)
    losses = [s["train/loss"] for s in seen if "train/loss" in s]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert {"energy/steps_1", "energy/steps_2"} <= set(seen[-2]) and not any(k.startswith("fid") for k in seen[-2])
    state = seen[-1]
    assert state["sigma_d"] == 0.5 and state["data_shape"] == list(SHAPE) and state["num_classes"] == 10
    model = build_model(cfg, SHAPE, state["sigma_d"], state["num_classes"])
    model.load_state_dict(state["ema"])
    x = generate(model.eval(), cfg, 8, 2, seed=0, data_shape=SHAPE, labels=torch.arange(8))
    assert x.shape == (8, *SHAPE) and torch.isfinite(x).all()
    # adaLN-Zero's output layer starts at exactly zero (tests/test_dit.py); trained, the network answers
    assert state["ema"]["net.final_layer.linear.weight"].abs().sum() > 0


def test_reading_the_held_out_latents_fetches_no_shard_of_any_worker(s3_env, tmp_path):
    """The evaluator's held-out read fetches the held-out files only: it once fetched every shard's labels into the
    cache the workers share, so a worker found its own labels there and its fetched-MB metric came out short."""
    from imm.data.latents import LatentData

    bucket = "latents-heldout"
    s3_env.create_bucket(Bucket=bucket)
    write_set(tmp_path / "set", shards=4, per_shard=20, heldout=16)
    for f in (tmp_path / "set").iterdir():
        s3_env.upload_file(str(f), bucket, f"in/{f.name}")
    data = LatentData(Manifest.read(f"s3://{bucket}/in"), cache_bytes=2**30)
    assert data.heldout.shape[0] == 16 and data.heldout_labels.shape == (16,)
    cache = {p.name for p in (Path(data.reader(0, 1).cache)).iterdir() if not p.name.startswith(".")}
    assert cache == {"heldout.npy", "heldout.labels.npy"}, cache


@pytest.mark.slow
def test_two_ray_workers_fetch_only_their_own_shards_from_s3_and_the_run_shows_it(ray_local, mlflow_server, s3_env,
                                                                                  tiny_vae, inception_file, tmp_path,
                                                                                  capsys):
    """Latent training end to end: 2 Ray workers on latents:s3://..., each fetching only its shards; the samples
    decoded by the set's VAE and scored by Inception (random weights) against the decoded held-out latents; the
    metrics, the per-worker fetched MB and the decoded sample grid in MLflow."""
    from orchestrator import cli
    from orchestrator.track import tracking

    bucket = "latents-train"
    s3_env.create_bucket(Bucket=bucket)
    write_set(tmp_path / "set", shards=4, per_shard=64, heldout=64)
    for f in (tmp_path / "set").iterdir():
        s3_env.upload_file(str(f), bucket, f"imagenet/{f.name}")
    args = ["train", "imagenet256_dit", f"data.name=latents:s3://{bucket}/imagenet", "model.arch=mlp",
            "model.hidden=32", "model.depth=1", "train.steps=20", "train.batch_size=32", "train.log_every=10",
            "train.checkpoint_every=20", "eval.every=20", "eval.n_samples=64", "eval.batch_size=32",
            "eval.steps=[1,2]", "trainer.num_workers=2", "trainer.use_gpu=false", f"eval.vae={tiny_vae[0]}",
            "eval.features=inception", f"eval.inception_weights={inception_file}", "eval.reference=null",
            f"storage.root={tmp_path / 'runs'}", "--name", "latents-s3", "--tracking-uri", mlflow_server,
            "--experiment", "latents"]
    assert cli.main(args) == 0, capsys.readouterr().err
    import re

    run_id = re.search(r"^mlflow run id: (\w+)$", capsys.readouterr().out, re.M).group(1)
    mlc = tracking.client(mlflow_server)
    metrics = mlc.get_run(run_id).data.metrics
    for rank in range(2):
        own = sum((tmp_path / "set" / f).stat().st_size
                  for i in (rank, rank + 2) for f in (f"shard-{i:05d}.npy", f"shard-{i:05d}.labels.npy"))
        assert metrics[f"data/fetched_mb/rank_{rank}"] == pytest.approx(own / 2**20), rank  # its 2 shards, once
        history = mlc.get_metric_history(run_id, f"data/fetched_mb/rank_{rank}")
        assert [m.step for m in history] == [10, 20] and history[0].value == history[1].value  # no refetch
    assert {"energy/steps_1", "energy/steps_2", "fid/steps_1", "fid/steps_2"} <= set(metrics)
    run = mlc.get_run(run_id)
    assert run.data.tags["imm.eval.features"] == "inception"
    assert "samples.png" in {a.path for a in mlc.list_artifacts(run_id)}  # the decoded images, in a grid


def test_the_reads_benchmark_runs_at_toy_size():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "benchmarks.speed.latent_reads", "--shards", "4", "--rows", "128",
                          "--batch", "32"], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len([line for line in out.stdout.splitlines() if "x memory" in line]) == 3, out.stdout


def test_samples_are_decoded_by_the_sets_vae_through_its_scaling(tmp_path, tiny_vae):
    from imm.data.latents import LatentDecoder, decoder_vae

    folder, vae = tiny_vae
    m = write_set(tmp_path / "set", shards=1)
    assert decoder_vae(m, None) is None  # the manifest names "tiny-test-vae", which is not at hand
    assert decoder_vae(m, str(folder)) == str(folder)
    m = Manifest(**{**m.__dict__, "vae": str(folder)})
    assert decoder_vae(m, None) == str(folder)  # the manifest's own, when it is at hand
    x = torch.randn(5, *SHAPE) * 0.5
    images = LatentDecoder(m, str(folder), "cpu")(x, batch_size=2)
    with torch.no_grad():
        want = vae.decode(m.decode_scale(x)).sample.clamp(-1, 1)
    assert images.shape == (5, 3, 16, 16) and torch.allclose(images, want, atol=1e-5)


def test_relative_paths_reach_ray_workers_as_absolute_ones(tmp_path, monkeypatch):
    """`imm-orch encode ... --out latents` then `imm-orch train ... data.name=latents:latents` failed in the worker
    ("no manifest.json there"): Ray's workers run in another directory. The plan makes local paths absolute."""
    from orchestrator.run.launch import plan_run

    monkeypatch.chdir(tmp_path)
    cfg = load_config("imagenet256_dit", ["data.name=latents:latents", "eval.vae=vae", "eval.reference=s3://b/ref.npz"])
    plan = plan_run(cfg, name="rel")
    assert plan.cfg.data.name == f"latents:{tmp_path / 'latents'}" and plan.cfg.eval.vae == str(tmp_path / "vae")
    assert plan.cfg.eval.inception_weights == str(tmp_path / "weights" / "inception.safetensors")
    assert plan.cfg.eval.reference == "s3://b/ref.npz"  # remote: as given
    assert plan_run(load_config("toy2d", []), name="toy").cfg.data.name == "8gaussians"  # not a path
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # a Ray job's driver: its workers share its directory
    assert plan_run(cfg, name="rel").cfg.data.name == "latents:latents"
