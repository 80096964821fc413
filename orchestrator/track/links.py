"""Deep links into the MLflow UI that `imm-orch ui` prints: each experiment's runs table, the latest sweep (its
trials best first, its sample grid) and the model registry."""

from __future__ import annotations

from orchestrator.sweep.naming import ROLE_TAG, SWEEP_ID_TAG, SWEEP_TAG, view_key
from orchestrator.track import tracking


def ui_links(store: str, base: str) -> list[str]:
    """The links for the tracking store `store`, served at `base`. Best effort: an empty or unreadable store gives
    none."""
    try:
        mlc = tracking.client(store)
        exps = [e for e in mlc.search_experiments() if mlc.search_runs([e.experiment_id], max_results=1)]
        lines = [f"  runs of {e.name!r}: {base}{tracking.view_link(e.experiment_id)}" for e in exps]
        parents = mlc.search_runs([e.experiment_id for e in exps], f"tags.`{ROLE_TAG}` = 'parent'", max_results=1,
                                  order_by=["attributes.start_time DESC"]) if exps else []
        if parents:
            p = parents[0]
            key = view_key(p.data.tags[SWEEP_TAG], p.data.tags[SWEEP_ID_TAG])
            lines += [f"  latest sweep {p.info.run_name!r}, its trials best first: "
                      f"{base}{tracking.view_link(p.info.experiment_id, key)}",
                      f"  ... and its samples, a row per trial: "
                      f"{base}#/experiments/{p.info.experiment_id}/runs/{p.info.run_id}/artifacts/sweep_samples.png"]
        if mlc.search_registered_models(max_results=1):
            lines.append(f"  registered models: {base}#/models")
    except Exception:
        return []
    return lines
