"""Live viewing and holds through any node (issue 14): 2 csud nodes on a real 3-member etcd,
3 simulated cameras (cam1, cam2 in the ``live`` commune woippy; cam3 in the storage commune metz).

- ``/api/cameras`` on either node lists both live cameras, up, wherever they are recorded;
- a WebSocket to one node for a camera the other node records gets the init segment and
  fragments that decode (PyAV), relayed from the owner; the view is journaled once, on the node
  the operator is connected to;
- a camera of a storage commune is refused (403) on either node;
- ``hold list`` on one node shows a hold placed from the other, with both nodes' copies; with a
  node down it names that node and exits 1.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest

from csud.cluster.placement import place
from csud.store.index import Index
from tests.cluster.etcd_local import EtcdCluster, free_port
from tests.cluster.harness import CSUD, Node, cluster_status, wait_for, write_node_config
from tests.integration.helpers import simulator

pytestmark = pytest.mark.integration

CAMERAS = 3
LIVE = {"cam1", "cam2"}
PASSWORD = "correct horse battery"


@pytest.fixture
def sim_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    with simulator(tmp_path, port, CAMERAS):
        yield port


def csud(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CSUD, *args], capture_output=True, text=True, timeout=120)


async def login(node: Node) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.post(
        f"http://127.0.0.1:{node.web_port}/login",
        data={"username": "alice", "password": PASSWORD},
        allow_redirects=False,
    ) as r:
        assert r.status == 303, await r.text()
    return session


async def cameras(session: aiohttp.ClientSession, node: Node) -> dict[str, bool]:
    async with session.get(f"http://127.0.0.1:{node.web_port}/api/cameras") as r:
        assert r.status == 200
        return {c["id"]: c["up"] for c in await r.json()}


async def watch(session: aiohttp.ClientSession, node: Node, camera: str, fragments: int) -> list[bytes]:
    """The binary messages of a view of ``camera`` through ``node``: init + ``fragments``."""
    received: list[bytes] = []
    async with session.ws_connect(f"ws://127.0.0.1:{node.web_port}/live/{camera}") as ws:
        while len(received) < 1 + fragments:
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT), msg
            if msg.type == aiohttp.WSMsgType.BINARY:
                received.append(msg.data)
    return received


async def refused(session: aiohttp.ClientSession, node: Node, camera: str) -> int:
    try:
        async with session.ws_connect(f"ws://127.0.0.1:{node.web_port}/live/{camera}"):
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


def journal(node: Node, kind: str) -> list[Any]:
    index = Index.open(node.tmp / node.name / "store" / "index.sqlite3", readonly=True)
    try:
        return index.journal_entries(kind=kind)
    finally:
        index.close()


def test_live_and_holds_through_any_node(tmp_path: Path, etcd_cluster: EtcdCluster, sim_port: int) -> None:
    nodes = []
    for name in ("rec-1", "rec-2"):
        web_port = free_port()
        path, mport, aport = write_node_config(
            tmp_path, name, etcd_cluster.endpoints, sim_port, CAMERAS, web_port=web_port, live_cameras=2
        )
        nodes.append(Node(name, path, mport, aport, tmp_path, web_port=web_port))
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    for node in nodes:  # operator accounts live in each node's index
        out = csud("operator", "add", "alice", "--name", "Alice", "--communes", "woippy",
                   "--password-file", str(secret), "--config", str(node.config))  # fmt: skip
        assert out.returncode == 0, out.stderr
    try:
        for node in nodes:
            node.start()
        by_name = {n.name: n for n in nodes}

        def owners() -> dict[str, str | None]:
            cams: dict[str, str | None] = cluster_status(nodes[0].config)["cameras"]
            return cams

        placed = place([f"cam{i}" for i in range(1, CAMERAS + 1)], {n.name: 100 for n in nodes})
        wait_for("owners as placed on both nodes (joins settled)", lambda: owners() == placed, 60)
        wait_for("every camera recorded", lambda: set().union(*(n.recording() for n in nodes)) >= LIVE, 30)
        owner_of = owners()
        camera = sorted(LIVE)[0]
        owner = by_name[str(owner_of[camera])]
        entry = next(n for n in nodes if n is not owner)  # the operator talks to the other node
        asyncio.run(_live_checks(nodes, entry, owner, camera))

        # Journaled once, on the node the operator talks to, naming the owner.
        started = [e for e in journal(entry, "live_view_started") if e.camera == camera]
        assert len(started) == 1 and started[0].details["node"] == owner.name, started
        assert not [e for e in journal(owner, "live_view_started") if e.camera == camera]
        assert [e for e in journal(entry, "live_view_refused") if e.camera == "cam3"]

        # A hold placed from one node is listed, with both copies, from the other.
        out = csud("hold", "add", "--config", str(owner.config), "--camera", camera,
                   "--from", "2024-01-01T00:00:00+01:00", "--to", "2024-01-02T00:00:00+01:00",
                   "--requisition", "PV-LIVE-1", "--officer", "OPJ", "--reason", "test")  # fmt: skip
        assert out.returncode == 0, out.stderr
        listed = csud("hold", "list", "--json", "--config", str(entry.config))
        assert listed.returncode == 0, listed.stderr
        (hold,) = json.loads(listed.stdout)
        assert hold["requisition"] == "PV-LIVE-1" and hold["status"] == "active"
        assert set(hold["nodes"]) == {"rec-1", "rec-2"} and hold["missing_on"] == []
        assert hold["id"] == hold["nodes"][entry.name]["id"]
        text = csud("hold", "list", "--config", str(entry.config))
        assert "rec-1#" in text.stdout and "rec-2#" in text.stdout, text.stdout

        owner.stop()  # its holds cannot be listed: it is named, exit 1, this node's still shown
        down = csud("hold", "list", "--json", "--config", str(entry.config))
        assert down.returncode == 1 and f"node {owner.name} unreachable" in down.stderr, down.stderr
        assert [h["requisition"] for h in json.loads(down.stdout)] == ["PV-LIVE-1"]
    finally:
        for node in nodes:
            node.stop()


async def _live_checks(nodes: list[Node], entry: Node, owner: Node, camera: str) -> None:
    sessions = [await login(n) for n in nodes]
    try:
        for session, node in zip(sessions, nodes, strict=True):  # every live camera, up, on any node
            for _ in range(50):
                listed = await cameras(session, node)
                if listed == dict.fromkeys(LIVE, True):
                    break
                await asyncio.sleep(0.2)
            assert listed == dict.fromkeys(LIVE, True), (node.name, listed)
        session = sessions[nodes.index(entry)]
        received = await watch(session, entry, camera, 30)  # relayed from the owner
        assert received[0][4:8] == b"ftyp"
        with av.open(io.BytesIO(b"".join(received)), format="mp4") as c:
            decoded = list(c.decode(video=0))
        assert len(decoded) >= 25 and decoded[0].key_frame
        for s, node in zip(sessions, nodes, strict=True):
            assert await refused(s, node, "cam3") == 403, node.name  # storage commune, any node
    finally:
        for s in sessions:
            await s.close()
