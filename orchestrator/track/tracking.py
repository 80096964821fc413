"""MLflow for one run, on the driver: the tracking URI, the experiment, and the run itself (found again on relaunch).

The driver owns the MLflow run: it creates it before Ray starts training (or finds it again by the tags
`imm.run_name` and `imm.ray_storage` when the same run is relaunched), logs params, tags and the config,
and closes it. Worker retries and relaunches therefore write into the same run. Only rank 0 writes
metrics, through `RankZeroLogger` (`orchestrator.track.rank_zero`), which holds them until the checkpoint
covering them is saved.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imm.config import ConfigError
from orchestrator import terminal
from orchestrator.infra import storage
from orchestrator.track import provenance

DEFAULT_EXPERIMENT = "imm"  # the MLflow experiment of a run or a sweep that names none
RUN_NAME_TAG = "imm.run_name"
STORAGE_TAG = "imm.ray_storage"
JOB_TAG = "imm.ray_job_id"  # the Ray job (`imm-orch submit`, `ray job submit`) whose driver ran the run
CHECKPOINT_PATH_TAG = "imm.checkpoint_path"  # the final Ray checkpoint (full training state), while it is kept
NODES_TAG = "imm.nodes"  # the Ray nodes the run's workers ran on, as IP/node-id prefix
WRITER_TAG = "imm.writer"  # the attempt that may write to the run (RankZeroLogger): a later one takes it over
LOSS_KEY = "train/loss"  # reported at every report step: its history tells how far a run was logged
LR_KEY = "train/lr"
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value


def tracking_uri(cfg: DictConfig, explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the embedded SQLite file `<storage.root>/mlflow.db`."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith("sqlite:///"):  # absolute: Ray workers run in another working directory
        return f"sqlite:///{Path(uri[len('sqlite:///') :]).expanduser().resolve()}"
    if uri:
        return uri
    return f"sqlite:///{storage.root(cfg) / 'mlflow.db'}"


def default_tracking_uri(explicit: str | None = None) -> str:
    """For commands that have no run config (promote, sample, eval): the same rule with the default storage.root."""
    from imm.config import RunConfig

    return tracking_uri(OmegaConf.structured(RunConfig), explicit)


ARTIFACTS_ENV = "IMM_MLFLOW_ARTIFACTS"


def shown_value(v: float) -> float:
    """A metric as MLflow keeps it: 6 significant digits, what a reader compares (and what a sweep's study is told,
    so the two agree)."""
    return float(f"{v:.6g}")


def artifact_root(uri: str) -> str | None:
    """Where new experiments keep their artifacts, as a URI:
    - $IMM_MLFLOW_ARTIFACTS when set (e.g. s3://bucket/mlflow: MLflow's direct mode, in which every client
      writes to S3 itself with its own credentials and MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL_S3);
    - for a SQLite store, `artifacts/` beside the database (MLflow would use ./mlruns in the working directory);
    - for a tracking server, None: the server decides (proxied mode: its --artifacts-destination)."""
    if os.environ.get(ARTIFACTS_ENV):
        return os.environ[ARTIFACTS_ENV]
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "artifacts").as_uri()
    return None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer is one line before anything starts (MLflow's client would retry
    for minutes). Any HTTP answer counts: a server may guard /health behind authentication."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        reason = getattr(reason, "strerror", None) or reason
        raise ConfigError(f"--tracking-uri: no MLflow server answers at {uri} ({reason}); start it, or pass the "
                          "address it listens on") from None


def client(uri: str):
    import logging

    from mlflow import MlflowClient

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
    if uri.startswith("sqlite:///"):
        write_ahead(Path(uri[len("sqlite:///") :]))
    return MlflowClient(tracking_uri=uri)


_write_ahead: set[Path] = set()


def write_ahead(db: Path) -> None:
    """Put the embedded store's SQLite file in write-ahead-log mode (once; the file keeps it): its readers (the UI,
    a sweep's report) no longer wait for its writers (a sweep's trials), nor the writers for them, and a commit
    costs one sync instead of several. Made here, before MLflow creates its tables in the file."""
    import sqlite3

    if db in _write_ahead:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
        if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            con.execute("PRAGMA journal_mode=WAL")
    _write_ahead.add(db)


KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment of this kind on its runs table, not on traces
MODEL_DEVELOPMENT = "custom_model_development"
EXPERIMENT_NOTE = (
    "Runs of Inductive Moment Matching (IMM) and its baselines: one per training run or sweep trial.\n\n"
    "**Metrics** (lower is better). `energy/steps_K`: the energy distance between K-step samples and held-out "
    "data (0 when they match). `fd/steps_K`: the Frechet distance between the feature statistics of K-step "
    "samples and of the training data: FID when the run's `imm.eval.extractor` tag names Inception, else in a small "
    "feature space trained on the data. `train/loss`: the method's training loss.\n\n"
    "**Runs.** A sweep is a parent run with its trials nested under it, each named by its trial number and swept "
    "values; a pruned trial's name ends in `(pruned at step S)`: its metrics stop there. Params are the swept keys "
    "and the keys that identify a run; the whole config is the `config.yaml` artifact and the `imm.config` tag, "
    "searchable as `tags.imm.config LIKE '%\"train.lr\": \"0.001\"%'`."
)


def experiment_id(mlflow_client, name: str, artifact_root: str | None = None) -> str:
    """The experiment's id, creating it (with artifacts under the URI `artifact_root` when given, a description
    of the metrics, and the kind that opens MLflow's UI on the runs table) if needed; an existing experiment keeps
    its artifact location."""
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(f"--experiment: {name!r} is deleted in this tracking store; restore it or pick another name")
        if KIND_TAG not in exp.tags:
            mlflow_client.set_experiment_tag(exp.experiment_id, KIND_TAG, MODEL_DEVELOPMENT)
        return exp.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=artifact_root,
                                           tags={KIND_TAG: MODEL_DEVELOPMENT, "mlflow.note.content": EXPERIMENT_NOTE})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"imm": {"k": 12}} -> {"imm.k": "12"}; lists stay one value ("[1, 2]"), as MLflow params are strings."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


IDENTITY_KEYS = ("method", "data.name", "model.arch", "train.steps", "train.batch_size", "train.seed")
CONFIG_TAG = "imm.config"  # the whole config, flattened, as JSON: searchable with LIKE


def config_params(cfg: DictConfig, keys: tuple[str, ...] = ()) -> dict[str, str]:
    """The params a run shows: the keys that identify it, then `keys` (a trial's swept keys, a run's overrides);
    floats at 6 significant digits."""
    shown = {}
    for key in (*IDENTITY_KEYS, *keys):
        v = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(v):
            v = OmegaConf.to_container(v, resolve=True)
        if v is not None:
            shown[key] = f"{v:.6g}" if isinstance(v, float) else str(v)
    return shown


def config_tag(cfg: DictConfig) -> str:
    import json

    return json.dumps(flatten(OmegaConf.to_container(cfg, resolve=True)), separators=(", ", ": "))[:MAX_TAG_CHARS]


def run_tags(cfg: DictConfig, run_name: str, storage_uri: str, ray_address: str) -> dict[str, str]:
    return {
        "method": cfg.method,
        "dataset": cfg.data.name,
        "ray.address": ray_address,
        RUN_NAME_TAG: run_name,
        STORAGE_TAG: storage_uri,
        **origin_tags(),
    }


def origin_tags() -> dict[str, str]:
    """Where a run comes from, as this process knows it: the Ray job it was submitted in, and the code's commit. A
    sweep's driver hands them to its trials' tasks, which open the trials' runs and know neither."""
    from orchestrator.infra.cluster import job_id

    tags = {JOB_TAG: job_id()} if job_id() else {}
    commit = provenance.git_commit()
    if commit:
        tags["mlflow.source.git.commit"], tags["git.dirty"] = commit[0], str(commit[1]).lower()
    return tags


def find_run(mlflow_client, exp_id: str, run_name: str, storage_uri: str):
    """The live (not deleted) run made for this Ray run (same name and storage), or None."""
    return find_run_by_tags(mlflow_client, exp_id, {RUN_NAME_TAG: run_name, STORAGE_TAG: storage_uri})


def tags_filter(tags: dict[str, str]) -> str:
    """An MLflow search filter for runs carrying all these tag values."""

    def q(s: str) -> str:
        return s.replace("\\", "\\\\").replace("'", "\\'")

    return " and ".join(f"tags.`{k}` = '{q(v)}'" for k, v in tags.items())


def find_run_by_tags(mlflow_client, exp_id: str, tags: dict[str, str]):
    """The newest live run carrying all these tag values, or None."""
    runs = mlflow_client.search_runs([exp_id], filter_string=tags_filter(tags), max_results=1,
                                     order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


SEARCH_PAGE = 1000  # runs per search call: a sweep of 10,000 trials is read in 10 calls, not 10,000


def runs_by_tags(mlflow_client, exp_id: str, tags: dict[str, str]) -> list:
    """Every live run carrying all these tag values, read a page at a time."""
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs([exp_id], filter_string=tags_filter(tags), max_results=SEARCH_PAGE,
                                         page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def open_run(mlflow_client, exp_id: str, cfg: DictConfig, tags: dict[str, str], stream=None,
             param_keys: tuple[str, ...] = (), title: str | None = None, new: bool = False,
             description: tuple[str, str | None] | None = None) -> tuple[str, bool]:
    """(run id, resumed): a new RUNNING run with params, tags and config.yaml, or the existing one set RUNNING again.
    `param_keys` are shown as params besides IDENTITY_KEYS; `title` is the name the UI shows (default: the run name);
    `new`: the caller knows no such run exists (none is looked for); `description`: (text, image) for `describe`,
    written with the params.

    MLflow params cannot change once logged: on a relaunch with a changed config the first values stay and a
    warning names the keys.
    """
    from mlflow.entities import Param, RunTag

    params = config_params(cfg, param_keys)
    tags = {**tags, CONFIG_TAG: config_tag(cfg)}
    existing = None if new else find_run(mlflow_client, exp_id, tags[RUN_NAME_TAG], tags[STORAGE_TAG])
    if existing is None:
        run = mlflow_client.create_run(exp_id, run_name=title or tags[RUN_NAME_TAG], tags=tags)
        run_id, old_params = run.info.run_id, {}
    else:
        run_id, old_params = existing.info.run_id, existing.data.params
        mlflow_client.update_run(run_id, status="RUNNING")
        mlflow_client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    changed = sorted(k for k in params if k in old_params and old_params[k] != params[k])
    if changed:
        print(f"warning: MLflow keeps the first values of params {changed} of run {run_id}", file=stream or terminal.err())
    new = [Param(k, v) for k, v in params.items() if k not in old_params]
    late = [RunTag(k, v) for k, v in (note(run_id, *description) if description else {}).items()]
    for i in range(0, max(len(new), 1), MAX_PARAMS_PER_BATCH):
        batch, tags_now = new[i : i + MAX_PARAMS_PER_BATCH], late if i == 0 else []
        if batch or tags_now:
            mlflow_client.log_batch(run_id, params=batch, tags=tags_now)
    mlflow_client.log_text(run_id, OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    return run_id, existing is not None


def close_run(mlflow_client, run_id: str, status: str) -> None:
    """FINISHED, FAILED or KILLED; a relaunch sets it RUNNING again."""
    mlflow_client.set_terminated(run_id, status)


def close_attempt(mlflow_client, run_id: str, status: str) -> None:
    """Close the run as this attempt ended it, but a failure only over a run still RUNNING: an attempt cut off from
    the cluster fails once its link is back, after a later attempt finished the run, and must not mark it FAILED."""
    if status == "FINISHED" or mlflow_client.get_run(run_id).info.status == "RUNNING":
        close_run(mlflow_client, run_id, status)


TRAINING_STATE = ("optimizer", "scheduler", "loss")  # what only resuming needs (loss: TVM's EMA target): Ray's keep it


def log_checkpoint(mlflow_client, run_id: str, checkpoint, uri: str) -> None:
    """The final Ray checkpoint as the run's `checkpoint/` artifact, without the optimizer's state (half the size
    with Adam): sampling, evaluation and promotion need the weights, EMA and config only; resuming reads Ray's
    checkpoints. `checkpoint` may live on S3 (Ray copies it here first)."""
    import torch

    from imm.training.checkpoint import CHECKPOINT_FILE

    with checkpoint.as_directory() as d, tempfile.TemporaryDirectory(prefix="imm-final-") as out:
        state = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True, mmap=True)
        torch.save({k: v for k, v in state.items() if k not in TRAINING_STATE}, Path(out) / CHECKPOINT_FILE)
        del state
        mlflow_client.log_artifacts(run_id, out, "checkpoint")
    mlflow_client.set_tag(run_id, CHECKPOINT_PATH_TAG, uri)


def add_nodes(mlflow_client, run_id: str, nodes: list[str]) -> None:
    """Add the nodes of a (re)started worker group to the run's `imm.nodes` tag: after a node is lost, the tag
    names the node the workers started on and the one they finished on."""
    old = mlflow_client.get_run(run_id).data.tags.get(NODES_TAG, "")
    merged = sorted({n for n in old.split(",") if n} | set(nodes))
    mlflow_client.set_tag(run_id, NODES_TAG, ",".join(merged))


def last_logged_step(mlflow_client, run_id: str) -> int:
    return max((m.step for m in mlflow_client.get_metric_history(run_id, LOSS_KEY)), default=0)


SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # MLflow's UI reads a runs-table view from this experiment tag


def share_view(mlflow_client, exp_id: str, key: str, *, columns: list[str], search: str, order_by: str,
               ascending: bool) -> str:
    """A runs-table view of the experiment stored where MLflow's UI finds shared views (the tag
    `mlflow.sharedViewState.KEY`): its columns (`params.`k``, `metrics.`m``, `tags.`t``), filter and order.
    Returns the URL fragment that opens it."""
    import json

    state = {"selectedColumns": columns, "searchFilter": search, "orderByKey": order_by, "orderByAsc": ascending}
    mlflow_client.set_experiment_tag(exp_id, SHARED_VIEW_PREFIX + key, json.dumps(state))
    return view_link(exp_id, key)


def view_link(exp_id: str, key: str | None = None) -> str:
    """The URL fragment of the experiment's runs table (in MLflow's model-training mode), or of a shared view."""
    share = f"viewStateShareKey={key}&" if key else ""
    return f"#/experiments/{exp_id}/runs?{share}workflowType=machine_learning"


def note(run_id: str, text: str, image: str | None = None) -> dict[str, str]:
    """The tag of the run's description, markdown on its Overview tab, with the artifact `image` shown under it: the
    one place MLflow's UI shows an image in full, without opening a file."""
    return {"mlflow.note.content": text + (f"\n\n![{image}](get-artifact?path={image}&run_uuid={run_id})" if image else "")}


def describe(mlflow_client, run_id: str, text: str, image: str | None = None) -> None:
    """Set the run's description (`note`)."""
    mlflow_client.set_tag(run_id, *next(iter(note(run_id, text, image).items())))


SAMPLES_ARTIFACT = "samples.png"  # a run's sample grid: a row per evaluation, a column per sampling step count


# The worker's writer lives in orchestrator.track.rank_zero since this module was split in two; its old
# names here (`orchestrator.tracking.RankZeroLogger`, `.Superseded`) still find it. Looked up by name, not imported:
# rank_zero imports this module, and nothing here needs it.
WORKER_NAMES = ("RankZeroLogger", "Superseded")


def __getattr__(name: str):
    if name in WORKER_NAMES:
        import importlib

        return getattr(importlib.import_module("orchestrator.track.rank_zero"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
