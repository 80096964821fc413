"""docker/: the Dockerfile passes hadolint, and compose.yaml parses and gives every Ray node the settings the
code reads (and none it does not). No Docker engine here: the image is linted, not built."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
READ_BY_SDKS = {"AWS_SHARED_CREDENTIALS_FILE",  # boto3's and pyarrow's credential chains
                "PGPASSFILE",  # libpq, under psycopg
                "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH",  # Ray's token authentication, between the nodes
                "RAY_HEAD",  # docker/ray-node.sh
                "RAY_grpc_client_keepalive_time_ms", "RAY_grpc_client_keepalive_timeout_ms"}  # Ray's config
NOT_FOR_NODES = {
    "AWS_ACCESS_KEY_ID": "the S3 keys are a file (AWS_SHARED_CREDENTIALS_FILE), never a variable",
    "AWS_SECRET_ACCESS_KEY": "the S3 keys are a file (AWS_SHARED_CREDENTIALS_FILE), never a variable",
    "IMM_CACHE": "a per-machine cache folder; the cluster shares IMM_METRICS_CACHE instead",
    "IMM_ORCH_KILL_WORKER": "the fault drill of the tests",
    "IMM_GIT_COMMIT": "set per job by `imm-orch submit`: the submitting checkout's commit",
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


# What torch's Linux wheel needs, read off its metadata (`pip install --dry-run --no-deps --report`, PyPI's
# manylinux_2_28_x86_64 wheel): torch 2.13.0 requires cuda-toolkit==13.0.3, nvidia-cudnn-cu13, nvidia-nccl-cu13.
# CUDA 13.0 runs on NVIDIA drivers 580 and newer. A torch pin not in this table fails the test below: read the new
# wheel's requirements and add it.
WHEEL_CUDA = {"2.13.0": ("13.0", 580)}


def pins() -> dict[str, str]:
    """The image's packages: requirements.lock's pins (the Dockerfile installs the lock)."""
    text = (ROOT / "requirements.lock").read_text()
    return {m[1].lower(): m[2] for m in re.finditer(r"(?m)^([A-Za-z0-9_.-]+)==(\S+)", text)}


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^USER 1000", text, re.M) and "HEALTHCHECK" in text


def test_the_image_the_torch_wheel_and_the_stated_driver_agree():
    """The image was a CUDA 12.8 runtime while torch 2.13.0's wheel brings CUDA 13.0 itself."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    torch = pins()["torch"]
    assert torch in WHEEL_CUDA, f"torch {torch}: read its wheel's CUDA requirement and add it to WHEEL_CUDA"
    cuda, driver = WHEEL_CUDA[torch]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(rf"^TORCH := torch=={re.escape(torch)}$", makefile, re.M)  # the tests ran this torch
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert not base.startswith("nvidia/cuda"), "the wheel brings its CUDA libraries: a CUDA base image is dead weight"
    assert re.fullmatch(r"ubuntu:\d\d\.\d\d", base)  # pinned, and Python 3.12 (the apt pin) is that release's
    assert f'NVIDIA_REQUIRE_CUDA="cuda>={cuda}"' in text  # the container toolkit refuses an older driver, by name
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text  # utility: nvidia-smi and NVML (system metrics)
    readme = (ROOT / "docker" / "README.md").read_text()
    assert f"CUDA {cuda}" in readme and f"driver {driver} or newer" in readme
    assert {"psycopg", "sqlalchemy", "psutil", "nvidia-ml-py"} <= set(pins())  # the study store, the system metrics


def gpu_claims_overlap(compose: dict) -> str | None:
    """Why two Ray worker containers could be handed the same GPU, or None. A reservation by count (`count: 1`,
    `count: all`) is resolved per container from the first GPUs, so only one container may hold one (one replica),
    and reservations by `device_ids` must be disjoint. Only the project's image (the Ray nodes) counts: the GPU
    exporter's image watches every GPU of its machine and computes on none."""
    by_count, ids = [], {}
    for name, service in compose["services"].items():
        if "image" in service and "imm-orch" not in service["image"]:
            continue
        deploy = service.get("deploy", {})
        for device in deploy.get("resources", {}).get("reservations", {}).get("devices", []):
            if device.get("driver") != "nvidia":
                continue
            replicas = deploy.get("replicas", 1)
            if not isinstance(replicas, int):  # `${VAR:-1}`: any number a user sets
                return f"{name}: replicas {replicas!r} of a GPU reservation"
            if "device_ids" in device:
                for gpu in device["device_ids"]:
                    if replicas > 1 or gpu in ids:
                        return f"{name}: GPU {gpu} also held by {ids.get(gpu, name)}"
                    ids[gpu] = name
            else:
                if replicas > 1:
                    return f"{name}: {replicas} replicas each reserve count {device.get('count')}"
                by_count.append(name)
    if len(by_count) > 1 or (by_count and ids):
        return f"{by_count + sorted(set(ids.values()))} reserve GPUs by count or beside device_ids"
    return None


def test_no_two_ray_workers_can_be_handed_the_same_gpu():
    """`IMM_GPU_WORKERS` replicas each reserving `count: 1` all got GPU 0 (docker/compose#11863)."""
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert gpu_claims_overlap(compose) is None
    worker = compose["services"]["ray-worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == "all"  # and Ray is told how many the container sees
    assert worker["command"] == ["worker"] and worker["entrypoint"][-1] == "docker/ray-node.sh"
    node_script = (ROOT / "docker" / "ray-node.sh").read_text()
    assert "gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)" in node_script and '--num-gpus="$gpus"' in node_script
    # the layouts that share a GPU are caught
    old = {"services": {"ray-worker": {"deploy": {"replicas": "${IMM_GPU_WORKERS:-1}", "resources": {
        "reservations": {"devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}}}}}
    assert "replicas" in gpu_claims_overlap(old)
    old["services"]["ray-worker"]["deploy"]["replicas"] = 4
    assert "4 replicas" in gpu_claims_overlap(old)

    def by_ids(*gpus):
        return {"deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia", "device_ids": list(gpus)}]}}}}

    assert gpu_claims_overlap({"services": {"w0": by_ids("0"), "w1": by_ids("1")}}) is None
    assert "GPU 1 also held by w0" in gpu_claims_overlap({"services": {"w0": by_ids("0", "1"), "w1": by_ids("1")}})
    count_one = {"deploy": {"resources": {"reservations": {"devices": [{"driver": "nvidia", "count": 1}]}}}}
    assert "by count" in gpu_claims_overlap({"services": {"w0": count_one, "w1": count_one}})


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_compose_wires_every_setting_the_code_reads_and_no_credential():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "s3", "create-bucket", "mlflow", "ray-head", "ray-worker"} <= set(services)
    read = settings_read_by_the_code()
    assert {"IMM_RAY_STORAGE", "IMM_METRICS_CACHE", "IMM_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI"} <= read
    node = env_file(ROOT / "docker" / "node.env.example")  # every Ray node's settings (tests/test_hosts.py uses it)
    missing = read - set(node) - set(NOT_FOR_NODES)
    assert not missing, f"node.env.example does not set {missing}"
    unused = set(node) - read - READ_BY_SDKS
    assert not unused, f"node.env.example sets {unused}, which nothing reads"
    for name in ("ray-head", "ray-worker"):  # on the host's network, so other machines reach them
        s = services[name]
        assert s["network_mode"] == "host" and s["env_file"] == ["node.env"] and s["restart"] == "unless-stopped"
        assert s["entrypoint"][-1] == "docker/ray-node.sh" and int(s["shm_size"].rstrip("gb")) >= 8
        assert set(s["secrets"]) == {"ray_token", "pgpass", "aws_credentials"}
    # no credential in a variable, a command or a URL: only paths to the files of docker/make_secrets.py
    dotenv = env_file(ROOT / "docker" / ".env.example")
    for name, value in [*node.items(), *dotenv.items(),
                        *((k, str(v)) for s in services.values() for k, v in (s.get("environment") or {}).items())]:
        assert not re.search(r"PASSWORD$|SECRET|_TOKEN$|ACCESS_KEY", name), name
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), (name, value)
    for path in node.values():
        assert not path.startswith("/run/secrets/") or Path(path).name in compose["secrets"], path
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--artifacts-destination" in mlflow_cmd and "postgresql://imm@postgres:5432/mlflow" in mlflow_cmd
    assert services["mlflow"]["environment"]["PGPASSFILE"] == "/run/secrets/pgpass"
    assert services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].startswith("${MLFLOW_ALLOWED_HOSTS:?")
    assert "MLFLOW_S3_ENDPOINT_URL" in services["mlflow"]["environment"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    gpu = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    for name, service in services.items():
        # the stores are published on the cluster's private interface only
        assert all(str(p).startswith("${NODE_IP:?") for p in service.get("ports", [])), name
        assert service.get("restart") == ("no" if name == "create-bucket" else "unless-stopped"), name
    assert services["create-bucket"]["depends_on"]["s3"]["condition"] == "service_healthy"
    assert services["create-bucket"]["command"] == ["python", "docker/buckets.py", "create"]
    assert services["create-bucket"]["secrets"] == ["aws_admin"]  # the only holder of the S3 admin key
    assert "chrislusf/seaweedfs:" in services["s3"]["image"] and "latest" not in services["s3"]["image"]
    assert "-s3.config=/run/secrets/s3_identities.json" in services["s3"]["command"]
    assert services["mlflow"]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"


def test_secrets_files_hold_any_character_in_their_readers_quoting(tmp_path):
    """docker/make_secrets.py: each file, read back by its reader's own parser, gives the value it was given; the
    S3 users are an admin and a cluster user limited to the bucket; nothing is overwritten."""
    import configparser
    import os

    password, secret = "p@ss:w/rd#1%\\x\"'", 's3@cret:/#%"key'
    env = {**os.environ, "IMM_POSTGRES_PASSWORD": password, "IMM_S3_SECRET_KEY": secret}
    run = [sys.executable, str(ROOT / "docker" / "make_secrets.py"), "--dir", str(tmp_path / "s"), "--bucket", "b"]
    made = subprocess.run(run, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "s"
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o600}
    assert (folder / "postgres_password").read_text() == password
    line = (folder / "pgpass").read_text().rstrip("\n")  # libpq's format: fields split on unescaped ':'
    fields = [f.replace("\\:", ":").replace("\\\\", "\\") for f in re.split(r"(?<!\\):", line)]
    assert fields == ["*", "*", "*", "imm", password], fields
    creds = configparser.RawConfigParser()  # botocore's own reading of a credentials file
    creds.read(folder / "aws_credentials")
    assert creds["default"]["aws_secret_access_key"] == secret
    users = {u["name"]: u for u in json.loads((folder / "s3_identities.json").read_text())["identities"]}
    assert users["cluster"]["credentials"][0]["secretKey"] == secret
    assert users["cluster"]["actions"] == ["Read:b", "List:b", "Tagging:b", "Write:b"]
    assert "Admin" in users["admin"]["actions"]
    before = (folder / "ray_token").read_text()
    again = subprocess.run(run, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "nothing was written" in again.stderr and (folder / "ray_token").read_text() == before


def test_the_bucket_and_the_shipped_sweeps_inputs_are_created_and_checked(s3_env, tmp_path):
    """docker/buckets.py (compose's create-bucket) against a real S3 endpoint: the bucket is created once, the
    inputs the shipped cluster sweeps read are named while missing, and `put` uploads a folder where they read it."""
    sys.path.insert(0, str(ROOT / "docker"))
    try:
        import buckets
    finally:
        sys.path.pop(0)
    wanted = buckets.inputs("imm")
    assert wanted == ["s3://imm/datasets/cifar10",
                      "s3://imm/weights/inception.safetensors"]  # sweeps/cifar10_imm_ablation.yaml
    assert buckets.create(s3_env, "imm") == wanted
    assert buckets.create(s3_env, "imm") == wanted  # again: the bucket exists, nothing lost
    data = tmp_path / "cifar10"
    data.mkdir()
    for name in ("train_x.npy", "test_x.npy"):
        (data / name).write_bytes(b"x")
    weights = tmp_path / "inception.safetensors"
    weights.write_bytes(b"w")
    assert buckets.put(s3_env, data, wanted[0]) == 2 and buckets.put(s3_env, weights, wanted[1]) == 1
    assert buckets.create(s3_env, "imm") == []
    keys = [o["Key"] for o in s3_env.list_objects_v2(Bucket="imm")["Contents"]]
    assert sorted(keys) == ["datasets/cifar10/test_x.npy", "datasets/cifar10/train_x.npy",
                            "weights/inception.safetensors"]


def test_the_stores_have_limits_backups_and_the_nodes_keep_logs_and_export_metrics():
    """Checked statically (no Docker engine here): every store has a memory and CPU ceiling and a restart policy;
    the study and MLflow's metadata are dumped on a schedule; Ray's temp dir (logs, metrics discovery, Grafana's
    dashboards) is a volume; Prometheus reads the head's discovery file and the GPU exporters; the dashboard knows
    where Prometheus and Grafana are."""
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("postgres", "s3", "mlflow", "postgres-backup", "prometheus", "grafana", "gpu-exporter"):
        limits = services[name]["deploy"]["resources"]["limits"]
        assert {"cpus", "memory"} <= set(limits) and services[name]["restart"] == "unless-stopped", name
    backup = services["postgres-backup"]
    assert backup["entrypoint"][-1] == "/usr/local/bin/pg-backup.sh" and backup["secrets"] == ["pgpass"]
    assert backup["environment"]["PGPASSFILE"] == "/run/secrets/pgpass" and "pg-backups:/backups" in backup["volumes"]
    assert backup["image"] == services["postgres"]["image"]  # pg_dump of the server's own major version
    for name in ("ray-head", "ray-worker", "prometheus", "grafana"):
        assert any(v.startswith("ray-logs:/tmp/ray") for v in services[name]["volumes"]), name
    assert re.search(r"chown -R imm:imm .*/tmp/ray", (ROOT / "docker" / "Dockerfile").read_text())
    prometheus = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    relabel = jobs["gpu"]["relabel_configs"][0]
    assert re.sub(relabel["regex"], relabel["replacement"].replace("${1}", r"\1"), "10.0.0.7:6385") == "10.0.0.7:9400"
    assert "--metrics-export-port=6385" in (ROOT / "docker" / "ray-node.sh").read_text()
    assert services["gpu-exporter"]["environment"]["DCGM_EXPORTER_LISTEN"].endswith(":9400")
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]
    head_env = services["ray-head"]["environment"]
    assert head_env["RAY_PROMETHEUS_HOST"].endswith(":9090") and head_env["RAY_GRAFANA_HOST"].endswith(":3000")
    assert any(":9090" in arg for arg in services["prometheus"]["command"])
    grafana = services["grafana"]["environment"]
    assert grafana["GF_PATHS_PROVISIONING"].startswith("/tmp/ray/session_latest/metrics/grafana/")
    assert grafana["GF_AUTH_DISABLE_LOGIN_FORM"] == "true" and grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    for name in ("prometheus", "grafana", "gpu-exporter"):
        assert "latest" not in services[name]["image"] and ":" in services[name]["image"], name
    assert {"pg-backups", "ray-logs", "prometheus", "grafana"} <= set(compose["volumes"])


def test_the_backup_script_dumps_rotates_and_restores(postgres, tmp_path):
    """docker/pg-backup.sh against a real PostgreSQL server: each round writes a whole dump per database, the
    newest BACKUP_KEEP stay, and a dump restores the rows into an empty database."""
    import psycopg

    from tests.servers import PostgresServer

    url = postgres.database()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE trials (number int, value float)")
        conn.execute("INSERT INTO trials VALUES (0, 0.5), (1, 0.25)")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:imm:{postgres.password}\n")
    pgpass.chmod(0o600)
    env = {"PATH": f"{PostgresServer.binaries()}:/usr/bin:/bin", "PGHOST": "127.0.0.1", "PGPORT": str(postgres.port),
           "PGUSER": "imm", "PGPASSFILE": str(pgpass), "BACKUP_DIR": str(tmp_path / "dumps"), "BACKUP_KEEP": "2",
           "BACKUP_DATABASES": name}
    for _ in range(3):
        done = subprocess.run(["sh", str(ROOT / "docker" / "pg-backup.sh"), "--once"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    dumps = sorted((tmp_path / "dumps").iterdir())
    assert len(dumps) == 2 and all(d.name.startswith(f"{name}-") and d.suffix == ".dump" for d in dumps)
    target = postgres.database()
    restored = subprocess.run([str(PostgresServer.binaries() / "pg_restore"), "--no-owner",
                               f"--dbname={target.rsplit('/', 1)[1]}", str(dumps[-1])], env=env, capture_output=True,
                              text=True, timeout=60)
    assert restored.returncode == 0, restored.stderr
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT number, value FROM trials ORDER BY number").fetchall() == [(0, 0.5), (1, 0.25)]
