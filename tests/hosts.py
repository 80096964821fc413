"""Separate machines on this one: network namespaces joined by a bridge, each a host with its own address, its own
ports, its own /etc/hosts and its own home folder (the file system is shared, so no host reads a folder another
host wrote, except what a test hands over on purpose).

The hosts sit on 198.18.<n>.0/24, inside 198.18.0.0/15, the range set aside for network tests (RFC 2544). The
bridge lives in a namespace of its own, so this machine's own interfaces and routes are never touched and no
packet of a test can reach any other address: a host's only route is its subnet. Cutting a host's link
(`cut`) partitions it while its processes live on; `mend` joins it again.

Needs root (`ip netns`); `Hosts.available()` says whether this machine allows it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NETNS_ETC = Path("/etc/netns")  # `ip netns exec NAME` mounts /etc/netns/NAME/* over /etc/*


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@dataclass
class Hosts:
    """`names` hosts on 198.18.<subnet>.0/24: the first is .10, the next .11, and so on."""

    names: list[str]
    root: Path  # each host's home folder is root/<name>
    subnet: int = 77
    tag: str = field(default_factory=lambda: f"imm{os.getpid() % 100000}")
    procs: dict[str, list[subprocess.Popen]] = field(default_factory=dict)

    @staticmethod
    def available() -> str | None:
        """Why hosts cannot be made here, or None."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "no `ip` command (iproute2)"
        probe = f"immprobe{os.getpid()}"
        made = ip("netns", "add", probe, check=False)
        ip("netns", "del", probe, check=False)
        return None if made.returncode == 0 else f"ip netns add failed: {made.stderr.strip()}"

    def address(self, name: str) -> str:
        return f"198.18.{self.subnet}.{10 + self.names.index(name)}"

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def home(self, name: str) -> Path:
        return self.root / name

    @property
    def switch(self) -> str:
        return f"{self.tag}-switch"

    def _port(self, name: str) -> str:
        return f"{self.tag[-6:]}s{self.names.index(name)}"  # the switch's end of the host's link (<= 15 characters)

    def up(self, aliases: dict[str, list[str]] | None = None) -> Hosts:
        """Make the switch and the hosts. `aliases`: more names per host, written to every host's /etc/hosts."""
        ip("netns", "add", self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        lines = ["127.0.0.1 localhost"] + [
            f"{self.address(n)} {' '.join([n, *(aliases or {}).get(n, [])])}" for n in self.names]
        for name in self.names:
            ns, port = self.ns(name), self._port(name)
            ip("netns", "add", ns)
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.switch)
            ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / ns / "hosts").write_text("\n".join(lines) + "\n")
            self.home(name).mkdir(parents=True, exist_ok=True)
        return self

    def env(self, name: str, base: dict | None = None) -> dict:
        """An environment for a process of host `name`: its own HOME (~/.ray, ~/.pgpass, ~/.aws are its own)."""
        env = dict(os.environ if base is None else base)
        env["HOME"] = str(self.home(name))
        return env

    def command(self, name: str, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name), *args]

    def start(self, name: str, args: list[str], log: Path, env: dict | None = None, **kw) -> subprocess.Popen:
        """A long-lived process on host `name` (its own process group, stopped by `down`)."""
        with open(log, "w") as out:
            proc = subprocess.Popen(self.command(name, args), env=self.env(name, env), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.setdefault(name, []).append(proc)
        return proc

    def run(self, name: str, args: list[str], env: dict | None = None, timeout: float = 600,
            **kw) -> subprocess.CompletedProcess:
        """A command on host `name`, to its end."""
        return subprocess.run(self.command(name, args), env=self.env(name, env), capture_output=True, text=True,
                              timeout=timeout, **kw)

    def cut(self, name: str) -> None:
        """Partition host `name`: its link goes down at the switch; its processes live on."""
        ip("-n", self.switch, "link", "set", self._port(name), "down")

    def mend(self, name: str) -> None:
        ip("-n", self.switch, "link", "set", self._port(name), "up")

    def pids(self, name: str) -> list[int]:
        """The processes in host `name`'s namespace."""
        out = ip("netns", "pids", self.ns(name), check=False).stdout
        return [int(p) for p in out.split()]

    def stop(self, name: str) -> None:
        """Every process of host `name`: SIGTERM, then SIGKILL what is left."""
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids(name):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self.pids(name) and time.monotonic() < deadline:
                time.sleep(0.2)
        for proc in self.procs.pop(name, []):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def down(self) -> None:
        for name in self.names:
            self.stop(name)
            ip("netns", "del", self.ns(name), check=False)
            shutil.rmtree(NETNS_ETC / self.ns(name), ignore_errors=True)
        ip("netns", "del", self.switch, check=False)
