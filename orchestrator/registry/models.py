"""Models by URI: `load_model(uri).sample(n, steps, seed)` for any of

    runs:/RUN_ID              the run's registered-style model (`model/`) if promoted, else its final `checkpoint/`
    runs:/RUN_ID/PATH         an artifact folder of the run (an MLflow model or a checkpoint)
    models:/NAME@ALIAS        a registry alias (champion, ...) or models:/NAME/VERSION
    PATH or s3://BUCKET/KEY   a checkpoint.pt, a folder holding one, or an MLflow model folder

and `save_mlflow_model`, which writes a TrainedModel as an MLflow PyTorch model (what the registry holds) with
its weights as safetensors beside the pickle. `load_model` reads the safetensors and never unpickles: unpickling
runs whatever the pickle names, so a model that holds only a pickle (promoted before safetensors) loads only with
`trust_pickle=True` (`--trust-pickle`). Checkpoints are read with torch's weights-only loader.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from imm.data.remote import local_copy
from imm.trained import WEIGHTS_FILE, TrainedModel, load_trained
from imm.training.checkpoint import CHECKPOINT_FILE

MODEL_ARTIFACT = "model"  # the MLflow model of a promoted run
CHECKPOINT_ARTIFACT = "checkpoint"  # the final training checkpoint every run logs
URI_HELP = "runs:/RUN_ID, models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint path or s3:// URI"


def load_model(uri: str, *, tracking_uri: str | None = None, device: str | torch.device | None = None,
               trust_pickle: bool = False) -> TrainedModel:
    """The model at `uri` on `device` (default: cuda when available), ready to `.sample(n, steps, seed)`.
    `trust_pickle`: allow an MLflow model that holds only a pickle (it runs code from the file)."""
    from orchestrator.track import tracking

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if uri.startswith(("runs:/", "models:/")):
        tracking_uri = tracking.default_tracking_uri(tracking_uri)
        with tempfile.TemporaryDirectory(prefix="imm-model-") as tmp:
            return _load_local(download(uri, tracking_uri, tmp), device, uri, trust_pickle)
    return _load_local(local_copy(uri), device, uri, trust_pickle)


def download(uri: str, tracking_uri: str, dst: str) -> Path:
    """A runs:/ or models:/ URI's files, downloaded under `dst`; a clear error for what does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from orchestrator.track import tracking

    client = tracking.client(tracking_uri)
    try:
        if uri.startswith("models:/"):  # resolved here: MLflow's own resolution reads the global registry URI
            source = client.get_model_version_download_uri(*model_version(uri, client))
        elif uri.rstrip("/").count("/") == 1:
            source = f"{uri.rstrip('/')}/{_run_artifact(uri[len('runs:/'):].strip('/'), client, tracking_uri)}"
        else:
            source = uri
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=dst, tracking_uri=tracking_uri))
    except MlflowException as e:
        raise ValueError(f"--model: {uri} not found in {tracking_uri}: {str(e).splitlines()[0]}") from None


def model_version(uri: str, client) -> tuple[str, str]:
    """(name, version) of models:/NAME@ALIAS or models:/NAME/VERSION (MlflowException if there is none)."""
    ref = uri[len("models:/"):].strip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = ref.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"--model: {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, version


def source_run_id(uri: str, client) -> str | None:
    """The training run behind a runs:/ or models:/ URI (None for paths, or what the registry cannot tell)."""
    from mlflow.exceptions import MlflowException

    if uri.startswith("runs:/"):
        return uri[len("runs:/"):].strip("/").split("/")[0]
    if not uri.startswith("models:/"):
        return None
    try:
        return client.get_model_version(*model_version(uri, client)).run_id
    except MlflowException:
        return None


def _run_artifact(run_id: str, client, tracking_uri: str) -> str:
    """`model` when the run was promoted (an MLflow model), else its `checkpoint`."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        raise ValueError(f"--model: no run {run_id!r} in {tracking_uri}") from None
    names = {Path(a.path).name for a in client.list_artifacts(run_id)}
    for name in (MODEL_ARTIFACT, CHECKPOINT_ARTIFACT):
        if name in names:
            return name
    raise ValueError(f"--model: run {run_id} has no {CHECKPOINT_ARTIFACT}/ artifact (did it finish?); "
                     f"its artifacts: {sorted(names)}")


def _load_local(path: Path, device: torch.device, uri: str, trust_pickle: bool = False) -> TrainedModel:
    if (path / WEIGHTS_FILE).is_file():
        return TrainedModel.load_weights(path, device)
    if (path / "MLmodel").is_file():
        if not trust_pickle:
            raise ValueError(f"--model: {uri} holds only a pickled model (promoted before models carried "
                             "safetensors weights), and unpickling runs code from the file; pass --trust-pickle if "
                             "you trust whoever wrote it, or promote its run again")
        import mlflow.pytorch

        model = mlflow.pytorch.load_model(str(path), map_location=device)
        if not isinstance(model, TrainedModel):
            raise ValueError(f"--model: {uri} is an MLflow model of {type(model).__name__}, not an imm TrainedModel")
        return model.to(device)
    if path.is_file() or (path / CHECKPOINT_FILE).is_file():
        return load_trained(path, device)
    raise FileNotFoundError(f"--model: nothing to load at {uri} (expected {CHECKPOINT_FILE}, a folder holding it, "
                            f"or an MLflow model folder; or one of {URI_HELP})")


def save_mlflow_model(gen: TrainedModel, path: str | Path, metadata: dict | None = None) -> Path:
    """`gen` as an MLflow PyTorch model at `path` (created), with the imm package inside it (`code/`), so that
    `mlflow.pytorch.load_model` needs only torch, numpy and omegaconf to load it; and its weights as safetensors
    with a JSON of its config beside it, which `load_model` reads without unpickling anything."""
    import mlflow.pytorch
    import numpy
    import omegaconf

    import imm

    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}",
                    f"omegaconf=={omegaconf.__version__}"]
    mlflow.pytorch.save_model(gen.cpu().eval(), str(path), code_paths=[str(Path(imm.__file__).parent)],
                              pip_requirements=requirements, metadata=metadata, serialization_format="pickle")
    return gen.save_weights(path)


def initial_model(uri: str, tracking_uri: str | None) -> torch.nn.Module:
    """train.init_from: the model at `uri` (its EMA's weights for a checkpoint), on the CPU, whose network the run
    starts from (imm.training.start). The one loader of trained models inside training."""
    return load_model(uri, tracking_uri=tracking_uri, device="cpu").model


def check_teacher_model(cfg, tracking_uri: str | None) -> None:
    """Before Ray starts: train.teacher names a model (one line otherwise) with a velocity, on the student's data,
    trajectory and conditioning (imm.training.teacher.check_teacher; the data's shape and sigma_d are checked in the
    loop, once the data is loaded)."""
    from imm.training.teacher import check_teacher as fits

    try:
        teacher = load_model(cfg.train.teacher, tracking_uri=tracking_uri, device="cpu")
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"train.teacher: {str(e).removeprefix('--model: ')}") from None
    fits(cfg, teacher)


def check_init_from(cfg, tracking_uri: str | None) -> None:
    """Before Ray starts: train.init_from names a model (one line otherwise) whose network can start the one this
    config builds (imm.training.start: of this run's method, or another read the same way; both configs named)."""
    from imm.methods import build_model
    from imm.training.start import check_start

    uri = cfg.train.init_from
    try:
        parent = load_model(uri, tracking_uri=tracking_uri, device="cpu")
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"train.init_from: {str(e).removeprefix('--model: ')}") from None
    p = parent.cfg
    theirs, ours = f"method={p.method}, model.arch={p.model.arch}", f"method={cfg.method}, model.arch={cfg.model.arch}"
    if p.model.arch != cfg.model.arch:
        raise ValueError(f"train.init_from: {uri} is a {theirs} model and this run trains {ours}")
    student = build_model(cfg, parent.data_shape, parent.sigma_d or 1.0, parent.num_classes)
    check_start(student, parent.model, f"train.init_from: {uri} ({theirs}; this run {ours})")
