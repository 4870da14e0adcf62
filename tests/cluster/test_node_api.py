"""The node API (csud.cluster.api): HMAC of the shared secret, segments and bytes of one store."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import aiohttp
import pytest

from csud.cluster.api import AUTH_HEADER, NodeApi, check, sign
from csud.cluster.client import NodeClient, NodeUnreachable
from csud.recording.writer import FragmentInfo, SegmentInfo
from csud.store.index import Index
from tests.cluster.etcd_local import free_port

SECRET = b"0123456789abcdef0123456789abcdef"


def test_signature_binds_method_path_and_time() -> None:
    now = 1_800_000_000.0
    header = sign(SECRET, "GET", "/v1/segments?camera=a", now)
    assert check(SECRET, header, "GET", "/v1/segments?camera=a", now + 5)
    assert not check(SECRET, header, "GET", "/v1/segments?camera=b", now)
    assert not check(SECRET, header, "POST", "/v1/segments?camera=a", now)
    assert not check(b"another secret of some length", header, "GET", "/v1/segments?camera=a", now)
    assert not check(SECRET, header, "GET", "/v1/segments?camera=a", now + 3600)  # replay later
    assert not check(SECRET, "garbage", "GET", "/", now)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "metz" / "cam1").mkdir(parents=True)
    data = b"\x00\x00\x00\x08ftypmoof-bytes-of-a-segment" * 100
    (root / "metz/cam1/seg.mp4").write_bytes(data)
    index = Index.create(root / "index.sqlite3")
    info = SegmentInfo(
        "metz/cam1/seg.mp4",
        10,
        20,
        len(data),
        5,
        hashlib.sha256(data).hexdigest(),
        (FragmentInfo(10, 0, 40, 5),),
    )
    sid = index.add_segment("cam1", "metz", info, 30)
    index.set_segment_fence(sid, "rec-2", 77)
    index.close()
    return root


async def test_segments_fragments_and_file_over_authenticated_http(store: Path, tmp_path: Path) -> None:
    api = NodeApi("rec-2", store, SECRET)
    port = free_port()
    await api.start("127.0.0.1", port)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/v1/segments?camera=cam1") as resp:
                assert resp.status == 401  # no signature
            bad = {
                AUTH_HEADER: sign(
                    b"wrong-secret-wrong-secret", "GET", "/v1/segments?camera=cam1", time.time()
                )
            }
            async with session.get(f"http://127.0.0.1:{port}/v1/segments?camera=cam1", headers=bad) as resp:
                assert resp.status == 401
            client = NodeClient("rec-2", f"http://127.0.0.1:{port}", SECRET, session)
            rows = await client.segments("cam1", 0, 100)
            assert [(r["path"], r["node"], r["fence"]) for r in rows] == [("metz/cam1/seg.mp4", "rec-2", 77)]
            assert await client.segments("cam1", 20, 100) == []  # [from, to) overlap only
            assert await client.fragments(rows[0]["id"]) == [
                {"start_ns": 10, "offset": 0, "size": 40, "frames": 5}
            ]
            await client.download(rows[0]["id"], tmp_path / "copy.mp4")
            assert hashlib.sha256((tmp_path / "copy.mp4").read_bytes()).hexdigest() == rows[0]["sha256"]
            hold = {
                "cameras": ["cam1"], "from_ns": 5, "to_ns": 25, "requisition": "PV 1", "officer": "OPJ",
                "reason": "enquête", "until_ns": None, "actor": "alice",
            }  # fmt: skip
            hold_id = await client.add_hold(hold)
            index = Index.open(store / "index.sqlite3", readonly=True)
            try:
                placed = index.hold(hold_id)
                assert placed is not None and placed.cameras == ("cam1",) and placed.created_by == "alice"
                assert placed.requisition == "PV 1" and (placed.from_ns, placed.to_ns) == (5, 25)
            finally:
                index.close()
            release = {
                "requisition": "PV 1", "from_ns": 5, "to_ns": 25, "cameras": ["cam1"],
                "created_ns": placed.created_ns, "reason": "classement", "actor": "bob",
            }  # fmt: skip
            assert await client.release_hold({**release, "created_ns": 1}) == []  # another hold
            assert await client.release_hold(release) == [hold_id]
            assert await client.release_hold(release) == []  # already released
            wrong = NodeClient("rec-2", f"http://127.0.0.1:{port}", b"x" * 32, session)
            with pytest.raises(NodeUnreachable, match="node rec-2 unreachable"):
                await wrong.segments("cam1", None, None)
    finally:
        await api.close()
    async with aiohttp.ClientSession() as session:
        gone = NodeClient("rec-2", f"http://127.0.0.1:{port}", SECRET, session)
        with pytest.raises(NodeUnreachable, match="node rec-2 unreachable"):
            await gone.segments("cam1", None, None)
