"""The live-viewing server in-process over real loopback sockets: every refusal, the stream, the journal.

A fake monotonic clock drives session expiry; frames come from libx264 (tests.media) through the
same ``frame_sink`` the recorder calls. The daemon-level path (simulator -> recorder -> wall in
Chromium) is tests/browser/test_wall.py.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiohttp.test_utils import TestServer

from csud.config import Settings, parse_settings
from csud.live.web import LOGIN_MAX_FAILURES, LiveServer
from csud.media.h264 import NAL_PPS, NAL_SPS
from csud.store.index import Index
from csud.store.operators import Operators, hash_password
from tests.media import encode

PASSWORD = "correct horse battery"
COMMUNES = [
    {"id": "metz", "name": "Metz", "service": "live", "retention_days": 15},
    {"id": "woippy", "name": "Woippy", "service": "live", "retention_days": 15},
    {"id": "ars", "name": "Ars-sur-Moselle", "service": "storage", "retention_days": 15},
]
CAMERAS = [
    {"id": "metz-1", "commune": "metz", "url": "rtsp://127.0.0.1:1/a", "name": "Gare"},
    {"id": "metz-2", "commune": "metz", "url": "rtsp://127.0.0.1:1/b"},
    {"id": "woippy-1", "commune": "woippy", "url": "rtsp://127.0.0.1:1/c"},
    {"id": "ars-1", "commune": "ars", "url": "rtsp://127.0.0.1:1/d"},
]


def settings(tmp: Path, communes: list[dict[str, Any]] = COMMUNES) -> Settings:
    return parse_settings(
        {
            "storage": {"root": str(tmp)},
            "web": {"listen": "127.0.0.1:0", "session_minutes": 10},
            "communes": communes,
            "cameras": CAMERAS,
        }
    )


@dataclass
class Live:
    server: LiveServer
    http: TestServer
    index: Index
    clock: list[float]

    def url(self, path: str) -> str:
        return str(self.http.make_url(path))

    def ws_url(self, camera: str) -> str:
        return self.url(f"/live/{camera}").replace("http://", "ws://")


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    index = Index.create(tmp_path / "index.sqlite3")
    ops = Operators(index)
    hashed = hash_password(PASSWORD)
    for op_id, communes in (("alice", ["metz"]), ("bob", ["woippy"]), ("carol", ["metz", "ars"])):
        ops.add(op_id, op_id.title(), communes, hashed, now_ns=time.time_ns(), actor="test")
    clock = [1000.0]
    server = LiveServer(settings(tmp_path), index, lambda cid: True, monotonic=lambda: clock[0])
    http = TestServer(server.app(), host="127.0.0.1")
    await http.start_server()
    recheck = asyncio.create_task(server._recheck_loop())
    try:
        yield Live(server, http, index, clock)
    finally:
        recheck.cancel()
        for view in list(server.views):
            view.viewer.close("test_end")
        await http.close()
        index.close()


async def login(live: Live, user: str, password: str = PASSWORD) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with session.post(
        live.url("/login"), data={"username": user, "password": password}, allow_redirects=False
    ) as r:
        assert r.status == 303, await r.text()
    return session


def frames(count: int = 50) -> tuple[list[Any], list[bytes]]:
    aus = encode(count, gop=25)
    params = [next(n for n in aus[0].nals if n[0] & 0x1F == t) for t in (NAL_SPS, NAL_PPS)]
    return aus, params


async def play(live: Live, camera: str, aus: list[Any], params: list[bytes], period: float = 0.0) -> None:
    sink = live.server.frame_sink(camera)
    for au in aus:
        sink(au, "h264", params, time.time_ns())
        await asyncio.sleep(period)


def journal(live: Live, kind: str) -> list[Any]:
    return live.index.journal_entries(kind=kind)


async def test_login_sets_a_strict_httponly_cookie_and_wrong_password_is_401(live: Live) -> None:
    async with aiohttp.ClientSession() as s:
        form = {"username": "alice", "password": PASSWORD}
        async with s.post(live.url("/login"), data=form, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/"
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
        async with s.post(live.url("/login"), data={"username": "alice", "password": "nope"}) as r:
            assert r.status == 401
        async with s.post(live.url("/login"), data={"username": "nobody", "password": "nope"}) as r:
            assert r.status == 401


async def test_login_attempts_are_rate_limited(live: Live) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(LOGIN_MAX_FAILURES):
            async with s.post(live.url("/login"), data={"username": "bob", "password": "x"}) as r:
                assert r.status == 401
        async with s.post(live.url("/login"), data={"username": "bob", "password": PASSWORD}) as r:
            assert r.status == 429  # even the right password, until the window passes
    live.clock[0] += 61
    await (await login(live, "bob")).close()


async def test_camera_list_is_the_operators_live_cameras_only(live: Live) -> None:
    async with aiohttp.ClientSession() as anon, anon.get(live.url("/api/cameras")) as r:
        assert r.status == 401
    s = await login(live, "carol")  # metz and ars (storage): ars is never listed
    async with s, s.get(live.url("/api/cameras")) as r:
        cams = await r.json()
    assert [c["id"] for c in cams] == ["metz-1", "metz-2"]
    assert cams[0] == {"id": "metz-1", "name": "Gare", "commune": "Metz", "up": True}


async def test_websocket_refusals_401_403_and_journal(live: Live) -> None:
    async with aiohttp.ClientSession() as anon:
        with pytest.raises(aiohttp.WSServerHandshakeError) as no_session:
            await anon.ws_connect(live.ws_url("metz-1"))
    assert no_session.value.status == 401
    s = await login(live, "carol")
    async with s:
        for camera in ("woippy-1", "ars-1"):  # another commune; a storage commune on her account
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await s.ws_connect(live.ws_url(camera))
            assert refused.value.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as cross:
            await s.ws_connect(live.ws_url("metz-1"), origin="http://evil.example")
        assert cross.value.status == 403
    refusals = journal(live, "live_view_refused")
    assert [(e.camera, e.commune, e.reason) for e in refusals] == [
        ("woippy-1", "woippy", "commune_not_authorised"),
        ("ars-1", "ars", "storage_commune"),
    ]
    assert refusals[0].actor == "operator:carol" and refusals[0].details["client"] == "127.0.0.1"


async def test_stream_starts_at_keyframe_decodes_and_is_journaled(live: Live) -> None:
    aus, params = frames(50)
    await play(live, "metz-1", aus[:30], params)  # keyframes at 0 and 25: the kept GOP is 25..29
    s = await login(live, "alice")
    received: list[bytes] = []
    events: list[dict[str, Any]] = []
    async with s:
        ws = await s.ws_connect(live.ws_url("metz-1"), origin=live.url("/").rstrip("/"))
        await play(live, "metz-1", aus[30:], params)
        while len(received) < 1 + 25:
            msg = await asyncio.wait_for(ws.receive(), 5)
            if msg.type == aiohttp.WSMsgType.BINARY:
                received.append(msg.data)
            else:
                events.append(msg.json())
        assert live.server.views and next(iter(live.server.views)).operator == "alice"
        await ws.close()
    assert received[0][4:8] == b"ftyp" and events[0]["type"] == "init"
    assert events[0]["codec"].startswith("avc1.")
    with av.open(io.BytesIO(b"".join(received)), format="mp4") as c:
        decoded = list(c.decode(video=0))
    assert len(decoded) == 25 and decoded[0].key_frame
    for _ in range(50):
        if journal(live, "live_view_ended"):
            break
        await asyncio.sleep(0.05)
    (started,) = journal(live, "live_view_started")
    (ended,) = journal(live, "live_view_ended")
    assert (started.camera, started.commune, started.details["operator"]) == ("metz-1", "metz", "alice")
    assert ended.details["bytes"] >= sum(map(len, received))  # and the JSON events
    assert ended.details["client"] == "127.0.0.1" and ended.details["duration_seconds"] >= 0


async def _watch_until_closed(live: Live, user: str, camera: str, act: Any) -> tuple[float, dict[str, Any]]:
    """Open a stream, run ``act``, return (seconds until the server closed it, its last event)."""
    s = await login(live, user)
    async with s:
        ws = await s.ws_connect(live.ws_url(camera))
        aus, params = frames(5)
        await play(live, camera, aus, params)
        await act()
        started = time.monotonic()
        last: dict[str, Any] = {}
        while True:
            msg = await asyncio.wait_for(ws.receive(), 3)
            if msg.type == aiohttp.WSMsgType.TEXT:
                last = msg.json()
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                break
        assert ws.close_code == 4403
        return time.monotonic() - started, last


async def test_disabled_operator_stream_closes_within_a_second(live: Live) -> None:
    async def disable() -> None:
        await asyncio.to_thread(Operators(live.index).disable, "alice", now_ns=time.time_ns(), actor="test")

    seconds, last = await _watch_until_closed(live, "alice", "metz-1", disable)
    assert seconds < 1.0 and last == {"type": "closed", "reason": "operator_disabled"}
    form = {"username": "alice", "password": PASSWORD}
    async with aiohttp.ClientSession() as s, s.post(live.url("/login"), data=form) as r:
        assert r.status == 401  # and she cannot log in again
    for _ in range(50):
        if journal(live, "live_view_ended"):
            break
        await asyncio.sleep(0.05)
    assert journal(live, "live_view_ended")[0].reason == "operator_disabled"


async def test_right_withdrawn_on_reload_closes_the_stream(live: Live, tmp_path: Path) -> None:
    async def reload() -> None:  # metz becomes a storage-only commune
        communes = [dict(c, service="storage") if c["id"] == "metz" else c for c in COMMUNES]
        live.server.update_settings(settings(tmp_path, communes))

    seconds, last = await _watch_until_closed(live, "alice", "metz-2", reload)
    assert seconds < 1.0 and last == {"type": "closed", "reason": "storage_commune"}
    s = await login(live, "alice")
    async with s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(live.ws_url("metz-2"))
        assert refused.value.status == 403


async def test_expired_session_closes_the_stream_and_is_refused(live: Live) -> None:
    async def expire() -> None:
        live.clock[0] += 10 * 60 + 1  # session_minutes = 10

    seconds, last = await _watch_until_closed(live, "alice", "metz-1", expire)
    assert seconds < 1.0 and last == {"type": "closed", "reason": "session_expired"}
