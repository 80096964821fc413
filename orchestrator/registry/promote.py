"""Promotion: the best finished run -> a registered model version -> an alias (`champion` by default).

The run's final checkpoint becomes an MLflow PyTorch model (`model/` in the run, EMA weights, the config and
the imm code inside), registered as a new version of the model with lineage tags: the run, its sweep and
trial, the dataset, the git commit and every quality metric at every step count. Promoting again moves the
alias; old versions stay. A run already registered under the name gets its version reused, not duplicated.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imm.metrics.evaluator import QUALITY_PREFIXES
from orchestrator.registry.models import CHECKPOINT_ARTIFACT, MODEL_ARTIFACT, save_mlflow_model
from orchestrator.sweep.naming import ROLE_TAG, STATE_TAG, SWEEP_ID_TAG, SWEEP_TAG, TRIAL_TAG
from orchestrator.track import provenance, tracking

MODES = ("min", "max")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,255}$")


@dataclass(frozen=True)
class Promotion:
    model_name: str
    version: str
    alias: str
    run_id: str
    metric: str
    value: float
    previous_version: str | None  # the version the alias pointed at before, if any
    new_version: bool  # False: the run was registered already and its version was reused

    @property
    def uri(self) -> str:
        return f"models:/{self.model_name}@{self.alias}"


def candidate_runs(client, *, run_id: str | None, sweep: str | None) -> list:
    """The run given, or every trial and champion run of the sweep (in any experiment of the store)."""
    from mlflow.exceptions import MlflowException

    if run_id:
        try:
            return [client.get_run(run_id)]
        except MlflowException:
            raise ValueError(f"--run-id: no run {run_id!r} in this tracking store") from None
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    flt = f"tags.`{SWEEP_TAG}` = '{sweep}'"  # its trials and its champions (`train --best-of`), not its parent
    runs = client.search_runs(exp_ids, filter_string=flt, max_results=5000) if exp_ids else []
    runs = [r for r in runs if r.data.tags.get(ROLE_TAG) in ("trial", "champion")]
    if not runs:
        raise ValueError(f"--sweep: no trial runs of a sweep named {sweep!r} in this tracking store")
    # a pruned trial's run is FINISHED, but its metrics stop where the pruner stopped it
    return [r for r in runs if r.data.tags.get(STATE_TAG) != "pruned"] or runs


def best_run(runs: list, metric: str, mode: str):
    """The FINISHED run with the best final `metric`; a clear error when no run qualifies, saying why."""
    if mode not in MODES:
        raise ValueError(f"--mode: {mode!r} is not one of {list(MODES)}")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    eligible = [r for r in finished if metric in r.data.metrics]
    if not eligible:
        if len(runs) == 1:
            r = runs[0]
            if r.info.status != "FINISHED":
                raise ValueError(f"run {r.info.run_id} is {r.info.status}, not FINISHED: only finished runs are promoted")
            raise ValueError(f"--metric: run {r.info.run_id} has no metric {metric!r}; "
                             f"it has {_quality(r.data.metrics)}")
        states = ", ".join(f"{n} {s}" for s, n in sorted(_count(r.info.status for r in runs).items()))
        known = sorted({m for r in finished for m in _quality(r.data.metrics)})
        raise ValueError(f"--metric: no FINISHED run reports {metric!r} (runs: {states}); finished runs report {known}")
    pick = min if mode == "min" else max
    return pick(sorted(eligible, key=lambda r: r.info.start_time), key=lambda r: r.data.metrics[metric])


def _quality(metrics: dict) -> list[str]:
    return sorted(m for m in metrics if m.startswith(QUALITY_PREFIXES) or m == "train/loss")


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def default_model_name(run, sweep: str | None) -> str:
    raw = sweep or run.data.tags.get(tracking.RUN_NAME_TAG) or f"imm-{run.info.run_id[:8]}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-") or "imm"


def lineage_tags(run, metric: str, mode: str) -> dict[str, str]:
    t = run.data.tags
    tags = {
        "imm.run_id": run.info.run_id,
        "imm.run_name": t.get(tracking.RUN_NAME_TAG, ""),
        "imm.experiment_id": run.info.experiment_id,
        "imm.sweep": t.get(SWEEP_TAG, ""),
        "imm.sweep.id": t.get(SWEEP_ID_TAG, ""),
        "imm.trial.number": t.get(TRIAL_TAG, ""),
        "dataset": t.get("dataset", ""),
        "method": t.get("method", ""),
        "git.commit": t.get("mlflow.source.git.commit", ""),
        "git.dirty": t.get("git.dirty", ""),
        provenance.DATA_DIGEST_TAG: t.get(provenance.DATA_DIGEST_TAG, ""),
        provenance.PARENT_MODEL_TAG: t.get(provenance.PARENT_MODEL_TAG, ""),
        provenance.PARENT_RUN_TAG: t.get(provenance.PARENT_RUN_TAG, ""),
        provenance.TEACHER_MODEL_TAG: t.get(provenance.TEACHER_MODEL_TAG, ""),
        provenance.TEACHER_RUN_TAG: t.get(provenance.TEACHER_RUN_TAG, ""),
        "imm.checkpoint_path": t.get("imm.checkpoint_path", ""),
        "imm.promoted.metric": metric,
        "imm.promoted.mode": mode,
        "imm.promoted.value": repr(run.data.metrics[metric]),
    }
    tags.update({f"metrics.{m}": repr(run.data.metrics[m]) for m in _quality(run.data.metrics)})
    tags.update({k: v for k, v in t.items() if k.startswith(provenance.VERSION_TAG)})  # what it was trained with
    return {k: v for k, v in tags.items() if v != ""}


def ensure_model_artifact(client, run) -> str:
    """The run's `model/` artifact (an MLflow model), made from its `checkpoint/` if not there yet; its URI."""
    run_id = run.info.run_id
    names = {Path(a.path).name for a in client.list_artifacts(run_id)}
    if MODEL_ARTIFACT not in names:
        if CHECKPOINT_ARTIFACT not in names:
            raise ValueError(f"run {run_id} has no {CHECKPOINT_ARTIFACT}/ artifact to promote (artifacts: {sorted(names)})")
        from imm.trained import load_trained

        with tempfile.TemporaryDirectory(prefix="imm-promote-") as tmp:
            ckpt = client.download_artifacts(run_id, CHECKPOINT_ARTIFACT, tmp)
            gen = load_trained(ckpt)
            meta = {"run_id": run_id, "data_shape": list(gen.data_shape), "method": gen.config["method"]}
            save_mlflow_model(gen, Path(tmp) / MODEL_ARTIFACT, metadata=meta)
            client.log_artifacts(run_id, str(Path(tmp) / MODEL_ARTIFACT), MODEL_ARTIFACT)
    return f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT}"


def promote(tracking_uri: str, *, metric: str, run_id: str | None = None, sweep: str | None = None,
            mode: str = "min", alias: str = "champion", model_name: str | None = None) -> Promotion:
    from mlflow.exceptions import MlflowException

    if bool(run_id) == bool(sweep):
        raise ValueError("give exactly one of --run-id and --sweep")
    if model_name is not None and not NAME_RE.match(model_name):
        raise ValueError(f"--model-name: {model_name!r} must be letters, digits, '.', '_', '-'")
    if not NAME_RE.match(alias) or re.fullmatch(r"[vV]\d+|latest", alias):
        raise ValueError(f"--alias: {alias!r} must be letters, digits, '.', '_', '-' (and not 'latest' or vN)")
    client = tracking.client(tracking_uri)
    run = best_run(candidate_runs(client, run_id=run_id, sweep=sweep), metric, mode)
    name = model_name or default_model_name(run, sweep)
    source = ensure_model_artifact(client, run)

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"imm.promoted.metric": metric},
                                       description=f"IMM models promoted by {metric} ({mode}) with imm-orch promote")
    try:
        previous = client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        previous = None
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
    value = run.data.metrics[metric]
    if existing:
        version = max(existing, key=lambda v: int(v.version)).version
        for k, v in lineage_tags(run, metric, mode).items():
            if k.startswith("imm.promoted."):
                client.set_model_version_tag(name, version, k, v)
    else:
        trial = run.data.tags.get(TRIAL_TAG)
        origin = f"sweep {run.data.tags[SWEEP_TAG]} trial {trial}" if trial else f"run {run.info.run_id}"
        version = client.create_model_version(
            name, source, run_id=run.info.run_id, tags=lineage_tags(run, metric, mode),
            description=f"{metric} = {value:.6g} ({origin})",
        ).version
    client.set_registered_model_alias(name, alias, version)
    client.set_tag(run.info.run_id, "imm.promoted", f"{name}/{version}@{alias}")
    return Promotion(name, str(version), alias, run.info.run_id, metric, value,
                     None if previous is None else str(previous), not existing)
