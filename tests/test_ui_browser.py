"""A trial's MLflow run page and its sweep's parent run page, rendered by headless Chromium against `imm-orch ui`.

What a user sees without opening a file: the sample plots at each sampling step count (step-keyed images),
the loss and quality curves, the config as params; on the parent run, the sweep plots. The screenshots go to
$IMM_UI_SCREENSHOTS when it is set, to be looked at. Chromium is Debian's `chromium` (.ci/run installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from orchestrator import cli, tracking

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TINY = ["model.hidden=32", "model.depth=1", "train.steps=40", "train.batch_size=64", "train.log_every=10",
        "train.checkpoint_every=20", "eval.every=20", "eval.n_samples=300", "eval.steps=[1,2]"]


def chromium(url: str, tmp_path, *, screenshot=None) -> str:
    """The page's DOM once its scripts have run (and a screenshot of it)."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1440,4000",
            "--virtual-time-budget=60000", "--run-all-compositor-stages-before-draw"]
    if screenshot:
        subprocess.run([*args, f"--screenshot={screenshot}", url], check=True, capture_output=True, timeout=180)
    return subprocess.run([*args, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=180).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")
def test_run_pages_show_samples_curves_config_and_sweep_plots(ray_local, mlflow_ui, tmp_path):
    uri, url = mlflow_ui.uri, mlflow_ui.url
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "name": "browsed",
        "base": {"config": "toy2d", "overrides": [*TINY, f"storage.root={tmp_path / 'runs'}"]},
        "space": {"imm.group_size": {"choices": [2, 4]}},
        "objective": "energy/steps_1",
        "sampler": {"name": "grid"},
        "trials": 2,
        "max_concurrent": 2,
    }))
    assert cli.main(["sweep", str(sweep), "--tracking-uri", uri, "--experiment", "browsed"]) == 0
    client = tracking.client(uri)
    exp = client.get_experiment_by_name("browsed").experiment_id
    (parent,) = client.search_runs([exp], "tags.`imm.sweep.role` = 'parent'")
    trial = client.search_runs([exp], "tags.`imm.sweep.role` = 'trial'")[0]

    shots = os.environ.get("IMM_UI_SCREENSHOTS")
    pages = {}
    for name, run, tab in (("trial", trial, "model-metrics"), ("trial_overview", trial, ""),
                           ("parent", parent, "artifacts/plots/history_energy_steps_1.png")):
        page = f"{url}/#/experiments/{exp}/runs/{run.info.run_id}" + (f"/{tab}" if tab else "")
        png = tmp_path / f"{name}.png"
        pages[name] = chromium(page, tmp_path, screenshot=png)
        assert png.stat().st_size > 20_000  # a rendered page, not a blank one
        if shots:
            os.makedirs(shots, exist_ok=True)
            shutil.copy(png, os.path.join(shots, png.name))
            with open(os.path.join(shots, f"{name}.html"), "w") as f:
                f.write(pages[name])

    metrics = pages["trial"]
    for k in (1, 2):  # the samples at each step count: the last evaluation's shown, every evaluation's on a slider
        assert f"final/steps_{k}" in metrics and f"samples/steps_{k}" in metrics  # each image stored once
        assert re.search(rf'<img [^>]*src="[^"]*images(/|%2F)final~steps_{k}', metrics)  # served from the artifacts
    assert "train/loss" in metrics and "energy/steps_1" in metrics  # the curves
    overview = pages["trial_overview"]
    assert "imm.group_size" in overview and "model.parameterization" in overview  # the config, as params
    plots = pages["parent"]
    # the sweep's plots, stored once under plots/, open in the Artifacts tab
    assert re.search(r'<img alt="plots/history_energy_steps_1.png" src="blob:', plots), plots[-3000:]
