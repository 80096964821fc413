"""Cluster mode on real processes: a multi-node Ray cluster (separate `ray start` raylets on 127.0.0.1, token
authentication on, the dashboard serving job submission), moto's S3 server for shared storage, a real
`mlflow server`, and the sweeps' studies in a PostgreSQL server (tests/servers.py). Sweeps and runs go in as Ray
jobs, through `imm-orch submit` and through docs/cluster.md's `ray job submit` line; a worker node and a sweep's driver are
killed mid-run.

The processes that talk to the cluster (`imm-orch submit`, `ray job submit`) run as subprocesses: this test
process may hold the session's own local Ray, and one process connects to one Ray.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import ray
import torch

from orchestrator.track import provenance, tracking
from tests.servers import BIN, RayCluster, free_port
from tests.servers import MLFLOW_BUCKET as BUCKET

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.steps=40", "train.log_every=10", "train.checkpoint_every=20", "eval.every=20", "eval.n_samples=200",
        "eval.steps=[1,2]", "model.hidden=32", "model.depth=1", "train.batch_size=64"]


@pytest.fixture(scope="module")
def cluster(s3_server, mlflow_server, postgres, tmp_path_factory):
    """A two-node cluster: `head` and `node_b`, one CPU each, so two one-worker trials land on both."""
    tmp = tmp_path_factory.mktemp("cluster")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
    # the study's password: libpq's PGPASSWORD on the nodes and the client, never in a URL the job carries
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               PGPASSWORD=postgres.password)
    # docs/cluster.md's `ray job submit` takes these from the nodes' environment
    stores = dict(MLFLOW_TRACKING_URI=mlflow_server, IMM_RAY_STORAGE=f"s3://{BUCKET}/ray",
                  IMM_OPTUNA_STORAGE=postgres.database())
    port, dash = free_port(), free_port()
    c = RayCluster(dashboard=f"http://127.0.0.1:{dash}", gcs=f"127.0.0.1:{port}", env=env, node_env={**env, **stores},
                   tmp=tmp)
    try:
        c.start_node("head", 1, head=True, port=port, dash=dash)
        c.start_node("node_b", 1)
        client, deadline = c.client(), time.monotonic() + 120
        while True:  # until the head's job agent takes jobs (right after start: "No available agent to submit job")
            try:
                wait_job(client, client.submit_job(entrypoint="true"), timeout=120)
                break
            except RuntimeError:
                assert time.monotonic() < deadline, "the cluster's job agent never came up"
                time.sleep(2)
        yield c
    finally:
        c.stop()


def submit_args(cluster, target: str, *extra: str) -> list[str]:
    """`imm-orch submit` of a tiny run or sweep (a sweep's study: IMM_OPTUNA_STORAGE in `cluster.run`'s env)."""
    return [str(BIN / "imm-orch"), "submit", target, "--cluster", cluster.dashboard, *TINY, *extra]


def runs_of(mlflow_server: str, experiment: str):
    mlc = tracking.client(mlflow_server)
    exp = mlc.get_experiment_by_name(experiment)
    return mlc, (mlc.search_runs([exp.experiment_id]) if exp else [])


def s3_keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def wait_job(client, job_id: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while not client.get_job_status(job_id).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-3000:]
        time.sleep(1)
    return client.get_job_info(job_id)


def kill_node_c_after_a_checkpoint(cluster, client, job_id: str, mlflow_server: str, experiment: str, ours) -> str:
    """SIGKILL node_c's raylet as soon as a whole checkpoint of the run `ours(run)` picks reached S3; its name.
    For a trial that trains in its task (`orchestrator.run.checkpoints` keeps the newest ones, each complete once it is
    in S3); a Ray Train run's checkpoint counts only once the controller registered it, after the upload."""
    deadline, name = time.monotonic() + 300, None
    while True:
        assert time.monotonic() < deadline and not client.get_job_status(job_id).is_terminal(), \
            client.get_job_logs(job_id)[-3000:]
        if name is None:
            name = next((r.data.tags[tracking.RUN_NAME_TAG] for r in runs_of(mlflow_server, experiment)[1] if ours(r)),
                        None)
        if name is not None and any(re.search(r"/checkpoint_\d+/checkpoint\.pt$", k) for k in s3_keys(f"ray/{name}/")):
            cluster.kill_raylet("node_c")
            return name
        time.sleep(0.2)


def test_mistakes_are_one_line_before_anything_is_submitted(cluster, mlflow_server, tmp_path):
    client = cluster.client()
    jobs_before = len(client.list_jobs())
    cases = {
        # MLflow and the study would be files in the job's temporary working dir
        "--tracking-uri: sqlite:///": submit_args(cluster, "sweeps/toy2d_smoke.yaml", "--tracking-uri",
                                                  f"sqlite:///{tmp_path}/mlflow.db", "storage.ray_storage=s3://b/r"),
        "storage: the study 'journal:./imm-runs/optuna.journal' is relative": submit_args(
            cluster, "sweeps/toy2d_smoke.yaml", "--tracking-uri", mlflow_server, "storage.ray_storage=s3://b/r"),
        # local checkpoints on a cluster whose nodes share no disk
        "storage.ray_storage: '/srv/ckpt' is on one node's disk": submit_args(
            cluster, "toy2d", "--tracking-uri", mlflow_server, "storage.ray_storage=/srv/ckpt"),
        "--cluster: no Ray dashboard answers at http://127.0.0.1:9": [
            str(BIN / "imm-orch"), "submit", "toy2d", "--cluster", "http://127.0.0.1:9", "--tracking-uri", mlflow_server,
            f"storage.ray_storage=s3://{BUCKET}/ray"],
    }
    for expected, args in cases.items():
        t0 = time.perf_counter()
        proc = cluster.run(args, timeout=60)
        took = time.perf_counter() - t0
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"imm-orch: error: {expected}"), proc.stderr
        assert proc.stderr.count("\n") == 1 and not proc.stdout, (proc.stdout, proc.stderr)
        assert took < 10, f"{expected}: {took:.1f}s"
    assert len(client.list_jobs()) == jobs_before  # nothing was submitted

    # Without a token the cluster refuses, and says what to set.
    no_token = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    proc = subprocess.run(submit_args(cluster, "toy2d", "--tracking-uri", mlflow_server, f"storage.ray_storage=s3://{BUCKET}/r"),
                          cwd=ROOT, env=no_token, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "RAY_AUTH_TOKEN" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr

    # From outside the cluster, `--address` to a multi-node cluster applies the same rules once connected, before
    # any MLflow run exists.
    mlc, before = runs_of(mlflow_server, "imm")
    proc = cluster.run([str(BIN / "imm-orch"), "train", "toy2d", "--address", cluster.gcs, "--tracking-uri",
                        mlflow_server, *TINY], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "on a 2-node cluster" in proc.stderr and "storage.ray_storage" in proc.stderr, proc.stderr
    assert len(runs_of(mlflow_server, "imm")[1]) == len(before)


def test_a_sweep_submitted_as_a_job_runs_on_both_nodes_and_is_read_from_outside(cluster, mlflow_server, postgres):
    """The study in PostgreSQL (as docs/cluster.md says), read from outside with `imm-orch status --storage`."""
    study, t0 = postgres.database(password=False), time.perf_counter()
    proc = cluster.run(submit_args(cluster, "sweeps/toy2d_smoke.yaml", "--trials", "2", "--follow", "--tracking-uri",
                                   mlflow_server, "--experiment", "cluster-sweep", "storage.ray_storage=s3://"
                                   f"{BUCKET}/ray", "trainer.system_metrics_s=0.5"), env={"IMM_OPTUNA_STORAGE": study})
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = proc.stdout
    job_id = re.search(r"as Ray job (imm-toy2d_smoke-\S+) to", out).group(1)
    for line in (f"ray job logs --address {cluster.dashboard} --follow {job_id}", f"ray job stop --address "
                 f"{cluster.dashboard} {job_id}", "trial 0 started", "trial 1 complete", f"job {job_id}: SUCCEEDED"):
        assert line in out
    first_trial = out.index("trial 0 started")
    print(f"\nsubmit -> job SUCCEEDED: {wall:.1f}s")
    assert cluster.client().get_job_status(job_id) == "SUCCEEDED"

    mlc, runs = runs_of(mlflow_server, "cluster-sweep")
    assert sorted(r.data.tags.get("imm.sweep.role") for r in runs) == ["parent", "trial", "trial"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["imm.ray_job_id"] for r in runs} == {job_id}
    trials = [r for r in runs if r.data.tags.get("imm.sweep.role") == "trial"]
    nodes = {n for r in trials for n in r.data.tags["imm.nodes"].split(",")}
    assert len(nodes) == 2, nodes  # one CPU per node: the two trials ran side by side, one on each node
    commit, dirty = provenance.git_commit()  # this checkout's, carried into the job (whose dir has no .git)
    for r in trials:
        # what each node did (MLflow's system metrics, by node), and with what
        (node,) = r.data.tags["imm.nodes"].split(",")
        assert f"system/{node.replace('/', '-')}/cpu_utilization_percentage" in r.data.metrics, sorted(r.data.metrics)
        assert r.data.tags["imm.version.torch"] == torch.__version__ and r.data.tags["imm.version.ray"] == ray.__version__
        assert r.data.tags["mlflow.source.git.commit"] == commit and r.data.tags["git.dirty"] == str(dirty).lower()
        name = r.data.tags[tracking.RUN_NAME_TAG]
        assert not s3_keys(f"ray/{name}/")  # a finished trial's Ray checkpoints are deleted on S3 too
        assert any(k.endswith(f"{r.info.run_id}/artifacts/checkpoint/checkpoint.pt") for k in s3_keys("mlflow/"))
    assert first_trial > 0

    # From the laptop: the same study and the same MLflow server.
    status = subprocess.run([str(BIN / "imm-orch"), "status", "toy2d_smoke", "--storage", study], capture_output=True,
                            text=True, env={**os.environ, "PGPASSWORD": postgres.password})
    assert status.returncode == 0 and "2 trial(s): 2 complete" in status.stdout, status.stdout + status.stderr
    assert "sweep 'toy2d_smoke' (postgresql://imm@" in status.stdout and postgres.password not in status.stdout
    promote = subprocess.run([str(BIN / "imm-orch"), "promote", "--sweep", "toy2d_smoke", "--metric", "energy/steps_2",
                              "--model-name", "cluster-sweep", "--tracking-uri", mlflow_server],
                             capture_output=True, text=True, timeout=300)
    assert promote.returncode == 0 and "models:/cluster-sweep@champion" in promote.stdout, promote.stderr


def docs_ray_job_submit() -> str:
    """The `ray job submit` command of docs/cluster.md, as one line."""
    section = (ROOT / "docs" / "cluster.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", section, re.S) if "ray job submit" in b)
    command = block[block.index("ray job submit"):].split("\n\n")[0]
    return re.sub(r"\\\n\s*", "", command).split("#", 1)[0].strip()


def test_the_docs_ray_job_submit_line_runs_as_written(cluster):
    """The job takes MLflow, checkpoints and the study (PostgreSQL) from the cluster's environment (the fixture's,
    as docker/compose.yaml sets them); the overrides shorten the sweep to one tiny trial."""
    line = docs_ray_job_submit()
    assert line.startswith("ray job submit --address http://HEAD:8265 --working-dir . -- python -m orchestrator.cli "
                           "sweep sweeps/toy2d_smoke.yaml --address auto"), line
    args = shlex.split(line.replace("http://HEAD:8265", cluster.dashboard))
    args[0] = str(BIN / "ray")
    proc = cluster.run([*args, "--trials", "1", *TINY])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "sweep done" in proc.stdout and "1 complete" in proc.stdout


def test_a_run_survives_losing_the_node_its_workers_run_on(cluster, mlflow_server):
    """A third node takes the run's two workers (the other nodes' CPUs are held by idle jobs); it is SIGKILLed
    after the first checkpoint reached S3; the run goes on from that checkpoint on the other two nodes."""
    client = cluster.client()
    cluster.start_node("node_c", 2)
    holds = [client.submit_job(entrypoint="sleep 600", entrypoint_num_cpus=1, entrypoint_resources={n: 1})
             for n in ("head", "node_b")]
    try:
        name = f"node-loss-{secrets.token_hex(3)}"
        proc = cluster.run([str(BIN / "imm-orch"), "submit", "toy2d", "--cluster", cluster.dashboard, "--name", name,
                            "--tracking-uri", mlflow_server, "--experiment", "node-loss", f"storage.ray_storage=s3://"
                            f"{BUCKET}/ray", "trainer.num_workers=2", "trainer.max_failures=2", "train.steps=160",
                            "train.checkpoint_every=20", "train.log_every=10", "eval.every=160", "eval.n_samples=200",
                            "eval.steps=[1]"], timeout=120)
        assert proc.returncode == 0, proc.stderr
        job_id = re.search(r"as Ray job (\S+) to", proc.stdout).group(1)
        # Metrics reach MLflow once Ray registered the checkpoint that covers them: then the first one is safe in S3.
        mlc, deadline = tracking.client(mlflow_server), time.monotonic() + 300
        while not [r for r in runs_of(mlflow_server, "node-loss")[1] if r.data.tags[tracking.RUN_NAME_TAG] == name
                   and mlc.get_metric_history(r.info.run_id, "train/loss")]:
            assert time.monotonic() < deadline and not client.get_job_status(job_id).is_terminal(), \
                client.get_job_logs(job_id)[-3000:]
            time.sleep(0.5)
        assert any("/checkpoint_0000020/" in k for k in s3_keys(f"ray/{name}/"))
    finally:
        for h in holds:
            client.stop_job(h)
    cluster.kill_raylet("node_c")
    info = wait_job(client, job_id)
    logs = client.get_job_logs(job_id)
    cluster.stop_node("node_c")
    assert info.status == "SUCCEEDED", logs[-4000:]
    ours = [line for line in logs.splitlines() if line.startswith(("step ", "workers ", "resumed", "done"))]
    # one line says what happened: the dead ranks and their node, the step, the checkpoint, the attempt
    restarted = re.compile(r"workers restarted, attempt 2 of 3: (rank \d on [\d.]+/\w+ \(.+\)(; )?)+ after step \d+; "
                           r"resumed from the checkpoint at step \d+$")
    assert any(restarted.match(line) for line in ours), ours

    mlc, runs = runs_of(mlflow_server, "node-loss")
    runs = [r for r in runs if r.data.tags[tracking.RUN_NAME_TAG] == name]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same MLflow run throughout
    steps = [m.step for m in mlc.get_metric_history(runs[0].info.run_id, "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 160, steps  # strictly increasing: no step logged twice
    assert len(runs[0].data.tags["imm.nodes"].split(",")) == 3  # started on node_c, finished on head and node_b


def test_a_sweep_trial_survives_losing_its_node(cluster, mlflow_server, postgres):
    """A one-worker trial trains in its own Ray task (`orchestrator.run.in_process`), not in a Ray Train worker group:
    a third node takes it (the other nodes' CPUs are held by idle jobs) and is SIGKILLed after the trial's first
    checkpoint reached S3. Ray runs the task again on a freed node, which resumes from that checkpoint into the
    same MLflow run."""
    client = cluster.client()
    cluster.start_node("node_c", 1)
    holds = [client.submit_job(entrypoint="sleep 600", entrypoint_num_cpus=1, entrypoint_resources={n: 1})
             for n in ("head", "node_b")]
    try:
        proc = cluster.run(submit_args(
            cluster, "sweeps/toy2d_smoke.yaml", "--trials", "1", "--tracking-uri", mlflow_server, "--experiment",
            "trial-node-loss", f"storage.ray_storage=s3://{BUCKET}/ray", "trainer.max_failures=2", "train.steps=600",
            "eval.every=600"), timeout=120, env={"IMM_OPTUNA_STORAGE": postgres.database(password=False)})
        assert proc.returncode == 0, proc.stderr
        job_id = re.search(r"as Ray job (\S+) to", proc.stdout).group(1)
        kill_node_c_after_a_checkpoint(cluster, client, job_id, mlflow_server, "trial-node-loss",
                                       lambda r: r.data.tags.get("imm.sweep.role") == "trial")
    finally:
        for h in holds:
            client.stop_job(h)
    info = wait_job(client, job_id)
    logs = client.get_job_logs(job_id)
    cluster.stop_node("node_c")
    assert info.status == "SUCCEEDED", logs[-4000:]
    assert re.search(r"^trial 0: workers restarted, attempt 2 of 3: rank 0 on [\d.]+/\w+ \(its process or its node "
                     r"died\) after step \d+; resumed from the checkpoint at step \d+$", logs, re.M), logs[-3000:]
    mlc, runs = runs_of(mlflow_server, "trial-node-loss")
    (run,) = [r for r in runs if r.data.tags.get("imm.sweep.role") == "trial"]
    assert run.info.status == "FINISHED" and run.data.tags["imm.trial.state"] == "complete"
    steps = [m.step for m in mlc.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 600, steps  # strictly increasing: no step logged twice
    assert len(run.data.tags["imm.nodes"].split(",")) == 2  # started on node_c, finished on another


def test_a_killed_sweep_job_is_resumed_by_submitting_again(cluster, mlflow_server, postgres):
    import optuna

    full = postgres.database()  # this process opens the study itself; the job gets the URL without the password
    url = full.replace(f":{postgres.password}@", "@")
    args = submit_args(cluster, "sweeps/toy2d_smoke.yaml", "--trials", "2", "--max-concurrent", "1", "--tracking-uri",
                       mlflow_server, "--experiment", "driver-loss", f"storage.ray_storage=s3://{BUCKET}/ray")
    proc = cluster.run(args, timeout=120, env={"IMM_OPTUNA_STORAGE": url})
    assert proc.returncode == 0, proc.stderr
    job_id = re.search(r"as Ray job (\S+) to", proc.stdout).group(1)
    client = cluster.client()
    def study():
        return optuna.load_study(study_name="toy2d_smoke", storage=full)

    def completed() -> int:
        try:
            return len(study().get_trials(states=[optuna.trial.TrialState.COMPLETE]))
        except KeyError:  # the driver has not created the study yet
            return 0

    deadline = time.monotonic() + 400
    while not completed():
        assert time.monotonic() < deadline and not client.get_job_status(job_id).is_terminal(), \
            client.get_job_logs(job_id)[-3000:]
        time.sleep(1)
    client.stop_job(job_id)
    assert wait_job(client, job_id).status == "STOPPED"
    first = study().trials[0]
    assert first.state == optuna.trial.TrialState.COMPLETE
    # Ray's grace before its SIGKILL (RAY_JOB_STOP_WAIT_TIME_S, set by submit) let the driver close what it held
    _, runs = runs_of(mlflow_server, "driver-loss")
    status = {r.data.tags.get("imm.trial.number", "parent"): r.info.status for r in runs}
    assert status.pop("0") == "FINISHED" and status.pop("parent") == "KILLED", status
    assert set(status.values()) <= {"KILLED"}, status  # trial 1, if it had started

    proc = cluster.run([*args, "--resume", "--follow"], env={"IMM_OPTUNA_STORAGE": url})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    trials = study().trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[0].datetime_complete == first.datetime_complete  # kept, not rerun
    assert "trial 0 started" not in proc.stdout and "trial 0 resumed" not in proc.stdout  # never touched again
    mlc, runs = runs_of(mlflow_server, "driver-loss")
    assert sorted(r.data.tags.get("imm.trial.number", "parent") for r in runs) == ["0", "1", "parent"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_the_embedded_default_runs_beside_a_cluster_and_ctrl_c_stops_a_run_that_resumes(cluster, tmp_path):
    """With a `ray start` cluster on the machine, `imm-orch train` without --address
    died with Ray's "num_cpus ... must not be provided"; Ctrl-C during `imm-orch train` exited 1 with nothing
    printed and marked the run FAILED (Ray Train's SIGINT handler ends fit() with SystemExit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [str(BIN / "imm-orch"), "train", "toy2d", *TINY, "train.steps=300", "train.checkpoint_every=100",
            "eval.every=300", f"storage.root={tmp_path / 'runs'}", "trainer.num_workers=1", "--name", "ctrl-c",
            "--tracking-uri", uri]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # until training is under way
        lines.append(line)
        if re.match(r"step 1[1-9]0/300", line):  # past the first checkpoint
            break
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, "".join(lines) + out
    assert re.search(r"^imm-orch: interrupted at step \d+ \(rerun the same command to resume\)$", out, re.M), out
    mlc = tracking.client(uri)
    (run,) = mlc.search_runs([mlc.get_experiment_by_name("imm").experiment_id])
    assert run.info.status == "KILLED"

    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from the checkpoint at step" in done.stdout
    finished = mlc.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    # The interrupted run ends as an uninterrupted one does (here: trained in this process)
    import torch

    from imm.config import load_config
    from imm.training.loop import train_loop

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the Ray worker (1 CPU)
    try:
        straight = train_loop(load_config("toy2d", argv[3:argv.index("--name")]), device="cpu")
    finally:
        torch.set_num_threads(threads)
    quality = {k: v for k, v in finished.data.metrics.items() if k.startswith("energy/")}
    assert len(quality) == 2 and quality == pytest.approx({k: straight[k] for k in quality}, rel=1e-5)


def test_a_job_on_nodes_sharing_a_temp_dir_stops_with_the_reason(cluster, mlflow_server):
    """The crash of docs/cluster.md's `ray job submit` line on two `ray start` raylets of one machine: the second node's
    runtime-env agent unpacked the job's working dir again into the folder both share, deleting it under the
    driver (FileNotFoundError from os.getcwd() in MLflow's client). Now the driver says so and how to avoid it."""
    client = cluster.client()
    cluster.start_node("node_d", 1, own_temp_dir=False)
    try:
        proc = cluster.run([str(BIN / "imm-orch"), "submit", "toy2d", "--cluster", cluster.dashboard, "--tracking-uri",
                            mlflow_server, f"storage.ray_storage=s3://{BUCKET}/ray", *TINY], timeout=120)
        assert proc.returncode == 0, proc.stderr
        job_id = re.search(r"as Ray job (\S+) to", proc.stdout).group(1)
        info = wait_job(client, job_id, timeout=120)
    finally:
        cluster.stop_node("node_d")
    logs = client.get_job_logs(job_id)
    assert info.status == "FAILED" and info.driver_exit_code == 2, logs[-3000:]
    line = next(ln for ln in logs.splitlines() if ln.startswith("imm-orch: error: "))
    assert "Ray nodes on " in line and "share the temp dir" in line and "ray start --temp-dir" in line, line
    assert "Traceback" not in logs
