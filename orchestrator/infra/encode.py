"""`imm-orch encode`: images -> VAE latents in imm/data/latents.py's format, as a Ray Data batch-inference job.

The images (a folder or an s3:// prefix; one level of subfolders names the classes) are listed and shuffled with a
fixed seed, so every shard mixes the classes (a worker streaming a window of shards sees them all), and the first
`heldout` go to the held-out file the metrics use. Ray Data reads and encodes them in `map_batches` on a pool of
actors, each holding the VAE (diffusers' AutoencoderKL from a local folder or an s3:// prefix, never from the Hub),
one GPU each where the cluster has GPUs. The driver writes the shards as batches arrive and the manifest last, then
uploads the folder if `out` is on S3 (again the manifest last: a prefix without one is an unfinished set).

Each image is center-cropped to a square and resized (bicubic) to `resolution`, as ADM's reference batches are.
`posterior`: store the encoder's posterior mean, or (`sample`) its mean and std, from which training draws at each
read, as the official IMM encoder does (it stores both and samples at every read). `normalisation`: the set's own
per-channel statistics, or `official`, the constants the released ImageNet weights were trained on.
"""

from __future__ import annotations

import io
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imm.data import IMAGE_EXTENSIONS
from imm.data.latents import MANIFEST, OFFICIAL_NORMALISATION, LatentWriter, Manifest, load_vae
from imm.data.remote import is_remote, s3_client, split

SOURCE_PREFIX = "folder:"


@dataclass(frozen=True)
class Image:
    path: str  # a local path or s3:// URI
    label: int


def list_images(source: str) -> tuple[list[Image], list[str]]:
    """The images under a folder or s3:// prefix and the class names (subfolders; [] when the images are flat)."""
    if not source.startswith(SOURCE_PREFIX):
        raise ValueError(f"source: {source!r} is not folder:PATH (PATH a folder or an s3://bucket/prefix)")
    root = source[len(SOURCE_PREFIX):].rstrip("/")
    if is_remote(root):
        bucket, prefix = split(root)
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
        rel = [o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", [])]
    else:
        base = Path(root).expanduser()
        if not base.is_dir():
            raise FileNotFoundError(f"source: folder {root!r} not found")
        rel = [str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()]
    rel = sorted(r for r in rel if r.lower().endswith(IMAGE_EXTENSIONS) and r.count("/") <= 1)
    if not rel:
        raise FileNotFoundError(f"source: no images ({', '.join(IMAGE_EXTENSIONS)}) in {root!r} or its subfolders")
    classes = sorted({r.split("/")[0] for r in rel if "/" in r})
    if classes and any("/" not in r for r in rel):
        raise ValueError(f"source: {root!r} mixes images in class subfolders with images beside them")
    return [Image(f"{root}/{r}", classes.index(r.split("/")[0]) if classes else 0) for r in rel], classes


def center_crop(img, resolution: int) -> np.ndarray:
    """A PIL image -> (3, resolution, resolution) uint8: the central square, resized bicubic."""
    from PIL import Image as PILImage

    img = img.convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((resolution, resolution), PILImage.BICUBIC)
    return np.asarray(img).transpose(2, 0, 1)


def read_image(path: str, resolution: int) -> np.ndarray:
    from PIL import Image as PILImage

    if is_remote(path):
        bucket, key = split(path)
        data = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return center_crop(PILImage.open(io.BytesIO(data)), resolution)
    return center_crop(PILImage.open(path), resolution)


class Encoder:
    """A Ray Data actor: the VAE, loaded once, encoding batches of image paths into posterior means (and stds)."""

    def __init__(self, vae: str, resolution: int, posterior: str = "mean"):
        import torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.vae = load_vae(vae).to(self.device)
        self.resolution, self.posterior = resolution, posterior

    def __call__(self, batch: dict) -> dict:
        torch = self.torch
        pixels = np.stack([read_image(p, self.resolution) for p in batch["path"]])
        x = torch.from_numpy(pixels).to(self.device).float() / 127.5 - 1.0
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
            z = dist.mean if self.posterior == "mean" else torch.cat([dist.mean, dist.std], dim=1)
            z = z.float().cpu().numpy()
        return {"z": z, "label": batch["label"], "heldout": batch["heldout"]}


def encode(source: str, vae: str, out: str, *, resolution: int = 256, shard_size: int = 4096, heldout: int = 1000,
           batch_size: int = 64, workers: int | None = None, seed: int = 0, final_std: float = 0.5,
           dtype: str = "float16", posterior: str = "mean", normalisation: str = "own", say=print) -> Manifest:
    """Encode every image under `source` into a latent set at `out` (a folder or an s3:// prefix) on the Ray
    this process is connected to; returns the set's manifest."""
    import ray

    if not is_remote(vae):  # the manifest names it for decoding later, from wherever that runs
        vae = str(Path(vae).expanduser().resolve())
    images, classes = list_images(source)
    if heldout >= len(images):
        raise ValueError(f"--heldout: {heldout} of {len(images)} images leaves none to train on")
    random.Random(seed).shuffle(images)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    pool = workers or max(1, gpus or int(ray.cluster_resources().get("CPU", 1)) // 2)
    say(f"encode: {len(images)} images ({len(classes) or 'no'} classes) -> {out}; {pool} VAE actor(s) on "
        f"{'GPU' if gpus else 'CPU'}, batch {batch_size}, {heldout} held out")
    items = [{"path": im.path, "label": im.label, "heldout": i < heldout} for i, im in enumerate(images)]
    ds = ray.data.from_items(items).map_batches(
        Encoder, fn_constructor_args=(vae, resolution, posterior), batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=pool),
        num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)
    staging = Path(tempfile.mkdtemp(prefix="imm-encode-")) if is_remote(out) else Path(out).expanduser()
    writer, held_z, held_y = None, [], []
    t0, done, said = time.perf_counter(), 0, time.perf_counter()
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        z, y, is_held = batch["z"], batch["label"].astype(np.int64), batch["heldout"].astype(bool)
        if writer is None:
            c, *rest = z.shape[1:]
            shape = (c // 2, *rest) if posterior == "sample" else (c, *rest)
            if normalisation == "official" and shape[0] != len(OFFICIAL_NORMALISATION["mean"]):
                raise ValueError(f"--normalisation official: the constants are for sd-vae-ft-ema's 4 latent channels, "
                                 f"this VAE gives {shape[0]}")
            writer = LatentWriter(staging, shape, shard_size=shard_size, dtype=dtype, num_classes=len(classes),
                                  vae=vae, final_std=final_std, posterior=posterior)
        held_z.append(z[is_held])
        held_y.append(y[is_held])
        if (~is_held).any():
            writer.add(z[~is_held], y[~is_held])
        done += len(z)
        if time.perf_counter() - said > 10 or done == len(images):
            said = time.perf_counter()
            say(f"encode: {done}/{len(images)} images, {done / (said - t0):.1f} images/s")
    if heldout:
        writer.add_heldout(np.concatenate(held_z), np.concatenate(held_y))
    manifest = writer.close(**(OFFICIAL_NORMALISATION if normalisation == "official" else {}))
    if is_remote(out):
        upload(staging, out)
        shutil.rmtree(staging, ignore_errors=True)
        manifest = Manifest.read(out)
    say(f"encode: wrote {manifest.count} training latents of shape {list(manifest.shape)} in {len(manifest.shards)} "
        f"shard(s) and {heldout} held out to {out} in {time.perf_counter() - t0:.0f}s")
    return manifest


def upload(folder: Path, uri: str) -> None:
    """Every file of `folder` under the s3:// prefix `uri`, the manifest last."""
    bucket, prefix = split(uri.rstrip("/"))
    client = s3_client()
    files = sorted(folder.iterdir(), key=lambda p: p.name == MANIFEST)
    for f in files:
        client.upload_file(str(f), bucket, f"{prefix}/{f.name}")
