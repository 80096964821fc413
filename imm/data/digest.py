"""What a run trained on, by content: a data set's digest, for lineage (the run's MLflow dataset input, the
registered version's tags).

- a set made here (`8gaussians`, ...): its recipe (name, sizes, seed): the same recipe makes the same points;
- `digits`: the recipe and the scikit-learn release that ships the images;
- a local file or folder (`npy:`, `cifar10:`, `folder:`): SHA-256 over every file's relative path and bytes; over
  HASH_LIMIT in all, over every file's relative path and size only (say so: encode such a set as latents, whose
  manifest holds its shards' hashes, for a content digest);
- an s3:// file or prefix: every object's key, size and ETag (S3's own content hash), listed, not downloaded;
- `latents:`: the manifest, which records each shard's SHA-256 (written by `imm-orch encode`): hashing hundreds
  of GB at every run would take longer than some runs, and the manifest's hash changes with any shard's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from imm.data.remote import file_sha256

HASH_LIMIT = 4 << 30  # bytes of local files hashed at every run; above it their sizes stand in


@dataclass(frozen=True)
class DataDigest:
    name: str  # data.name
    digest: str  # hex SHA-256
    source: str  # where it was read: the path or URI, or "generated" / "scikit-learn"
    basis: str  # what was hashed: recipe, files, objects, manifest


def _of(parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _local_files(path: Path) -> tuple[list, str]:
    """(what identifies each file, the basis): its SHA-256, or its size when the files are too large to hash."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    names = [p.name if p == path else p.relative_to(path).as_posix() for p in files]
    if sum(p.stat().st_size for p in files) > HASH_LIMIT:
        return [(n, p.stat().st_size) for n, p in zip(names, files, strict=True)], "file sizes"
    return [(n, file_sha256(p)) for n, p in zip(names, files, strict=True)], "files"


def _s3_objects(uri: str) -> list[tuple[str, int, str]]:
    from imm.data.remote import s3_client

    bucket, _, key = uri[len("s3://"):].partition("/")
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key.rstrip("/"))
    return sorted((o["Key"][len(key):].lstrip("/"), o["Size"], o["ETag"].strip('"'))
                  for page in pages for o in page.get("Contents", []))


def data_digest(cfg) -> DataDigest:
    """The digest of the data set `cfg` (a DataConfig) names."""
    from imm.data import DataSource
    from imm.data.remote import is_remote
    from imm.data.toy2d import TOY_SETS

    source = DataSource.parse(cfg.name)
    if cfg.name in TOY_SETS:
        recipe = {"name": cfg.name, "n_train": int(cfg.n_train), "n_heldout": int(cfg.n_heldout), "seed": int(cfg.seed)}
        return DataDigest(cfg.name, _of(recipe), "generated", "recipe")
    if cfg.name == "digits":
        from importlib.metadata import version

        return DataDigest(cfg.name, _of({"name": "digits", "scikit-learn": version("scikit-learn")}), "scikit-learn",
                          "recipe")
    path = source.path or ""
    if source.kind == "latents":
        from imm.data.latents import MANIFEST, read_text

        text = read_text(f"{path.rstrip('/')}/{MANIFEST}")
        return DataDigest(cfg.name, hashlib.sha256(text.encode()).hexdigest(), path, "manifest")
    if is_remote(path):
        return DataDigest(cfg.name, _of(_s3_objects(path)), path, "objects")
    parts, basis = _local_files(Path(path))
    return DataDigest(cfg.name, _of(parts), path, basis)
