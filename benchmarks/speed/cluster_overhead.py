"""What a multi-node cluster costs a sweep submitted as a Ray job, against one node with the same CPUs.

Starts a real Ray cluster twice on this machine (`ray start` raylets with token authentication, as
tests/test_cluster.py does): one node with 2 CPUs, then two nodes with 1 CPU each; plus moto's S3 server and
an `mlflow server`. Submits the same toy2d sweep (random sampler, fixed seed, one 1-CPU worker per trial, two at
a time) to each with `imm-orch submit --follow`, and reports per cluster:

    submit -> first trial   seconds from running `imm-orch submit` to the driver's "trial 0 started" line
    per-trial overhead      a trial's MLflow run duration minus its training loop (`time/train_s`), averaged
    sweep wall              submit to the job's end

and the 2-node / 1-node ratio of each.

    .venv/bin/python -m benchmarks.speed.cluster_overhead [--trials 4] [--steps 300]

It uses the test suite's servers (tests/servers.py), so it runs from the repository root of a checkout.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestrator.track import tracking
from tests.servers import BIN, RayCluster, free_port, wait_for_health

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "bench"


def services(tmp: Path) -> tuple[list[subprocess.Popen], str, dict]:
    """moto's S3 server and an mlflow server; (processes, MLflow URL, the env that points at them)."""
    s3_port, ml_port = free_port(), free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3_port}", "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
           "IMM_CACHE": str(tmp / "cache")}
    moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    subprocess.run([sys.executable, "-c", f"import boto3; boto3.client('s3').create_bucket(Bucket='{BUCKET}')"],
                   env=env, check=True)
    url = f"http://127.0.0.1:{ml_port}"
    with open(tmp / "mlflow.log", "w") as log:
        mlflow = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                                   f"sqlite:///{tmp / 'mlflow.db'}", "--artifacts-destination", f"s3://{BUCKET}/mlflow",
                                   "--host", "127.0.0.1", "--port", str(ml_port), "--workers", "1"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_health(url, mlflow, tmp / "mlflow.log")
    return [moto, mlflow], url, env


def measure(cluster: RayCluster, mlflow: str, tmp: Path, label: str, trials: int, steps: int) -> dict:
    experiment = f"bench-{label}"
    cmd = [str(BIN / "imm-orch"), "submit", "sweeps/toy2d_smoke.yaml", "--cluster", cluster.dashboard, "--follow",
           "--trials", str(trials), "--max-concurrent", "2", "--tracking-uri", mlflow, "--experiment", experiment,
           f"storage.ray_storage=s3://{BUCKET}/{label}", "storage.shared=true", f"storage.root={tmp / label}",
           f"train.steps={steps}", f"train.checkpoint_every={steps}", f"eval.every={steps}", "eval.n_samples=500",
           "eval.steps=[2]"]
    t0 = time.perf_counter()
    first = None
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if first is None and re.match(r"trial 0 started", line):
            first = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    if proc.wait() != 0:
        raise SystemExit("".join(lines[-40:]))
    mlc = tracking.client(mlflow)
    exp = mlc.get_experiment_by_name(experiment)
    runs = [r for r in mlc.search_runs([exp.experiment_id]) if r.data.tags.get("imm.sweep.role") == "trial"]
    overhead = [(r.info.end_time - r.info.start_time) / 1000 - r.data.metrics["time/train_s"] for r in runs]
    nodes = {n for r in runs for n in r.data.tags["imm.nodes"].split(",")}
    return {"first": first, "overhead": statistics.mean(overhead), "wall": wall, "nodes": len(nodes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imm-cluster-bench-"))
    procs, mlflow, env = services(tmp)
    env = {k: v for k, v in env.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    results = {}
    try:
        for label, layout in (("1-node", [2]), ("2-node", [1, 1])):
            port, dash = free_port(), free_port()
            cluster = RayCluster(dashboard=f"http://127.0.0.1:{dash}", gcs=f"127.0.0.1:{port}", env=env, node_env=env,
                                 tmp=tmp / f"ray-{label}")
            cluster.tmp.mkdir()
            try:
                for i, cpus in enumerate(layout):
                    cluster.start_node(f"n{i}", cpus, head=i == 0, port=port, dash=dash)
                results[label] = measure(cluster, mlflow, tmp, label, args.trials, args.steps)
            finally:
                for name in reversed(list(cluster.nodes)):
                    cluster.stop_node(name)
    finally:
        for p in procs:
            p.terminate()
    one, two = results["1-node"], results["2-node"]
    print(f"{args.trials} trials of {args.steps} steps, 2 at a time, one 1-CPU worker each; submitted with imm-orch submit")
    print(f"{'':24s}{'1 node (2 CPU)':>16s}{'2 nodes (1+1)':>16s}{'ratio':>8s}")
    for key, name in (("first", "submit -> first trial"), ("overhead", "per-trial overhead"), ("wall", "sweep wall")):
        print(f"{name:24s}{one[key]:>15.1f}s{two[key]:>15.1f}s{two[key] / one[key]:>8.2f}")
    print(f"{'nodes the trials used':24s}{one['nodes']:>16d}{two['nodes']:>16d}")


if __name__ == "__main__":
    main()
