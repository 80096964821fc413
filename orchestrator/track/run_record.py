"""One run, one record: which MLflow run a run's checkpoints belong to, and the rule that a run continues only
in a tracking store that holds that run.

A run's checkpoints are found by its name (`<storage>/<name>/`), its MLflow run by its name in the current
tracking store. Rerun against another store (another SQLite file, the team's server after the embedded default),
the checkpoints resumed training at their step while a new, empty MLflow run was opened: FINISHED, without its
metrics, curves or samples. So the driver writes `RECORD_FILE` beside the checkpoints when it opens the run, and
a relaunch is refused, before Ray starts, when the current store does not hold the recorded run (one server may
have several URIs: the run's id decides, not the URI).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from imm.config import ConfigError
from orchestrator.infra.storage import RayStorage

RECORD_FILE = "mlflow_run.json"


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    tracking_uri: str  # the URI it was opened through (another URI of the same server holds it too)
    experiment: str


def _path(storage: RayStorage, name: str) -> str:
    return f"{storage.path.rstrip('/')}/{name}/{RECORD_FILE}"


def _fs(storage: RayStorage):
    import pyarrow.fs

    return storage.filesystem() or pyarrow.fs.LocalFileSystem()


def write(storage: RayStorage, name: str, record: RunRecord) -> None:
    fs, path = _fs(storage), _path(storage, name)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(asdict(record)).encode())


def read(storage: RayStorage, name: str) -> RunRecord | None:
    import pyarrow.fs

    fs, path = _fs(storage), _path(storage, name)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return RunRecord(**json.loads(f.read()))


def holds(tracking_uri: str, run_id: str) -> bool:
    """Whether the tracking store at `tracking_uri` holds the run `run_id`."""
    from mlflow.exceptions import MlflowException

    from orchestrator.track import tracking

    try:
        tracking.client(tracking_uri).get_run(run_id)
        return True
    except MlflowException:
        return False


def check_continuation(storage: RayStorage, name: str, tracking_uri: str, *, new_name: str = "--name") -> None:
    """Refuse, in one line, to continue run `name` from its checkpoints in a store without its MLflow run."""
    record = read(storage, name)
    if record is None or holds(tracking_uri, record.run_id):
        return
    raise ConfigError(f"{new_name}: the checkpoints of run {name!r} ({storage.run_uri(name)}) belong to MLflow run "
                      f"{record.run_id} at {record.tracking_uri}, which {tracking_uri} does not hold; continue it with "
                      f"--tracking-uri {record.tracking_uri}, or start a new run with {new_name} OTHER")


PARENT_ATTR = "mlflow_parent"  # the study's user attribute: {"run_id", "tracking_uri"} of the sweep's parent run


def check_sweep_continuation(study, tracking_uri: str) -> None:
    """Refuse, in one line, to resume a sweep in a tracking store that does not hold its parent run (its trials'
    runs and checkpoints would go on in an empty record)."""
    recorded = study.user_attrs.get(PARENT_ATTR) if study is not None else None
    if not recorded or holds(tracking_uri, recorded["run_id"]):
        return
    raise ConfigError(f"--tracking-uri: sweep {study.study_name!r} is recorded in MLflow run {recorded['run_id']} at "
                      f"{recorded['tracking_uri']}, which {tracking_uri} does not hold; resume it with --tracking-uri "
                      f"{recorded['tracking_uri']}, or start a new sweep under another name")
