"""csud nodes as subprocesses on loopback, for the cluster test and scripts/bench_cluster.py.

Each node has its own config file (store, metrics port, node API port, node id) and the same
cameras and secret. "Recording" is read from each node's ``/status``: a camera listed there
with ``up`` is being recorded by that node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster.etcd_local import free_port

CSUD = str(Path(sys.executable).parent / "csud")
SECRET = "test-cluster-secret-0123456789abcdef"


def write_node_config(
    tmp: Path,
    node: str,
    etcd: list[str],
    sim_port: int,
    cameras: int,
    lease_seconds: int = 4,
    segment_seconds: int = 4,
    capacity: int = 100,
    web_port: int = 0,
    live_cameras: int = 0,
) -> tuple[Path, int, int]:
    """The config of ``node``; returns (path, metrics port, node API port). With ``web_port``,
    the live-viewing server listens there and the first ``live_cameras`` cameras belong to the
    ``live`` commune "woippy" (the others to the storage commune "metz")."""
    metrics_port, api_port = free_port(), free_port()
    secret = tmp / "cluster.key"
    if not secret.exists():
        secret.write_text(SECRET)
        secret.chmod(0o600)
    keys = tmp / "keys"  # the site's signing key, shared by the nodes (csud keygen)
    if not (keys / "signing_key.pem").exists():
        subprocess.run([CSUD, "keygen", "--out", str(keys)], check=True, capture_output=True, timeout=60)
    lines = [
        "[evidence]",
        f'signing_key = "{keys / "signing_key.pem"}"',
        "[storage]",
        f'root = "{tmp / node / "store"}"',
        f"segment_seconds = {segment_seconds}",
        "[metrics]",
        f'listen = "127.0.0.1:{metrics_port}"',
        "[cluster]",
        f"etcd = {json.dumps(etcd)}",
        f'node = "{node}"',
        f'listen = "127.0.0.1:{api_port}"',
        f'advertise = "http://127.0.0.1:{api_port}"',
        f'secret_file = "{secret}"',
        f"lease_seconds = {lease_seconds}",
        f"capacity = {capacity}",
        "[[communes]]",
        'id = "metz"',
        'name = "Metz"',
        'service = "storage"',
        "retention_days = 15",
    ]
    if web_port:
        lines[lines.index("[cluster]") : lines.index("[cluster]")] = [
            "[web]",
            f'listen = "127.0.0.1:{web_port}"',
        ]
        lines += [
            "[[communes]]",
            'id = "woippy"',
            'name = "Woippy"',
            'service = "live"',
            "retention_days = 15",
        ]
    for i in range(1, cameras + 1):
        lines += [
            "[[cameras]]",
            f'id = "cam{i}"',
            f'commune = "{"woippy" if i <= live_cameras else "metz"}"',
            f'url = "rtsp://127.0.0.1:{sim_port}/cam{i}"',
            "stall_seconds = 5",
        ]
    (tmp / node).mkdir(parents=True, exist_ok=True)
    path = tmp / node / "csud.toml"
    path.write_text("\n".join(lines) + "\n")
    if not (tmp / node / "store").exists():  # each node records into its own store (csud init)
        subprocess.run([CSUD, "init", "--config", str(path)], check=True, capture_output=True, timeout=60)
    return path, metrics_port, api_port


@dataclass
class Node:
    name: str
    config: Path
    metrics_port: int
    api_port: int
    tmp: Path
    proc: subprocess.Popen[bytes] | None = None
    web_port: int = 0

    def start(self) -> None:
        log = (self.tmp / self.name / "csud.log").open("ab")
        env = dict(os.environ)
        env.pop("CSUD_CONFIG", None)
        self.proc = subprocess.Popen(
            [CSUD, "run", "--config", str(self.config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 40.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def status(self) -> dict[str, Any] | None:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/status"
            with urllib.request.urlopen(url, timeout=2) as resp:
                doc: dict[str, Any] = json.loads(resp.read())
                return doc
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def recording(self) -> set[str]:
        """Cameras this node's recorders are receiving now (up, a frame in the last 2 s)."""
        doc = self.status()
        if doc is None:
            return set()
        return {
            c["camera"]
            for c in doc["cameras"]
            if c["up"] and c["last_frame_age_seconds"] is not None and c["last_frame_age_seconds"] < 2
        }

    def running(self) -> set[str]:
        """Cameras with a recorder on this node, receiving or not."""
        doc = self.status()
        return {c["camera"] for c in doc["cameras"]} if doc else set()

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in (self.tmp / self.name / "csud.log").read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def make_nodes(
    tmp: Path, etcd: list[str], sim_port: int, cameras: int, names: list[str], **kw: Any
) -> list[Node]:
    nodes = []
    for name in names:
        path, mport, aport = write_node_config(tmp, name, etcd, sim_port, cameras, **kw)
        nodes.append(Node(name, path, mport, aport, tmp))
    return nodes


def recorders(nodes: list[Node]) -> dict[str, list[str]]:
    """camera -> nodes recording it now."""
    out: dict[str, list[str]] = {}
    for node in nodes:
        if node.alive():
            for camera in node.recording():
                out.setdefault(camera, []).append(node.name)
    return out


def cluster_status(config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [CSUD, "cluster", "status", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
    """Poll ``predicate`` until true; seconds it took. AssertionError after ``timeout``."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def node_segments(node: Node, camera: str) -> list[dict[str, Any]]:
    """The segment rows of ``camera`` in ``node``'s own index (read-only), with node and fence."""
    from csud.cluster.api import segment_rows
    from csud.store.index import Index

    path = node.tmp / node.name / "store" / "index.sqlite3"
    if not path.exists():
        return []
    index = Index.open(path, readonly=True)
    try:
        return segment_rows(index, camera, None, None)
    finally:
        index.close()
