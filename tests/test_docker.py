"""docker/: the Dockerfile passes hadolint, and compose.yaml parses and gives every Ray node the settings the
code reads (and none it does not). No Docker engine here: the image is linted, not built."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
READ_BY_SDKS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",  # boto3's and pyarrow's credential chains
                "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}  # Ray's token authentication, between the nodes
NOT_FOR_NODES = {
    "IMM_CACHE": "a per-machine cache folder; the cluster shares IMM_METRICS_CACHE instead",
    "IMM_ORCH_KILL_WORKER": "the fault drill of the tests",
    "IMM_SWEEP_LEASE_S": "how long a dead sweep driver's lease lives; the default (60 s) suits a cluster",
    "IMM_MLFLOW_ARTIFACTS": "MLflow's direct mode; this cluster proxies artifacts through the MLflow server",
    "AWS_DEFAULT_REGION": "an alias of AWS_REGION",
    "AWS_ENDPOINT_URL": "an alternative to AWS_ENDPOINT_URL_S3",
    "MLFLOW_S3_ENDPOINT_URL": "an alternative to AWS_ENDPOINT_URL_S3 (the MLflow server's own setting)",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "a default imm-orch sets for its own process (no download bars)",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "a default imm-orch sets for its own process and its trial tasks",
}


def settings_read_by_the_code() -> set[str]:
    names = set()
    for path in [*ROOT.glob("imm/**/*.py"), *ROOT.glob("orchestrator/**/*.py")]:
        names |= set(re.findall(r"(?:\"|oc\.env:)((?:IMM|AWS|MLFLOW)_[A-Z0-9_]+)", path.read_text()))
    return names


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-\S+-runtime-", text, re.M)  # a pinned CUDA runtime base
    assert re.search(r"^USER 1000", text, re.M) and "HEALTHCHECK" in text
    lines = (ROOT / "docker" / "requirements.txt").read_text().splitlines()
    pins = [line for line in lines if line.strip() and not line.startswith("#")]
    assert len(pins) >= 10 and all(re.fullmatch(r"[\w\[\],.-]+==[\w.]+", p) for p in pins), pins


def test_compose_wires_every_setting_the_code_reads():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "create-bucket", "mlflow", "ray-head", "ray-worker"} <= set(services)
    read = settings_read_by_the_code()
    assert {"IMM_RAY_STORAGE", "IMM_METRICS_CACHE", "IMM_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI"} <= read
    for name in ("ray-head", "ray-worker"):
        env = services[name]["environment"]
        missing = read - set(env) - set(NOT_FOR_NODES)
        assert not missing, f"{name} does not set {missing}"
        unused = set(env) - read - READ_BY_SDKS
        assert not unused, f"{name} sets {unused}, which nothing reads"
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${")  # secrets come from docker/.env, never the file
        assert env["RAY_AUTH_TOKEN"].startswith("${")
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--artifacts-destination" in mlflow_cmd and "postgresql://" in mlflow_cmd
    assert "MLFLOW_S3_ENDPOINT_URL" in services["mlflow"]["environment"]
    gpu = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    for service in services.values():
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", []))  # no UI open to the network
    assert services["create-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
