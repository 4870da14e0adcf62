"""Three csud nodes on a real 3-member etcd, recording 6 simulated cameras (issue 14, "Must show").

Recording is observed on each node's ``/status`` (a camera there, up, with a frame in the last
2 s); ownership in etcd through ``csud cluster status --json``; continuity in each node's index
through the node API. Every process started here is stopped; every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from csud.cluster.placement import place
from tests.cluster.etcd_local import EtcdCluster, free_port
from tests.cluster.harness import CSUD, Node, cluster_status, make_nodes, node_segments, recorders, wait_for
from tests.integration.helpers import simulator, wait_port

pytestmark = pytest.mark.integration

CAMERAS = 6
LEASE_SECONDS = 4
GAP_SLACK_NS = 200_000_000  # 5 frames at 25 fps
ALL = {f"cam{i}" for i in range(1, CAMERAS + 1)}


@pytest.fixture
def sim_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    with simulator(tmp_path, port, CAMERAS):
        yield port


def metric_values(node: Node) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def cluster_metrics(nodes: list[Node]) -> tuple[float, float, dict[str, float]]:
    """(members, unassigned) as every node agrees (-1 if they differ), and owners per camera."""
    members: set[float] = set()
    unassigned: set[float] = set()
    owned: dict[str, float] = {}
    for node in nodes:
        families = metric_values(node)
        members.add(families["csud_cluster_members"][()])
        unassigned.add(families["csud_cluster_unassigned_cameras"][()])
        for labels, value in families["csud_camera_owned"].items():
            camera = dict(labels)["camera"]
            owned[camera] = owned.get(camera, 0.0) + value
    return (
        (members.pop() if len(members) == 1 else -1),
        (unassigned.pop() if len(unassigned) == 1 else -1),
        owned,
    )


def csud(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CSUD, *args], capture_output=True, text=True, timeout=120)


def exactly_one(nodes: list[Node]) -> bool:
    current = recorders(nodes)
    return set(current) == ALL and all(len(v) == 1 for v in current.values())


def owners(nodes: list[Node]) -> dict[str, str | None]:
    cams: dict[str, str | None] = cluster_status(next(n for n in nodes if n.alive()).config)["cameras"]
    return cams


def stop_all(nodes: list[Node]) -> None:
    for node in nodes:
        node.stop()


def test_failover_rebalance_and_etcd_member_loss(
    tmp_path: Path, etcd_cluster: EtcdCluster, sim_port: int
) -> None:
    nodes = make_nodes(tmp_path, etcd_cluster.endpoints, sim_port, CAMERAS, ["rec-1", "rec-2", "rec-3"])
    try:
        for node in nodes:
            node.start()
        placed = place(ALL, {n.name: 100 for n in nodes})
        wait_for("owners as placed on three nodes", lambda: owners(nodes) == placed, 90)
        wait_for("every camera recorded by exactly one node", lambda: exactly_one(nodes), 30)
        by_node = {n.name: {c for c, o in placed.items() if o == n.name} for n in nodes}
        assert all(by_node.values()), f"rendezvous placed nothing on a node: {by_node}"
        for _ in range(10):  # steady: stays exactly one
            assert exactly_one(nodes), recorders(nodes)
            time.sleep(0.3)

        # One etcd member dies: nothing changes (owners, recorders).
        before = recorders(nodes)
        etcd_cluster.kill(0)
        end = time.monotonic() + LEASE_SECONDS + 3
        while time.monotonic() < end:
            assert recorders(nodes) == before
            time.sleep(0.3)
        assert owners(nodes) == placed

        # SIGKILL rec-3: its cameras are recorded elsewhere within lease_seconds + 5 s.
        victim = nodes[2]
        lost = by_node[victim.name]
        victim.kill()
        killed_at, killed_wall = time.monotonic(), time.time()
        took = wait_for(
            "the killed node's cameras recorded elsewhere",
            lambda: lost <= set(recorders(nodes)),
            LEASE_SECONDS + 5,
        )
        assert took <= LEASE_SECONDS + 5
        wait_for("every camera recorded by exactly one node after failover", lambda: exactly_one(nodes), 10)
        assert time.monotonic() - killed_at < 60
        camera = sorted(lost)[0]
        taker = recorders(nodes)[camera][0]
        third = next(n for n in nodes if n.name not in (victim.name, taker))

        # Its footage is reported unreachable while it is down, never "not recorded".
        out = csud("segments", "--config", str(third.config), "--camera", camera, "--json")
        assert out.returncode == 1 and f"node {victim.name} unreachable" in out.stderr
        assert victim.name not in {r["node"] for r in json.loads(out.stdout)}

        # rec-3 back: its cameras come back to it, the old owners let go once it has frames.
        restarted_ns = time.time_ns()
        victim.start()
        wait_for("rebalanced onto the restarted node", lambda: owners(nodes) == placed, 40)
        wait_for("each camera recorded once after the rebalance", lambda: exactly_one(nodes), 20)
        handovers = [
            e
            for n in nodes[:2]
            for e in n.log_events()
            if e.get("event") == "cluster_camera_handover"
            and datetime.fromisoformat(e["timestamp"]).timestamp() * 1e9 >= restarted_ns
        ]
        assert {e["camera"] for e in handovers} == lost
        assert all(e["to"] == victim.name for e in handovers)
        time.sleep(LEASE_SECONDS + 2)  # let a segment close on the new owner

        # From the third node: an extraction across the failover holds both nodes' footage.
        span_from = datetime.fromtimestamp(killed_wall - 5, UTC).isoformat()
        span_to = datetime.fromtimestamp(killed_wall + LEASE_SECONDS + 8, UTC).isoformat()
        out = csud(
            "extract", "--config", str(third.config), "--camera", camera, "--from", span_from,
            "--to", span_to, "--requisition", "PV-CLUSTER-1", "--officer", "OPJ Test",
            "--out", str(tmp_path / "out"),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        manifest = json.loads((tmp_path / "out" / "PV-CLUSTER-1" / "manifest.json").read_text())
        sources = {src["path"].split("/")[1] for src in manifest["clips"][0]["sources"]}
        assert sources == {victim.name, taker}, manifest["clips"][0]["sources"]
        public_key = str(tmp_path / "keys" / "public_key.pem")
        verified = csud("verify", str(tmp_path / "out" / "PV-CLUSTER-1"), "--public-key", public_key)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # A hold placed from one node protects the camera's footage on every node.
        held = csud(
            "hold", "add", "--config", str(third.config), "--camera", camera, "--from", span_from,
            "--to", span_to, "--requisition", "PV-CLUSTER-1", "--officer", "OPJ Test", "--reason", "enquête",
        )  # fmt: skip
        assert held.returncode == 0, held.stderr
        for node in nodes:
            holds = json.loads(csud("hold", "list", "--json", "--config", str(node.config)).stdout)
            assert [h["requisition"] for h in holds] == ["PV-CLUSTER-1"], (node.name, holds)
        # ... and released from another node, it is released on every node.
        local_id = json.loads(csud("hold", "list", "--json", "--config", str(victim.config)).stdout)[0]["id"]
        released = csud(
            "hold", "release", str(local_id), "--reason", "classement", "--config", str(victim.config)
        )
        assert released.returncode == 0, released.stderr
        for node in nodes:
            holds = json.loads(csud("hold", "list", "--json", "--config", str(node.config)).stdout)
            assert [h["status"] for h in holds] == ["released"], (node.name, holds)
        checked = csud("verify", "--archive", "--config", str(third.config))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for node in nodes:
            if node is not third:
                assert f"node {node.name}: checked " in checked.stdout, checked.stdout
        month = datetime.fromtimestamp(killed_wall, UTC).strftime("%Y-%m")
        by_third = ("--json", "--config", str(third.config))
        registre = csud("registre", "--commune", "metz", "--month", month, *by_third)
        assert registre.returncode == 0, registre.stderr
        rows = json.loads(registre.stdout)["recordings"]
        assert {r["node"] for r in rows if r["camera"] == camera} >= {victim.name, taker}
        listed = csud("segments", "--config", str(third.config), "--camera", camera, "--json")
        assert listed.returncode == 0, listed.stderr
        assert {r["node"] for r in json.loads(listed.stdout)} >= {victim.name, taker}
    finally:
        stop_all(nodes)

    # No gap at the handover (make-before-break): from the restart on, the segments of each moved
    # camera, whichever node wrote them, cover time without a hole (a frame interval of slack).
    for camera in lost:
        rows = sorted(
            (r for n in nodes for r in node_segments(n, camera) if r["end_ns"] > restarted_ns),
            key=lambda r: r["start_ns"],
        )
        assert {r["node"] for r in rows} >= {victim.name}, (camera, rows)
        covered_to = rows[0]["end_ns"]
        for row in rows[1:]:
            assert row["start_ns"] <= covered_to + GAP_SLACK_NS, (camera, row, covered_to)
            covered_to = max(covered_to, row["end_ns"])
        assert all(r["fence"] and r["fence"] > 0 for r in rows), "every row carries a fencing token"


def test_a_node_cut_off_from_etcd_stops_and_another_takes_over(
    tmp_path: Path, etcd_cluster: EtcdCluster, sim_port: int
) -> None:
    proxy_port = free_port()
    target = etcd_cluster.members[1].client_port
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster.tcp_proxy", str(proxy_port), str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nodes = make_nodes(tmp_path, etcd_cluster.endpoints, sim_port, CAMERAS, ["rec-1", "rec-2"])
    nodes += make_nodes(tmp_path, [f"http://127.0.0.1:{proxy_port}"], sim_port, CAMERAS, ["rec-3"])
    cut = nodes[2]
    try:
        wait_port(proxy_port)
        for node in nodes:
            node.start()
        placed = place(ALL, {n.name: 100 for n in nodes})
        wait_for("owners as placed on three nodes", lambda: owners(nodes) == placed, 90)
        wait_for("every camera recorded by exactly one node", lambda: exactly_one(nodes), 30)
        mine = {c for c, o in placed.items() if o == cut.name}
        assert mine and mine <= cut.recording()

        proxy.send_signal(signal.SIGSTOP)  # rec-3's only way to etcd now hangs (no RST)
        took = wait_for("the cut-off node stops recording", lambda: not cut.running(), LEASE_SECONDS + 1, 0.1)
        assert took <= LEASE_SECONDS + 0.5  # polling slack
        assert cut.alive()
        wait_for(
            "its cameras recorded by another node",
            lambda: mine <= set(recorders(nodes[:2])),
            LEASE_SECONDS + 5,
        )
        wait_for("each camera once, by the two connected nodes", lambda: exactly_one(nodes), 10)
        assert "cluster_lease_lost" in {e.get("event") for e in cut.log_events()}
        # The metrics agree (they follow etcd within a tick): two members, every camera owned
        # once, none unassigned.
        wait_for(
            "the metrics to agree", lambda: cluster_metrics(nodes[:2]) == (2, 0, dict.fromkeys(ALL, 1.0)), 5
        )
    finally:
        proxy.send_signal(signal.SIGCONT)
        stop_all(nodes)
        proxy.terminate()
        proxy.wait(10)
