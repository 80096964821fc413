"""A trial's MLflow run page and its sweep's parent run page, rendered by headless Chromium against `imm-orch ui`.

What a user sees: a sweep's comparison table, its grid of samples (a row per trial) and a trial's (a row per
evaluation), the shown params. The screenshots go to
$IMM_UI_SCREENSHOTS when it is set, to be looked at. Chromium is Debian's `chromium` (.ci/run installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml

from orchestrator import cli
from orchestrator.track import tracking
from orchestrator.track.links import ui_links

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TINY = ["model.hidden=32", "model.depth=1", "train.steps=40", "train.batch_size=64", "train.log_every=10",
        "train.checkpoint_every=20", "eval.every=20", "eval.n_samples=300", "eval.steps=[1,2]"]


def chromium(url: str, tmp_path, *, screenshot=None) -> str:
    """The page's DOM once its scripts have run (and a screenshot of it)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1440,1000",
            "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw"]
    if screenshot:
        subprocess.run([*args, f"--screenshot={screenshot}", url], check=True, capture_output=True, timeout=180)
    return subprocess.run([*args, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=180).stdout


def grid_share(png) -> float:
    """The share of a screenshot's pixels in the colour of a sample grid's label column: the grid in the viewport."""
    from PIL import Image

    from orchestrator.track.sample_grids import LABEL_BG

    px = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(int)
    return float((np.abs(px - LABEL_BG).max(1) <= 2).mean())


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")
def test_run_pages_show_sample_grids_the_comparison_table_and_pruned_trials(ray_local, mlflow_ui, tmp_path):
    """The pages a researcher opens, found from the links `imm-orch ui` prints: the sweep's trials best
    first with the objective, swept keys and states as columns (a pruned trial named so); the parent's grid of
    samples (a row per trial) and a trial's (a row per evaluation), in the viewport, not only in the DOM."""
    uri, url = mlflow_ui.uri, mlflow_ui.url
    base = [o for o in TINY if not o.startswith(("train.steps", "eval.every"))] + ["eval.every=10"]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({  # a good trial, then one that barely learns: the median pruner stops it
        "name": "browsed",
        "base": {"config": "toy2d", "overrides": [*base, f"storage.root={tmp_path / 'runs'}"]},
        "space": {"train.lr": {"choices": [1e-2, 1e-9]}, "train.steps": {"choices": [40, 400]}},
        "enqueue": [{"train.lr": 1e-2, "train.steps": 40}, {"train.lr": 1e-9, "train.steps": 400}],
        "pruner": {"name": "median", "startup_trials": 1, "min_resource": 10},
        "objective": "energy/steps_1",
        "trials": 2,
        "max_concurrent": 1,
    }))
    assert cli.main(["sweep", str(sweep), "--tracking-uri", uri, "--experiment", "browsed"]) == 0
    client = tracking.client(uri)
    exp = client.get_experiment_by_name("browsed").experiment_id
    (parent,) = client.search_runs([exp], "tags.`imm.sweep.role` = 'parent'")
    trial = client.search_runs([exp], "tags.`imm.sweep.role` = 'trial' and tags.`imm.trial.state` = 'complete'")[0]
    links = dict(re.findall(r"^  (.+?): (http\S+)$", "\n".join(ui_links(uri, f"{url}/")), re.M))
    assert set(links) == {"runs of 'browsed'", "latest sweep 'browsed', its trials best first",
                          "... and its samples, a row per trial"}, links

    shots = os.environ.get("IMM_UI_SCREENSHOTS")
    pages, pngs = {}, {}
    for name, page in (("table", links["latest sweep 'browsed', its trials best first"]),
                       ("parent_grid", links["... and its samples, a row per trial"]),
                       ("trial_grid", f"{url}/#/experiments/{exp}/runs/{trial.info.run_id}/artifacts/samples.png"),
                       ("trial_overview", f"{url}/#/experiments/{exp}/runs/{trial.info.run_id}")):
        pngs[name] = tmp_path / f"{name}.png"
        pages[name] = chromium(page, tmp_path, screenshot=pngs[name])
        assert pngs[name].stat().st_size > 20_000  # a rendered page, not a blank one
        if shots:
            os.makedirs(shots, exist_ok=True)
            shutil.copy(pngs[name], os.path.join(shots, pngs[name].name))
            with open(os.path.join(shots, f"{name}.html"), "w") as f:
                f.write(pages[name])

    table = pages["table"]  # the comparison view: the trials, the objective, the swept keys, the states
    for text in ("energy/steps_1", "train.lr", "imm.trial.state", "t0 lr=0.01 steps=40", "complete", "pruned"):
        assert text in table, text
    assert re.search(r"t1 lr=1e-09 steps=400 \(pruned at step \d+\)", table)
    assert "Model training" in table and "t0 lr=" in table and "GenAI" in table
    for name in ("parent_grid", "trial_grid"):  # the grids are drawn in the 1440 x 1000 viewport
        assert grid_share(pngs[name]) > 0.01, name
    assert grid_share(pngs["table"]) == 0  # (the detector does not fire on MLflow's own pages)
    overview = pages["trial_overview"]
    assert "train.lr" in overview and "imm.config" in overview  # the shown params; the whole config as a tag
    assert "Its samples at each evaluation" in overview
