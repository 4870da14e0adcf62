"""The live server against clients that misbehave: one that never reads, one that talks, hundreds of
tabs, a journal that fails, sessions piling up. In-process over real loopback sockets, with the
fixtures of test_live_web."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from csud.errors import StorageError
from csud.live import web
from csud.live.fanout import VIEWER_QUEUE_MAX_BYTES, VIEWER_QUEUE_MAX_ITEMS
from tests.integration.test_live_web import Live, frames, journal, live, login, play

__all__ = ["live"]  # the fixture, imported


async def _ended(live: Live, count: int = 1, timeout: float = 8.0) -> list[object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = journal(live, "live_view_ended")
        if len(entries) >= count:
            return entries
        await asyncio.sleep(0.05)
    raise AssertionError("no live_view_ended in time")


async def _raw_stream(live: Live, raw: socket.socket, cookie: str) -> None:
    """Open /live/metz-1 on ``raw`` by hand (a client that then never reads or never answers)
    and wait until the server holds the view."""
    raw.sendall(
        (
            f"GET /live/metz-1 HTTP/1.1\r\nHost: {live.http.host}:{live.http.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nCookie: {web.COOKIE}={cookie}\r\n\r\n"
        ).encode()
    )
    for _ in range(100):
        if live.server.views:
            return
        await asyncio.sleep(0.02)


async def test_a_client_that_never_reads_costs_a_bounded_buffer_and_is_dropped(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "WS_HEARTBEAT_SECONDS", 1.0)  # no pong within 0.5 s after a ping: dropped
    monkeypatch.setattr(web, "SEND_HIGH_WATER_BYTES", 64 * 1024)
    s = await login(live, "alice")
    cookie = next(c.value for c in s.cookie_jar if c.key == web.COOKIE)
    await s.close()
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read a byte
    raw.connect((live.http.host, live.http.port))
    await _raw_stream(live, raw, cookie)
    try:
        (view,) = live.server.views
        transport = view.viewer.sink.__self__.transport  # type: ignore[union-attr]
        aus, params = frames(50)
        biggest = max(map(len, (b"".join(au.nals) for au in aus))) + 1024
        started = time.monotonic()
        for _ in range(12):  # 600 frames, far more than the queue and the socket can hold
            await play(live, "metz-1", aus, params)
            assert view.viewer.queued_bytes <= VIEWER_QUEUE_MAX_BYTES
            assert len(view.viewer._items) <= VIEWER_QUEUE_MAX_ITEMS
            assert transport.get_write_buffer_size() <= web.SEND_HIGH_WATER_BYTES + biggest
        assert time.monotonic() - started < 5  # recording never waited for this viewer
        assert view.viewer.skipped_total > 0
        (ended,) = await _ended(live)
        assert ended.reason == "client_unresponsive"  # type: ignore[attr-defined]
        assert transport.is_closing() and transport.get_write_buffer_size() == 0  # aborted, freed
        assert not live.server.views
    finally:
        raw.close()


async def test_closing_a_silent_clients_stream_waits_for_no_reply(live: Live) -> None:
    """Stopping the server (or withdrawing a right) closes a stream whose client never answers
    the close frame within WS_CLOSE_TIMEOUT_SECONDS, not aiohttp's default 10 s."""
    s = await login(live, "alice")
    cookie = next(c.value for c in s.cookie_jar if c.key == web.COOKIE)
    await s.close()
    raw = socket.create_connection((live.http.host, live.http.port))
    await _raw_stream(live, raw, cookie)
    try:
        (view,) = live.server.views
        started = time.monotonic()
        view.viewer.close("server_stopping")  # what LiveServer.close does to every view
        (ended,) = await _ended(live, timeout=12)
        assert time.monotonic() - started < web.WS_CLOSE_TIMEOUT_SECONDS + 1.5
        assert ended.reason == "server_stopping"  # type: ignore[attr-defined]
    finally:
        raw.close()


async def test_a_viewer_that_sends_data_is_closed_1008(live: Live) -> None:
    s = await login(live, "alice")
    async with s:
        ws = await s.ws_connect(live.ws_url("metz-1"))
        await ws.send_str("x" * 100)
        msg = await asyncio.wait_for(ws.receive(), 3)
        while msg.type == aiohttp.WSMsgType.TEXT:
            msg = await asyncio.wait_for(ws.receive(), 3)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == web.WS_CLOSE_POLICY
    (ended,) = await _ended(live)
    assert ended.reason == "client_sent_data"  # type: ignore[attr-defined]


async def test_hundreds_of_tabs_are_capped_per_operator(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web, "MAX_VIEWS_PER_OPERATOR", 3)
    alice, bob = await login(live, "alice"), await login(live, "bob")
    async with alice, bob:
        opened = await asyncio.gather(
            *(alice.ws_connect(live.ws_url("metz-1")) for _ in range(6)), return_exceptions=True
        )
        ok = [w for w in opened if isinstance(w, aiohttp.ClientWebSocketResponse)]
        refused = [e for e in opened if isinstance(e, aiohttp.WSServerHandshakeError)]
        assert len(ok) == 3 and len(refused) == 3  # even when opened all at once
        assert {e.status for e in refused} == {429}
        other = await bob.ws_connect(live.ws_url("woippy-1"))  # another operator is not affected
        await ok[0].close()
        await _ended(live)
        again = await alice.ws_connect(live.ws_url("metz-2"))  # a closed tab frees its place
        for w in [*ok[1:], other, again]:
            await w.close()
    assert not journal(live, "live_view_refused")  # capacity is logged, not journaled


async def test_a_view_that_cannot_be_journaled_does_not_start(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise StorageError("index: disk I/O error")

    monkeypatch.setattr(live.index, "append_journal", fail)
    s = await login(live, "alice")
    async with s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(live.ws_url("metz-1"))
    assert refused.value.status == 503
    assert not live.server.views and not live.server.feed("metz-1").viewers


async def test_sessions_are_bounded_per_operator_and_purged_when_expired(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web, "MAX_SESSIONS_PER_OPERATOR", 2)
    sessions = [await login(live, "alice") for _ in range(3)]
    try:
        assert len(live.server.sessions) == 2
        statuses = []
        for s in sessions:
            async with s.get(live.url("/api/cameras")) as r:
                statuses.append(r.status)
        assert statuses == [401, 200, 200]  # the oldest was ended
        live.clock[0] += 10 * 60 + 1  # session_minutes = 10; nobody asks again
        for _ in range(60):  # the recheck loop purges them (every RECHECK_SECONDS)
            if not live.server.sessions:
                break
            await asyncio.sleep(0.05)
        assert live.server.sessions == {}
    finally:
        for s in sessions:
            await s.close()
