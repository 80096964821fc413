"""`imm-orch eval`: the run's metrics (energy, FID or FD at chosen step counts) for any model URI, logged as
an MLflow run of its own that points back at the model and the run that trained it."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from imm.config import config_from_dict
from orchestrator.registry.models import load_model, source_run_id
from orchestrator.track import tracking


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    tags: dict[str, str]
    run_id: str | None  # the MLflow run the metrics went to (None with log=False)


def evaluation_config(model_config: dict, steps: list[int], n: int | None, seed: int | None, overrides: list[str]):
    """The model's own config with the evaluation's settings (validated: a bad key or value is named)."""
    cfg = OmegaConf.merge(OmegaConf.create(model_config), OmegaConf.from_dotlist(list(overrides)))
    cfg.eval.steps = list(steps)
    if n is not None:
        cfg.eval.n_samples = n
    if seed is not None:
        cfg.eval.seed = seed
    return config_from_dict(OmegaConf.to_container(cfg, resolve=True), training=False)


def evaluate_model(uri: str, *, steps: list[int], n: int | None = None, seed: int | None = None,
                   overrides: list[str] = (), tracking_uri: str | None = None, experiment: str | None = None,
                   device=None, log: bool = True, run_id: str | None = None, trust_pickle: bool = False) -> EvalResult:
    """Evaluate the model at `uri` and log the result to a new MLflow run, or to `run_id` (a sweep's trial run,
    opened by the trial's task, whose sweep also closes it on failure)."""
    from imm.data import load_data
    from imm.metrics.evaluator import Evaluator
    from imm.sampling.pictures import save_samples

    tracking_uri = tracking.default_tracking_uri(tracking_uri)
    gen = load_model(uri, tracking_uri=tracking_uri, device=device, trust_pickle=trust_pickle)
    cfg = evaluation_config(gen.config, steps, n, seed, overrides)
    evaluator = Evaluator(cfg, load_data(cfg.data), gen.device)
    result = evaluator(gen.model)
    if not log:
        return EvalResult(result.metrics, evaluator.tags, None)

    client = tracking.client(tracking_uri)
    source = source_run_id(uri, client) if uri.startswith(("runs:/", "models:/")) else None
    tags = {"imm.eval.model_uri": uri, "dataset": cfg.data.name, "method": cfg.method,
            **evaluator.tags, **({"imm.eval.source_run_id": source} if source else {})}
    if run_id is None:
        exp_name = experiment
        if exp_name is None and source:
            exp_name = client.get_experiment(client.get_run(source).info.experiment_id).name
        exp_id = tracking.experiment_id(client, exp_name or "imm", tracking.artifact_root(tracking_uri))
        tags["imm.role"] = "eval"
        run_id = client.create_run(exp_id, run_name=f"eval-{uri.replace('/', '_').replace(':', '')[:80]}",
                                   tags=tags).info.run_id
        params = ("steps", "n_samples", "seed", "features", "inception_weights")
    else:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        params = ()  # the sweep logged the trial's config
    try:
        for key in params:
            client.log_param(run_id, f"eval.{key}", str(cfg.eval[key]))
        for name, value in result.metrics.items():
            client.log_metric(run_id, name, value)
        with tempfile.TemporaryDirectory(prefix="imm-eval-") as tmp:
            for k, x in result.samples.items():
                if (x.ndim == 4 and x.shape[1] in (1, 3)) or (x.ndim == 2 and x.shape[1] == 2):  # not raw latents
                    save_samples(x, Path(tmp) / f"steps_{k}.png", title=f"{cfg.method}, {k} step(s)")
            client.log_artifacts(run_id, tmp, "samples")
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return EvalResult(result.metrics, evaluator.tags, run_id)
