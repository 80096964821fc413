"""`imm-orch ui`: the command it runs, and a real MLflow UI process serving a run and its artifacts."""

from __future__ import annotations

import urllib.request

import pytest

from orchestrator import cli, tracking


def test_ui_binds_to_localhost_and_serves_the_artifacts_beside_the_database(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    tracking.client(f"sqlite:///{db}").search_experiments()
    cmd = cli.ui_command(cli.parse_args(["ui", "--tracking-uri", f"sqlite:///{db}", "--port", "5055"]))
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5055"
    assert cmd[cmd.index("--artifacts-destination") + 1] == (tmp_path / "artifacts").as_uri()
    assert cli.main(["ui", "--tracking-uri", "http://mlflow:5000"]) == 2
    assert "is a tracking server already; open it in a browser" in capsys.readouterr().err
    assert cli.main(["ui", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err


@pytest.mark.slow
def test_ui_serves_runs_and_artifacts(mlflow_ui):
    client = tracking.client(mlflow_ui.uri)
    exp = tracking.experiment_id(client, "ui", tracking.artifact_root(mlflow_ui.uri))
    run = client.create_run(exp, run_name="shown")
    client.log_text(run.info.run_id, "method: imm\n", "config.yaml")
    client.log_metric(run.info.run_id, "energy/steps_1", 0.25)
    url = mlflow_ui.url
    served = tracking.client(url)
    assert served.get_run(run.info.run_id).data.metrics == {"energy/steps_1": 0.25}
    page = urllib.request.urlopen(f"{url}/get-artifact?path=config.yaml&run_uuid={run.info.run_id}").read()
    assert page == b"method: imm\n"
    assert b"<html" in urllib.request.urlopen(url).read().lower()  # the UI itself
    assert f"MLflow UI: http://127.0.0.1:{mlflow_ui.port}" in mlflow_ui.log.read_text()
