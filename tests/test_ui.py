"""`imm-orch ui`: the command it runs, and a real MLflow UI process serving a run and its artifacts."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from orchestrator import cli, tracking
from tests.faulty_s3 import free_port


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
def test_ui_serves_runs_and_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    exp = tracking.experiment_id(client, "ui", tracking.artifact_root(uri))
    run = client.create_run(exp, run_name="shown")
    client.log_text(run.info.run_id, "method: imm\n", "config.yaml")
    client.log_metric(run.info.run_id, "energy/steps_1", 0.25)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the UI did not start"
            time.sleep(0.5)
        served = tracking.client(url)
        assert served.get_run(run.info.run_id).data.metrics == {"energy/steps_1": 0.25}
        page = urllib.request.urlopen(f"{url}/get-artifact?path=config.yaml&run_uuid={run.info.run_id}").read()
        assert page == b"method: imm\n"
        assert b"<html" in urllib.request.urlopen(url).read().lower()  # the UI itself
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"MLflow UI: http://127.0.0.1:{port}" in out
