"""The multi-machine cluster on separate hosts (`tests/hosts.py`: network namespaces, each with its own address,
ports, /etc/hosts and home folder), brought up as docker/README.md says, with the same commands the containers run:

- head (198.18.77.10): PostgreSQL with a password, moto's S3 server, MLflow's server (compose's own command), the
  Ray head (`docker/ray-node.sh head`), the bucket made by `docker/buckets.py create`;
- w1, w2: a Ray worker node each (`docker/ray-node.sh worker`), one CPU, a temp dir of its own;
- laptop: no Ray; it submits, reads the study and lists the jobs.

Every host reads `docker/node.env.example` with the head's address (by name, `head`) and its own copy of the
files `docker/make_secrets.py` writes; the PostgreSQL password and the S3 secret hold `@:/#%`. What moto cannot show:
it accepts any S3 signature, so a wrong S3 secret would pass here (the special characters travel and are signed
with all the same).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.hosts import Hosts
from tests.servers import BIN, PostgresServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "p@ss:w/rd#1%x"  # the PostgreSQL user's: every character that breaks a URL or a libpq file
S3_SECRET = "s3@cret:/#%key"
TOKEN = "immhoststoken0123456789abcdef0123"
SECRETS = [PASSWORD, S3_SECRET, TOKEN]
BUCKET = "imm"
TINY = ["train.steps=40", "train.log_every=10", "train.checkpoint_every=20", "eval.every=40", "eval.n_samples=200",
        "eval.steps=[1,2]", "model.hidden=32", "model.depth=1", "train.batch_size=64"]
# Ray's health checks: a node that misses 5 checks a second apart is dead (Ray's defaults: 3 s apart, 10 s
# timeouts, 5 misses). Only the partition test depends on it; the rest is the documented procedure.
FAST_DETECTION = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}


def read_env_file(path: Path, replace: dict[str, str]) -> dict[str, str]:
    """An env file as `docker run --env-file` reads it (KEY=VALUE, literal values), with `replace` applied."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            for old, new in replace.items():
                value = value.replace(old, new)
            out[key] = value
    return out


class Machines:
    """The four hosts, their environments and their servers."""

    def __init__(self, root: Path):
        self.root = root
        self.hosts = Hosts(["head", "w1", "w2", "laptop"], root / "hosts")
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "IMM_", "PYTEST_", "PG"))}
        clean["PATH"] = f"{BIN}{os.pathsep}{clean['PATH']}"
        self.env: dict[str, dict] = {}
        for name in self.hosts.names:
            secrets_dir = self.hosts.home(name) / "secrets"  # as if copied to each machine
            node = read_env_file(ROOT / "docker" / "node.env.example",
                                 {"10.0.0.1": "head", "/run/secrets/": f"{secrets_dir}/"})
            self.env[name] = {**clean, **node, "IMM_CACHE": str(self.hosts.home(name) / "cache")}
        laptop = self.env["laptop"]  # docs/cluster.md's exports on the laptop: no node settings
        for key in ("RAY_HEAD", "MLFLOW_TRACKING_URI", "IMM_RAY_STORAGE", "IMM_METRICS_CACHE", "IMM_OPTUNA_STORAGE"):
            laptop.pop(key)

    def up(self) -> Machines:
        h = self.hosts.up(aliases={"head": ["postgres", "s3", "mlflow"]})
        chosen = {"IMM_POSTGRES_PASSWORD": PASSWORD, "IMM_S3_SECRET_KEY": S3_SECRET, "RAY_AUTH_TOKEN": TOKEN}
        made = subprocess.run([sys.executable, str(ROOT / "docker" / "make_secrets.py"), "--dir",
                               str(self.root / "secrets")], env={**os.environ, **chosen}, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        for name in h.names:
            shutil.copytree(self.root / "secrets", h.home(name) / "secrets")
        self.start_stores()
        self.start_ray()
        return self

    def start_stores(self) -> None:
        h, env = self.hosts, self.env["head"]
        secrets_dir = h.home("head") / "secrets"
        # its own folder, which the `postgres` user owns (initdb refuses root)
        self.pg = PostgresServer(Path(tempfile.mkdtemp(prefix="immh-pg-")), 5432, password=PASSWORD, host="0.0.0.0",
                                 prefix=h.command("head", []), clients="198.18.0.0/15").start()
        for db in ("mlflow", "optuna", "sweeps", "partition"):
            made = h.run("head", ["psql", "-h", "head", "-U", "imm", "-d", "postgres", "-c", f"CREATE DATABASE {db}"],
                         env={**env, "PATH": f"{PostgresServer.binaries()}:{env['PATH']}"})  # through PGPASSFILE
            assert made.returncode == 0, made.stderr
        h.start("head", [str(BIN / "moto_server"), "-H", "0.0.0.0", "-p", "8333"], self.root / "s3.log", env=env)
        admin = {**env, "AWS_SHARED_CREDENTIALS_FILE": str(secrets_dir / "aws_admin"), "IMM_BUCKET": BUCKET}
        self.wait(lambda: h.run("head", [sys.executable, "docker/buckets.py", "create"], env=admin, cwd=ROOT),
                  "the bucket", timeout=60)
        # compose's own command for the MLflow server, with the environment compose gives it
        compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
        command = compose["services"]["mlflow"]["command"][0].replace("$$", "$")
        server_env = {**env, "IMM_BUCKET": BUCKET, "MLFLOW_S3_ENDPOINT_URL": "http://s3:8333",
                      "MLFLOW_SERVER_ALLOWED_HOSTS": "head,head:5000"}
        for key in ("MLFLOW_TRACKING_URI", "IMM_OPTUNA_STORAGE"):
            server_env.pop(key)
        h.start("head", ["sh", "-c", command], self.root / "mlflow.log", env=server_env)
        self.wait(lambda: h.run("laptop", ["curl", "-fsS", "http://head:5000/health"], env=self.env["laptop"]),
                  "MLflow's server", timeout=120)

    def start_ray(self) -> None:
        h = self.hosts
        self.temp_dirs = {n: tempfile.mkdtemp(prefix=f"immh-{n}-") for n in ("head", "w1", "w2")}
        common = ["--object-store-memory", str(150 * 2**20)]
        h.start("head", [str(ROOT / "docker" / "ray-node.sh"), "head", "--temp-dir", self.temp_dirs["head"], *common,
                         "--system-config", json.dumps(FAST_DETECTION)],
                self.root / "ray-head.log", env={**self.env["head"], "NODE_IP": h.address("head")})
        for w in ("w1", "w2"):
            self.start_worker(w)

    def start_worker(self, w: str) -> None:
        h = self.hosts
        h.start(w, [str(ROOT / "docker" / "ray-node.sh"), "worker", "--num-cpus", "1", "--temp-dir",
                    self.temp_dirs[w], "--object-store-memory", str(150 * 2**20)],
                self.root / f"ray-{w}.log", env={**self.env[w], "NODE_IP": h.address(w)})
        self.wait(lambda: self.alive_nodes() >= len([n for n in ("head", "w1", "w2") if h.pids(n)]),
                  f"{w} to join", timeout=120)

    def alive_nodes(self) -> int:
        out = self.laptop(["ray", "list", "nodes", "--address", "http://head:8265", "--filter", "state=ALIVE",
                           "--format", "json"], timeout=60)
        if out.returncode != 0 or not out.stdout.lstrip().startswith("["):
            return 0  # the head not up yet, or Ray's "No resource in the cluster" when no node is
        return len(json.loads(out.stdout))

    @staticmethod
    def wait(probe, what: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result is True or getattr(result, "returncode", None) == 0:
                return result
            assert time.monotonic() < deadline, f"{what} did not come up: {getattr(result, 'stderr', result)}"
            time.sleep(1)

    def laptop(self, args: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.hosts.run("laptop", args, env={**self.env["laptop"], **(env or {})}, timeout=timeout, cwd=ROOT)

    def python(self, code: str, **kw) -> subprocess.CompletedProcess:
        """Python on the laptop (the test process itself is on no host and reaches none)."""
        return self.laptop([sys.executable, "-c", code], **kw)

    def query(self, code: str):
        """The JSON a snippet prints on the laptop, with `mlc` (the MLflow server's client) and `s3` (boto3)."""
        prelude = ("import json, boto3\nfrom orchestrator.track import tracking\nmlc = tracking.client('http://head:5000')\n"
                   "s3 = boto3.client('s3')\n")
        out = self.python(prelude + code, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def down(self) -> None:
        try:
            for name in ("laptop", "w2", "w1"):
                self.hosts.stop(name)
            if hasattr(self, "pg"):
                self.pg.stop()
            self.hosts.stop("head")
        finally:
            self.hosts.down()
            for d in getattr(self, "temp_dirs", {}).values():
                shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    why = Hosts.available()
    if why:
        pytest.skip(f"separate hosts need network namespaces: {why}")
    m = Machines(Path(tempfile.mkdtemp(prefix="immh-")))  # short: Ray's socket paths live under the temp dirs
    try:
        yield m.up()
    finally:
        m.down()
        shutil.rmtree(m.root, ignore_errors=True)


def submit(machines, *extra: str, target: str = "sweeps/toy2d_smoke.yaml", env: dict | None = None):
    """`imm-orch submit` from the laptop, as docs/cluster.md writes it (the study's URL holds no password)."""
    return machines.laptop([str(BIN / "imm-orch"), "submit", target, "--cluster", "http://head:8265",
                            "--tracking-uri", "http://head:5000", f"storage.ray_storage=s3://{BUCKET}/ray", *TINY,
                            *extra], env={"IMM_OPTUNA_STORAGE": "postgresql://imm@head:5432/sweeps", **(env or {})})


def job_list(machines) -> str:
    out = machines.laptop(["ray", "job", "list", "--address", "http://head:8265"], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_a_sweep_submitted_from_the_laptop_trains_on_the_worker_hosts(machines):
    t0 = time.perf_counter()
    proc = submit(machines, "--trials", "2", "--experiment", "hosts-sweep", "--follow")
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    job_id = re.search(r"as Ray job (imm-toy2d_smoke-\S+) to", proc.stdout).group(1)
    started = proc.stdout.index("trial 0 started")
    print(f"\nsubmit from the laptop -> job SUCCEEDED: {wall:.1f}s")
    assert started > 0 and f"job {job_id}: SUCCEEDED" in proc.stdout

    runs = machines.query("""
exp = mlc.get_experiment_by_name('hosts-sweep')
runs = mlc.search_runs([exp.experiment_id])
keys = [o['Key'] for o in s3.list_objects_v2(Bucket='imm', Prefix='mlflow/').get('Contents', [])]
print(json.dumps([{'status': r.info.status, 'id': r.info.run_id, 'tags': r.data.tags, 'params': r.data.params,
                   'ckpt': any(k.endswith(r.info.run_id + '/artifacts/checkpoint/checkpoint.pt') for k in keys)}
                  for r in runs]))""")
    trials = [r for r in runs if r["tags"].get("imm.sweep.role") == "trial"]
    assert len(trials) == 2 and {r["status"] for r in runs} == {"FINISHED"}
    workers = {machines.hosts.address("w1"), machines.hosts.address("w2")}
    for r in trials:
        (node,) = r["tags"]["imm.nodes"].split(",")
        assert node.split("/")[0] in workers, node  # the head holds no CPU for trials
        assert r["ckpt"], r["id"]  # the final checkpoint is in S3, through MLflow's proxied artifacts
    text = json.dumps(runs)
    assert not [s for s in SECRETS if s in text]  # no credential in any param or tag

    status = machines.laptop([str(BIN / "imm-orch"), "status", "toy2d_smoke", "--storage",
                              "postgresql://imm@head:5432/sweeps"])  # the password: the laptop's PGPASSFILE
    assert status.returncode == 0 and "2 trial(s): 2 complete" in status.stdout, status.stdout + status.stderr
    jobs = job_list(machines)
    assert job_id in jobs and not [s for s in SECRETS if s in jobs]
    # no process of any host shows a credential on its command line
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [s for s in SECRETS if s in ps]


def readme_cluster_lines() -> list[str]:
    """The README's cluster block: its `export` and `ray job` lines, one line each."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "ray job submit" in b)
    lines = re.sub(r"\\\n\s*", "", block).splitlines()
    return [line.split(" #", 1)[0].strip() for line in lines if line.startswith(("export ", "ray job "))]


def test_the_readme_ray_job_lines_work_as_written(machines):
    """With the README's exports (the token from its file), its `ray job submit` runs a one-trial sweep whose
    stores come from the nodes' environment, and its `ray job logs` reads the job."""
    lines = readme_cluster_lines()
    exports = {}
    for line in (x for x in lines if x.startswith("export ")):
        for assignment in shlex.split(line)[1:]:
            key, value = assignment.split("=", 1)
            exports[key] = value
    assert exports.get("RAY_AUTH_MODE") == "token" and "RAY_AUTH_TOKEN_PATH" in exports, lines
    env = {**exports, "RAY_AUTH_TOKEN_PATH": str(machines.hosts.home("laptop") / "secrets" / "ray_token")}
    submit_line = next(x for x in lines if x.startswith("ray job submit"))
    args = shlex.split(submit_line.replace("http://HEAD:8265", "http://head:8265"))
    proc = machines.laptop([*args, "--trials", "1", *TINY], env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    job_id = re.search(r"Job '(\S+)' submitted successfully", proc.stdout + proc.stderr).group(1)
    logs_line = next(x for x in lines if x.startswith("ray job logs"))
    logs = machines.laptop(shlex.split(logs_line.replace("http://HEAD:8265", "http://head:8265")
                                       .replace("JOB_ID", job_id)), env=env)
    assert logs.returncode == 0 and "sweep done" in logs.stdout, logs.stdout[-2000:] + logs.stderr[-2000:]


def test_a_trial_that_fits_no_node_and_a_credential_are_refused_before_submitting(machines):
    before = job_list(machines).count("imm-")
    big = submit(machines, target="sweeps/cifar10_imm_ablation.yaml")
    assert big.returncode == 2 and len(big.stderr.strip().splitlines()) == 1, big.stdout + big.stderr
    assert ("resources: a trial needs 8 worker(s) of 4 CPUs, 1 GPU (32 CPUs, 8 GPUs in all) and the cluster's 3 "
            "node(s) hold 0 such worker(s) at once (the largest node: 1 CPU, 0 GPUs)") in big.stderr, big.stderr
    leaky = submit(machines, env={"IMM_OPTUNA_STORAGE": "postgresql://imm:p%40ss@head:5432/optuna"})
    assert leaky.returncode == 2 and "IMM_OPTUNA_STORAGE: postgresql://imm:***@head:5432/optuna holds a password" \
        in leaky.stderr and "p%40ss" not in leaky.stderr, leaky.stderr
    assert job_list(machines).count("imm-") == before  # nothing was submitted


def test_a_partitioned_worker_host_loses_its_trial_to_the_other_and_writes_nothing_after(machines):
    """The trial's host is cut off (its link down; its processes live on) once a checkpoint is in S3. Ray declares
    the node dead; the trial's task runs again on the other worker from that checkpoint and finishes. The link
    comes back: the cut-off attempt finds its run taken over (`rank_zero.Superseded`) and writes nothing more."""
    h = machines.hosts
    proc = submit(machines, "--trials", "1", "--experiment", "hosts-partition", "trainer.max_failures=2",
                  "train.steps=400", "eval.every=400", env={"IMM_OPTUNA_STORAGE":
                                                           "postgresql://imm@head:5432/partition"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    job_id = re.search(r"as Ray job (\S+) to", proc.stdout).group(1)
    where = machines.query("""
import time
deadline = time.time() + 300
while time.time() < deadline:
    exp = mlc.get_experiment_by_name('hosts-partition')
    runs = [r for r in mlc.search_runs([exp.experiment_id]) if r.data.tags.get('imm.sweep.role') == 'trial'] if exp else []
    if runs and 'imm.nodes' in runs[0].data.tags:
        name = runs[0].data.tags['imm.run_name']
        keys = [o['Key'] for o in s3.list_objects_v2(Bucket='imm', Prefix=f'ray/{name}/').get('Contents', [])]
        if any(k.endswith('checkpoint.pt') for k in keys):
            print(json.dumps({'node': runs[0].data.tags['imm.nodes'], 'run': runs[0].info.run_id}))
            break
    time.sleep(0.3)
""")
    victim = next(w for w in ("w1", "w2") if where["node"].startswith(h.address(w) + "/"))
    t_cut = time.monotonic()
    h.cut(victim)
    machines.wait(lambda: machines.alive_nodes() == 2, "Ray to declare the cut-off node dead", timeout=120)
    detected = time.monotonic() - t_cut
    deadline = time.monotonic() + 400
    while not re.search(r"succeeded|failed|stopped", status := job_status(machines, job_id), re.I):
        assert time.monotonic() < deadline, status
        time.sleep(2)
    recovered = time.monotonic() - t_cut
    stale = h.pids(victim)  # the cut-off host's Ray processes live on
    h.mend(victim)
    time.sleep(15)  # the cut-off attempt's writes, if any, land now
    print(f"\npartition: node declared dead after {detected:.1f}s, job done {recovered:.1f}s after the cut; "
          f"{len(stale)} processes lived on the cut-off host, {len(h.pids(victim))} 15s after the link came back")
    assert "succeeded" in status.lower(), status
    run = machines.query(f"""
r = mlc.get_run('{where["run"]}')
steps = [m.step for m in mlc.get_metric_history(r.info.run_id, 'train/loss')]
print(json.dumps({{'status': r.info.status, 'steps': steps, 'nodes': r.data.tags['imm.nodes'],
                  'state': r.data.tags.get('imm.trial.state')}}))""")
    assert run["status"] == "FINISHED" and run["state"] == "complete", run
    assert run["steps"] == sorted(set(run["steps"])) and run["steps"][-1] == 400, run["steps"]
    assert len(run["nodes"].split(",")) == 2, run  # started on the cut-off host, finished on the other
    logs = machines.laptop(["ray", "job", "logs", "--address", "http://head:8265", job_id]).stdout
    assert re.search(r"^trial 0: workers restarted, attempt 2 of 3: rank 0 on [\d.]+/\w+ \(its process or its node "
                     r"died\) after step \d+; resumed from the checkpoint at step \d+$", logs, re.M), logs[-3000:]
    study = machines.laptop([str(BIN / "imm-orch"), "status", "toy2d_smoke", "--storage",
                             "postgresql://imm@head:5432/partition"])
    assert "1 trial(s): 1 complete" in study.stdout, study.stdout + study.stderr
    h.stop(victim)  # its raylet was declared dead: a machine that comes back rejoins with a new `ray start`
    machines.start_worker(victim)


def job_status(machines, job_id: str) -> str:
    out = machines.laptop(["ray", "job", "status", "--address", "http://head:8265", job_id], timeout=60)
    return out.stdout + out.stderr  # Ray's CLI prints the final status as a log line
