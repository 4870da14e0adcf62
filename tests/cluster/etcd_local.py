"""A 3-member etcd on loopback ports in a temporary directory, for tests, the demo and benchmarks.

Debian's ``etcd-server`` (``/usr/bin/etcd``, 3.4). Ports are picked free at start (several
engineers' tests share the machine). Every process started here is stopped by :meth:`stop`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port as free_port  # one definition; re-exported for the cluster tests

ETCD_BINARY = os.environ.get("CSUD_ETCD", "/usr/bin/etcd")
START_TIMEOUT_SECONDS = 30.0


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    workdir: Path
    size: int = 3
    members: list[Member] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self) -> EtcdCluster:
        if not Path(ETCD_BINARY).exists():
            raise FileNotFoundError(f"{ETCD_BINARY} not found (Debian package etcd-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.members = [
            Member(
                f"etcd{i}",
                free_port(),
                free_port(),
                self.workdir / f"etcd{i}.data",
                self.workdir / f"etcd{i}.log",
            )
            for i in range(self.size)
        ]
        for member in self.members:
            self._spawn(member, "new")
        self.wait_healthy()
        return self

    def _spawn(self, member: Member, state: str) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        args = [
            ETCD_BINARY,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial,
            "--initial-cluster-state", state,
            "--initial-cluster-token", f"csud-test-{os.getpid()}",
            "--heartbeat-interval", "100",
            "--election-timeout", "1000",
            "--log-level", "warn",
        ]  # fmt: skip
        log = member.log_path.open("ab")
        member.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_healthy(self, members: list[Member] | None = None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for member in members or self.members:
            while True:
                if member.process is not None and member.process.poll() is not None:
                    tail = member.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"etcd member {member.name} exited: {tail}")
                try:
                    with urllib.request.urlopen(f"{member.client_url}/health", timeout=1) as resp:
                        if b'"true"' in resp.read():
                            break
                except (OSError, urllib.error.URLError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"etcd member {member.name} not healthy in {START_TIMEOUT_SECONDS} s")
                time.sleep(0.2)

    def kill(self, index: int) -> None:
        """SIGKILL one member (its data stays: :meth:`restart` brings it back)."""
        member = self.members[index]
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGKILL)
            member.process.wait(10)

    def restart(self, index: int) -> None:
        member = self.members[index]
        self._spawn(member, "existing")
        self.wait_healthy([member])

    def stop(self) -> None:
        for member in self.members:
            proc = member.process
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for member in self.members:
            proc = member.process
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
