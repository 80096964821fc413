"""Every check that runs before Ray starts, so that a mistake costs one line and nothing is created.

The checks walk one declared list, `locations(cfg)`: every place a run reads (its data, the Inception weights,
the reference batch, the VAE) or writes (Ray's checkpoints, MLflow's artifacts), by the config key that names it,
with `data.name` parsed once (`imm.data.DataSource`). Local files are checked on this machine when the embedded
Ray runs here; every s3:// place answers (endpoint, credentials, bucket, object); on a cluster or in a Ray job
every store must be one all nodes reach.

    check_run      imm-orch train
    check_sweep    imm-orch sweep (and its stored study)
    check_shared   imm-orch submit, and train/sweep once connected to a cluster of several nodes
    check_encode   imm-orch encode
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imm.config import ConfigError
from imm.data import DataSource
from imm.data.remote import is_remote
from orchestrator.infra import storage
from orchestrator.track import run_record
from orchestrator.track.tracking import ARTIFACTS_ENV

SERVER_SCHEMES = ("http://", "https://", "databricks")


@dataclass(frozen=True)
class Location:
    field: str  # the config key (or environment variable) that names it: what an error names
    uri: str  # a local path or an s3:// URI
    kind: str  # data (data.name's set), file, vae (a folder with config.json), store (the run writes there)

    @property
    def reads(self) -> bool:
        return self.kind != "store"


def locations(cfg) -> list[Location]:
    """The places the run reads or writes, those its settings use (Inception weights only for Inception features,
    a reference batch only with features)."""
    features = cfg.eval.features
    found = [
        Location("data.name", DataSource.parse(cfg.data.name).path or "", "data"),
        Location("eval.inception_weights", (features in ("auto", "inception") and cfg.eval.inception_weights) or "", "file"),
        Location("eval.reference", (features != "none" and cfg.eval.reference) or "", "file"),
        Location("eval.vae", cfg.eval.vae or "", "vae"),
        Location("storage.ray_storage", cfg.storage.ray_storage or "", "store"),
        Location(f"${ARTIFACTS_ENV}", os.environ.get(ARTIFACTS_ENV, ""), "store"),
    ]
    return [loc for loc in found if loc.uri]


def _missing(loc: Location) -> str | None:
    """Why a local location the run reads is not there, or None."""
    path = Path(loc.uri).expanduser()
    if loc.field == "eval.inception_weights" and not path.is_file():
        from imm.metrics.inception import WEIGHTS_HELP

        return f"no file at {loc.uri!r}. {WEIGHTS_HELP}"
    if loc.field == "eval.reference" and not path.is_file():
        return (f"no file at {loc.uri!r}; give an ADM reference batch .npz (arr_0: uint8 images), or "
                "eval.reference=null for the training set's statistics")
    if loc.kind == "vae" and not (path / "config.json").is_file():
        return f"{loc.uri!r} has no config.json; give the folder AutoencoderKL.save_pretrained wrote"
    return None


# --- the checks ----------------------------------------------------------------------------------------------

def check_local(cfg) -> None:
    """An embedded Ray runs here: its workers read this machine's files, and must fit on its GPUs."""
    from imm.data import probe

    probe(cfg.data.name)  # the data's own format checks
    for loc in locations(cfg):
        problem = None if is_remote(loc.uri) or loc.kind in ("data", "store") else _missing(loc)
        if problem:
            raise ConfigError(f"{loc.field}: {problem}")
    _check_latents_decoder(cfg)
    if cfg.trainer.use_gpu:
        import torch

        have = torch.cuda.device_count()
        if have < cfg.trainer.num_workers:
            raise ConfigError(
                f"trainer.use_gpu: {cfg.trainer.num_workers} GPU worker(s) need as many GPUs, this machine has {have}; "
                "set trainer.use_gpu=false or pass --address of a GPU cluster"
            )


def _check_latents_decoder(cfg) -> None:
    """FID on latents decodes the samples first: the VAE must be here."""
    from imm.metrics.evaluator import wants_inception

    data = DataSource.parse(cfg.data.name)
    if data.kind == "latents" and data.is_local_path and wants_inception(cfg) and not cfg.eval.vae:
        from imm.data.latents import Manifest, decoder_vae

        manifest = Manifest.read(data.path)
        if decoder_vae(manifest, None) is None:
            raise ConfigError(f"eval.vae: FID on latents decodes the samples first; the set names the VAE "
                              f"{manifest.vae!r}, which is not here: set eval.vae to its folder (or eval.features=none)")


def check_s3(cfg) -> None:
    """Every s3:// place the run reads or writes answers: the endpoint, the credentials, the buckets, and the
    objects it reads (one short probe each, imm.data.remote.probe)."""
    from imm.data.remote import probe

    for loc in locations(cfg):
        if is_remote(loc.uri):
            try:
                probe(loc.uri, loc.field, exists=loc.reads)
            except ValueError as e:
                raise ConfigError(str(e)) from None


def check_shared(cfg, *, tracking_uri: str, where: str, in_job: bool, study_url: str | None = None) -> None:
    """Refuse stores that live on one node, before anything is submitted, started or written.

    On a multi-node cluster the nodes share no disk; in a Ray job the working directory (where `./imm-runs`
    resolves) is a temporary folder on the head node that Ray deletes with the job. MLflow must be a server,
    Ray checkpoints on S3 or a folder declared shared (`storage.shared=true`), and the study in an RDB or a
    journal on that shared folder. `where` says why ("in a Ray job", "on a 2-node cluster").
    """
    if not tracking_uri.startswith(SERVER_SCHEMES):
        raise ConfigError(f"--tracking-uri: {tracking_uri} is a local file, and {where} MLflow must be a server every "
                          "node reaches; pass --tracking-uri http://HOST:5000 (or set MLFLOW_TRACKING_URI)")
    raw = cfg.storage.ray_storage
    if not (raw and raw.startswith("s3://")):
        path = raw or f"{cfg.storage.root.rstrip('/')}/ray"
        what = f"{raw!r}" if raw else f"unset, so Ray checkpoints go to <storage.root>/ray = {path}, which"
        problem = _local_problem(path, cfg, where, in_job)
        if problem:
            raise ConfigError(f"storage.ray_storage: {what} {problem}; use storage.ray_storage=s3://bucket/prefix "
                              "(or $IMM_RAY_STORAGE), or a folder every node mounts, declared with storage.shared=true")
    if study_url is None or not study_url.startswith(("journal:", "sqlite:")):
        return
    problem = f"is an SQLite file, and {where} trials on several nodes write to it" if study_url.startswith("sqlite:") \
        else _local_problem(study_url[len("journal:"):], cfg, where, in_job)
    if problem:
        raise ConfigError(f"storage: the study {study_url!r} {problem}; use an RDB URL (`storage: postgresql://...` in "
                          "the sweep file, or $IMM_OPTUNA_STORAGE), or a journal on a folder every node mounts, declared "
                          "with storage.shared=true")


def _local_problem(path: str, cfg, where: str, in_job: bool) -> str | None:
    """Why a local folder cannot hold shared state here, or None."""
    if in_job and not Path(path).expanduser().is_absolute():
        return "is relative: in a Ray job that is inside the job's temporary working dir, which Ray deletes"
    if not cfg.storage.shared:
        return f"is on one node's disk, and {where} the nodes share no disk"
    return None


def check_shared_stores(cfg, tracking_uri: str, study: str | None = None, nodes: int = 1) -> None:
    """In a Ray job, or connected to a cluster of `nodes` > 1: every store must be shared (`check_shared`)."""
    from orchestrator.infra import cluster

    if cluster.in_job():
        where = "in a Ray job"
    elif nodes > 1:
        where = f"on a {nodes}-node cluster"
    else:
        return
    check_shared(cfg, tracking_uri=tracking_uri, where=where, in_job=cluster.in_job(), study_url=study)


def check_run(cfg, tracking_uri: str, *, local: bool, dry_run: bool) -> None:
    """`imm-orch train`: `local` when the embedded Ray will run here; a dry run contacts no S3."""
    from orchestrator.track import tracking

    if local:
        check_local(cfg)
    check_shared_stores(cfg, tracking_uri)
    tracking.check_reachable(tracking_uri)
    if not dry_run:
        check_s3(cfg)
        run_record.check_continuation(storage.ray_storage(cfg), cfg.name, tracking_uri)
        if cfg.train.init_from:
            from orchestrator.registry.models import check_init_from

            check_init_from(cfg, tracking_uri)
        if cfg.train.teacher:
            from orchestrator.registry.models import check_teacher_model

            check_teacher_model(cfg, tracking_uri)


def check_sweep(sweep, tracking_uri: str | None, *, local: bool, dry_run: bool, resume: bool) -> None:
    """`imm-orch sweep`: its base config as a run's, and its stored study agrees with `resume` and the objective."""
    from orchestrator.sweep.study import check_study, study_setting
    from orchestrator.track import tracking

    if local:
        check_local(sweep.base)
    uri = tracking.tracking_uri(sweep.base, tracking_uri)
    check_shared_stores(sweep.base, uri, study_setting(sweep))
    if not dry_run:
        import optuna

        tracking.check_reachable(uri)
        check_s3(sweep.base)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        run_record.check_sweep_continuation(check_study(sweep, resume=resume), uri)
        if sweep.base.train.init_from:  # a base config may start every trial from one model
            from orchestrator.registry.models import check_init_from

            check_init_from(sweep.base, uri)
        if sweep.base.train.teacher:  # or distill one teacher
            from orchestrator.registry.models import check_teacher_model

            check_teacher_model(sweep.base, uri)


def check_encode(source: str, vae: str, out: str) -> None:
    """`imm-orch encode`: the source has images, the VAE folder a config and the output no finished set."""
    from imm.data.latents import MANIFEST
    from imm.data.remote import exists
    from orchestrator.infra.encode import list_images

    list_images(source)
    if not exists(f"{vae.rstrip('/')}/config.json"):
        raise FileNotFoundError(f"--vae: {vae!r} has no config.json (give the folder AutoencoderKL.save_pretrained "
                                "wrote, e.g. a copy of stabilityai/sd-vae-ft-ema)")
    if exists(f"{out.rstrip('/')}/{MANIFEST}"):
        raise ValueError(f"--out: {out!r} already holds a latent set ({MANIFEST}); choose another place")
