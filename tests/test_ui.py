"""`imm-orch ui`: the command it runs, and a real MLflow UI process serving a run and its artifacts."""

from __future__ import annotations

import urllib.request

import pytest

from orchestrator import cli
from orchestrator.commands.ui import ui_command
from orchestrator.track import tracking


def test_ui_binds_to_localhost_and_serves_the_artifacts_beside_the_database(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    tracking.client(f"sqlite:///{db}").search_experiments()
    cmd = ui_command(cli.parse_args(["ui", "--tracking-uri", f"sqlite:///{db}", "--port", "5055"]))
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


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGHUP", "SIGTERM"])
def test_the_server_and_its_workers_end_with_the_command(tmp_path, signum):
    """`imm-orch ui` ended by SIGHUP (its terminal closing) or SIGTERM left `mlflow server` and its workers on the
    port; now the whole process group goes with it."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    from tests.servers import free_port, wait_for_health

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.client(uri).search_experiments()
    port, log = free_port(), tmp_path / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "ui", "--port", str(port), "--tracking-uri",
                                 uri], stdout=out, stderr=subprocess.STDOUT)
    wait_for_health(f"http://127.0.0.1:{port}", proc, log)
    server = [pid for pid, stat in _procs().items() if stat[1] == proc.pid]  # the mlflow server: imm-orch's child
    assert len(server) == 1
    group = [pid for pid, stat in _procs().items() if stat[2] == server[0]]
    assert len(group) >= 2, group  # the server and the workers it started, in its own process group
    proc.send_signal(getattr(signal, signum))
    assert proc.wait(timeout=30) == 128 + getattr(signal, signum)
    deadline = time.monotonic() + 15
    while (left := [pid for pid, stat in _procs().items() if stat[2] == server[0]]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"still running: {left}"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def _procs() -> dict[int, tuple[str, int, int]]:
    """Live processes: pid -> (state, parent pid, process group), zombies left out."""
    import os

    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                out[int(name)] = (fields[0], int(fields[1]), int(fields[2]))
    return out
