"""docker/slurm/imm-sweep.sbatch on a real Slurm: Debian's slurmctld on one host and a slurmd on each of two more
(tests/hosts.py's network namespaces; each slurmd in its own UTS namespace, so it is the node its hostname names),
munge for their authentication. A 2-node allocation runs a 2-trial sweep: the Ray head on the first node with the
driver, a worker on the second through `srun`; submitted again, the job finds the study and resumes it, running
no trial twice. The stores: an MLflow server on the controller's host, the study and Ray's storage on the shared
file system (as a Slurm cluster's home or scratch is)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.hosts import Hosts

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch")
pytestmark = pytest.mark.slow

SWEEP = """\
name: slurm_smoke
base:
  config: toy2d
  overrides: [train.steps=100, train.log_every=50, train.checkpoint_every=100, eval.every=100, eval.n_samples=300]
space:
  imm.group_size: {choices: [2, 4]}
objective:
  - {metric: energy/steps_2, direction: minimize}
sampler: {name: grid}
trials: 2
max_concurrent: 2
"""

class SlurmCluster:
    """ctl (slurmctld, MLflow's server) and n1, n2 (slurmd), on 198.18.78.0/24; the shared folder is `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.hosts = Hosts(["ctl", "n1", "n2"], root / "homes", subnet=78)
        self.conf = root / "slurm.conf"

    def up(self) -> SlurmCluster:
        h = self.hosts.up()
        self.start_munge()
        self.write_conf()
        h.start("ctl", self.as_host("ctl", f"exec slurmctld -D -i -f {self.conf}"), self.root / "slurmctld.log",
                env=self.env())
        for node in ("n1", "n2"):
            (self.root / f"spool-{node}").mkdir()
            h.start(node, self.as_host(node, f"exec slurmd -D -f {self.conf}"), self.root / f"slurmd-{node}.log",
                    env=self.env())
        self.wait(lambda: self.ctl(["sinfo", "--noheader", "-o", "%T %D"]).stdout.split() == ["idle", "2"],
                  "both nodes idle in sinfo", 60)
        mlflow = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
                  "--artifacts-destination", str(self.root / "artifacts"), "--host", "0.0.0.0", "--port", "5000",
                  "--workers", "1"]
        h.start("ctl", mlflow, self.root / "mlflow.log",
                env={**self.env(), "MLFLOW_SERVER_ALLOWED_HOSTS": "ctl,ctl:5000"})
        self.wait(lambda: self.ctl(["curl", "-fsS", "http://ctl:5000/health"]).returncode == 0, "MLflow", 120)
        return self

    @staticmethod
    def as_host(name: str, command: str) -> list[str]:
        """`command` as the machine `name`: its own hostname (UTS namespace; Slurm knows a node by its hostname) and
        the cgroup v1 hierarchies mounted under a tmpfs at /sys/fs/cgroup, where slurmd looks (mount namespace)."""
        cgroups = " && ".join(f"mkdir -p /sys/fs/cgroup/{c} && mount -t cgroup -o {c} none /sys/fs/cgroup/{c}"
                              for c in ("freezer", "cpuset", "memory", "devices", "cpu", "cpuacct"))
        return ["unshare", "--uts", "--mount", "sh", "-c",
                f"mount -t tmpfs none /sys/fs/cgroup && {cgroups} && hostname {name} && {command}"]

    def start_munge(self) -> None:
        self.root.chmod(0o755)  # munged (its own user) reaches its folder below, and checks the folders' modes
        munge = self.root / "munge"
        munge.mkdir(mode=0o755)  # munged wants its socket folder reachable by all, and writable by itself only
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        shutil.chown(munge, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        self.socket = munge / "munge.socket"
        started = subprocess.run(
            ["runuser", "-u", "munge", "--", "munged", f"--socket={self.socket}", f"--key-file={key}",
             f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"],
            capture_output=True, text=True)
        assert started.returncode == 0, started.stderr
        self.munged_pid = int((munge / "munged.pid").read_text())

    def write_conf(self) -> None:
        state = self.root / "state"
        state.mkdir()
        (self.root / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
        nodes = "\n".join(f"NodeName={n} NodeAddr={self.hosts.address(n)} CPUs=2 RealMemory=1000 State=UNKNOWN"
                          for n in ("n1", "n2"))
        self.conf.write_text(f"""\
ClusterName=immtest
SlurmctldHost=ctl({self.hosts.address('ctl')})
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={state}
SlurmdSpoolDir={self.root}/spool-%n
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd-%n.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmdTimeout=30
MailProg=/bin/true
{nodes}
PartitionName=main Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
""")

    def env(self) -> dict:
        """This machine's environment less the test session's own settings (its Ray, MLflow, S3, caches), which
        the job would otherwise inherit through sbatch and srun."""
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "IMM_", "PYTEST_", "PG"))}
        return {**clean, "SLURM_CONF": str(self.conf), "PATH": f"{BIN}:{clean['PATH']}"}

    def ctl(self, args: list[str], env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.hosts.run("ctl", args, env={**self.env(), **(env or {})}, timeout=timeout, cwd=ROOT)

    @staticmethod
    def wait(probe, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
            time.sleep(1)

    def down(self) -> None:
        try:
            self.hosts.down()
        finally:
            if hasattr(self, "munged_pid"):
                subprocess.run(["kill", str(self.munged_pid)], capture_output=True)


@pytest.fixture(scope="module")
def slurm():
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"needs Debian's slurmctld, slurmd and munge (apt-get install slurmctld slurmd munge; .ci/run "
                    f"does): {missing} not found")
    why = Hosts.available()
    if why:
        pytest.skip(f"separate hosts need network namespaces: {why}")
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="imms-")))  # short: Ray's socket paths live below it
    try:
        yield cluster.up()
    finally:
        cluster.down()
        shutil.rmtree(cluster.root, ignore_errors=True)


def test_a_two_node_allocation_runs_a_sweep_and_a_resubmission_resumes_it(slurm):
    root = slurm.root
    (root / "slurm_smoke.yaml").write_text(SWEEP)
    node_env = root / "node.env"
    node_env.write_text("MLFLOW_TRACKING_URI=http://ctl:5000\n"
                        f"IMM_OPTUNA_STORAGE=journal:{root}/optuna.journal\n")
    env = {"IMM_NODE_ENV": str(node_env), "IMM_RAY_TEMP_DIR": str(root / "ray"),
           "IMM_CACHE": str(root / "cache")}
    submit = ["sbatch", "--parsable", "--wait", f"--output={root}/job-%j.out", "--cpus-per-task=2",
              str(ROOT / "docker" / "slurm" / "imm-sweep.sbatch"), str(root / "slurm_smoke.yaml"),
              f"storage.root={root}/runs", "storage.shared=true"]
    first = slurm.ctl(submit, env=env, timeout=600)
    job = first.stdout.strip().splitlines()[-1] if first.stdout.strip() else "?"
    log = (root / f"job-{job}.out").read_text() if (root / f"job-{job}.out").exists() else first.stderr
    assert first.returncode == 0, log[-4000:]
    assert "2 Ray nodes alive" in log and re.search(r"sweep done in \d+s: 2 complete", log), log[-4000:]

    query = ("import json, mlflow\nc = mlflow.MlflowClient()\n"
             "runs = [r for e in c.search_experiments() for r in c.search_runs([e.experiment_id]) "
             "if r.data.tags.get('imm.sweep') == 'slurm_smoke' and 'imm.trial.number' in r.data.tags]\n"
             "print(json.dumps(sorted((r.data.tags['imm.trial.number'], r.data.tags.get('imm.nodes', '')) "
             "for r in runs)))")
    mlflow_env = {"MLFLOW_TRACKING_URI": "http://ctl:5000"}
    trials = json.loads(slurm.ctl([sys.executable, "-c", query], env=mlflow_env, timeout=120).stdout)
    assert [t[0] for t in trials] == ["0", "1"], trials
    used = {node.split("/")[0] for _, nodes in trials for node in nodes.split(",") if node}  # IP/node id
    assert used and used <= {slurm.hosts.address("n1"), slurm.hosts.address("n2")}, trials

    again = slurm.ctl(submit, env=env, timeout=600)
    job = again.stdout.strip().splitlines()[-1]
    log = (root / f"job-{job}.out").read_text()
    assert again.returncode == 0, log[-4000:]
    assert "the study exists: --resume" in log and "started" not in log.split("2 Ray nodes alive")[1], log[-4000:]
    assert json.loads(slurm.ctl([sys.executable, "-c", query], env=mlflow_env, timeout=120).stdout) == trials
