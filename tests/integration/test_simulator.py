"""The camera simulator over real loopback sockets, driven by a hand-written RTSP client.

The client is deliberately raw (bytes in, bytes out) so that these tests check the
simulator's wire behaviour, not a client library's tolerance; one test also drives it with
aiortsp, the library the daemon's session uses, for Digest auth.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import pytest

from csud.media.h264 import NAL_PPS, NAL_SPS, H264Depacketizer
from csud.media.rtp import build_receiver_report, parse_header, parse_rtcp
from csud.media.units import AccessUnit, Gap, StreamReset
from csud.sim.rtsp import InterleavedFrame, MalformedRequest, Request, RequestReader, digest_response
from csud.sim.server import SimOptions, SimServer, serve

pytestmark = pytest.mark.integration

WIDTH, HEIGHT, BITRATE, FPS = 320, 240, 500_000, 25
TS_STEP = 90_000 // FPS
STEP_TIMEOUT = 5.0


@pytest.fixture(scope="session")
def clip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clip-cache")


def small_options(clip_cache: Path, **overrides: object) -> SimOptions:
    options = SimOptions(
        cameras=2,
        port=0,
        fps=FPS,
        bitrate=BITRATE,
        width=WIDTH,
        height=HEIGHT,
        clip_cache_dir=clip_cache,
        sr_interval=0.5,
    )
    for name, value in overrides.items():
        setattr(options, name, value)
    return options


@contextlib.asynccontextmanager
async def running(options: SimOptions) -> AsyncIterator[SimServer]:
    server = await asyncio.wait_for(serve(options), 30)
    try:
        yield server
    finally:
        await asyncio.wait_for(server.close(), 5)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        return self.headers[name.lower()]


@dataclass
class RawClient:
    """RTSP by hand: requests out, responses and interleaved frames in."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    base: str
    cseq: int = 0
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)

    @classmethod
    async def connect(cls, server: SimServer, camera: str = "cam1") -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer, f"rtsp://127.0.0.1:{server.port}/{camera}")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()

    async def send(
        self, method: str, url: str | None = None, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        self.cseq += 1
        lines = [f"{method} {url or self.base} RTSP/1.0", f"CSeq: {self.cseq}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def read_item(self) -> Response | tuple[int, bytes]:
        first = await self.reader.readexactly(1)
        if first == b"$":
            head = await self.reader.readexactly(3)
            data = await self.reader.readexactly(int.from_bytes(head[1:3], "big"))
            return head[0], data
        raw = first + await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode().split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "RTSP/1.0"
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Response(int(status), headers, body)

    async def response(self) -> Response:
        """The next response; interleaved frames before it are kept in ``frames``."""
        while True:
            item = await asyncio.wait_for(self.read_item(), STEP_TIMEOUT)
            if isinstance(item, Response):
                return item
            self.frames.append(item)
            self.received_at.append(time.monotonic())

    async def request(
        self, method: str, url: str | None = None, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        await self.send(method, url, headers, body)
        response = await self.response()
        if "cseq" in response.headers:
            assert response.header("cseq") == str(self.cseq)
        return response

    async def receive_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = await asyncio.wait_for(self.read_item(), left)
            except TimeoutError:
                return
            assert not isinstance(item, Response), f"unexpected response {item}"
            self.frames.append(item)
            self.received_at.append(time.monotonic())

    async def play(self, channels: str = "0-1", extra: dict[str, str] | None = None) -> tuple[str, Response]:
        setup = await self.request(
            "SETUP",
            self.base + "/trackID=0",
            {"Transport": f"RTP/AVP/TCP;unicast;interleaved={channels}", **(extra or {})},
        )
        assert setup.status == 200, setup
        session = setup.header("session").split(";")[0]
        play = await self.request(
            "PLAY", self.base + "/", {"Session": session, "Range": "npt=0-", **(extra or {})}
        )
        assert play.status == 200, play
        return session, play


def depacketize(
    frames: list[tuple[int, bytes]], channel: int = 0, sprop: tuple[bytes, ...] = ()
) -> list[AccessUnit | Gap | StreamReset]:
    depacketizer = H264Depacketizer()
    for ch, data in frames:
        if ch == channel:
            depacketizer.feed(data)
    return list(depacketizer.take_events())


def sprop_from_sdp(sdp: str) -> tuple[bytes, bytes]:
    fmtp = next(line for line in sdp.split("\r\n") if line.startswith("a=fmtp:96 "))
    params = dict(p.split("=", 1) for p in fmtp.split(" ", 1)[1].split(";"))
    sps_b64, pps_b64 = params["sprop-parameter-sets"].split(",")
    return base64.b64decode(sps_b64), base64.b64decode(pps_b64)


# --- the happy path ----------------------------------------------------------------------


async def test_play_stream_rtcp_keepalive_teardown(clip_cache: Path) -> None:
    async with running(small_options(clip_cache, play_from_keyframe=True)) as server:
        client = await RawClient.connect(server)
        options = await client.request("OPTIONS")
        assert options.status == 200
        assert options.header("public") == "OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN"

        describe = await client.request("DESCRIBE", headers={"Accept": "application/sdp"})
        assert describe.status == 200
        assert describe.header("content-type") == "application/sdp"
        assert describe.header("content-base") == f"rtsp://127.0.0.1:{server.port}/cam1/"
        sdp = describe.body.decode()
        assert "m=video 0 RTP/AVP 96\r\n" in sdp
        assert "a=rtpmap:96 H264/90000\r\n" in sdp
        assert "a=control:trackID=0\r\n" in sdp
        assert "a=range:npt=0-\r\n" in sdp
        assert "packetization-mode=1" in sdp
        sps, pps = sprop_from_sdp(sdp)
        assert sps[0] & 0x1F == NAL_SPS and pps[0] & 0x1F == NAL_PPS
        assert f"profile-level-id={sps[1:4].hex().upper()}" in sdp

        setup = await client.request(
            "SETUP", client.base + "/trackID=0", {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1"}
        )
        assert setup.status == 200
        assert "interleaved=0-1" in setup.header("transport")
        session, _, timeout = setup.header("session").partition(";")
        assert timeout == "timeout=60"
        play = await client.request("PLAY", client.base + "/", {"Session": session, "Range": "npt=0-"})
        assert play.status == 200
        rtp_info = dict(p.split("=", 1) for p in play.header("rtp-info").split(";"))
        assert rtp_info["url"] == client.base + "/trackID=0"

        await client.receive_for(2.0)
        keepalive = await client.request("GET_PARAMETER", client.base + "/", {"Session": session})
        assert keepalive.status == 200
        await client.receive_for(0.3)

        rtp = [data for ch, data in client.frames if ch == 0]
        rtcp = [data for ch, data in client.frames if ch == 1]
        first = parse_header(rtp[0])
        assert first[1] == int(rtp_info["seq"]) and first[2] == int(rtp_info["rtptime"])
        seqs = [parse_header(p)[1] for p in rtp]
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
        ssrc = first[3]

        events = depacketize(client.frames, sprop=(sps, pps))
        units = [e for e in events if isinstance(e, AccessUnit)]
        assert not [e for e in events if not isinstance(e, AccessUnit)]
        assert 25 <= len(units) <= 62  # 2.3 s at 25 fps, less up to 1 s waiting for a keyframe
        assert units[0].keyframe
        assert units[0].nals[0][0] & 0x1F == NAL_SPS  # in-band parameter sets by default
        steps = {(b.rtp_timestamp - a.rtp_timestamp) % 2**32 for a, b in itertools.pairwise(units)}
        assert steps == {TS_STEP}
        assert sum(u.keyframe for u in units) >= 2  # GOP of one second

        reports = [sr for data in rtcp for sr in parse_rtcp(data)]
        assert len(reports) >= 3  # sr_interval 0.5 s
        assert all(sr.ssrc == ssrc for sr in reports)
        assert abs(reports[-1].unix_ns - time.time_ns()) < 2 * 10**9
        by_ts = {u.rtp_timestamp for u in units}
        assert all(sr.rtp_timestamp in by_ts for sr in reports)
        # The wall clock advances with the RTP clock between reports (90 kHz, no drift).
        a, b = reports[0], reports[-1]
        assert (
            abs((b.unix_ns - a.unix_ns) / 1e9 - ((b.rtp_timestamp - a.rtp_timestamp) % 2**32) / 90_000) < 0.05
        )

        teardown = await client.request("TEARDOWN", client.base + "/", {"Session": session})
        assert teardown.status == 200
        before = len(client.frames)
        assert await asyncio.wait_for(client.reader.read(), STEP_TIMEOUT) == b""  # closed, nothing after
        assert len(client.frames) == before

        stats = server.stats()["cameras"]["cam1"]
        assert stats["sessions_total"] == 1 and stats["sessions_active"] == 0
        assert stats["frames_sent"] == len(units) == stats["frames_sent_from_first_keyframe"]
        assert stats["packets_sent"] == len(rtp)
        assert stats["frames_dropped"] == 0
        assert stats["sessions"][0]["first_frame_keyframe"] is True
        assert stats["sessions"][0]["frames_before_first_keyframe"] == 0
        assert server.stats()["cameras"]["cam2"]["frames_sent"] == 0
        await client.close()


async def test_decode_received_stream_and_exact_frame_counts(clip_cache: Path) -> None:
    """A session starts wherever its camera is in the clip; the stats say where the first
    keyframe was, and every access unit received from it on decodes."""
    async with running(small_options(clip_cache)) as server:
        client = await RawClient.connect(server, "cam2")
        describe = await client.request("DESCRIBE")
        assert sprop_from_sdp(describe.body.decode())
        session, _ = await client.play(channels="4-5")
        await client.receive_for(2.2)
        await client.request("TEARDOWN", client.base, {"Session": session})
        await client.close()

        assert {ch for ch, _ in client.frames} == {4, 5}
        depacketizer = H264Depacketizer()
        for ch, data in client.frames:
            if ch == 4:
                depacketizer.feed(data)
        units = [e for e in depacketizer.take_events() if isinstance(e, AccessUnit)]
        first_key = next(i for i, u in enumerate(units) if u.keyframe)

        stats = server.stats()["cameras"]["cam2"]
        record = stats["sessions"][-1]
        assert record["frames_sent"] == stats["frames_sent"]
        assert record["frames_before_first_keyframe"] is not None
        # The depacketizer may drop leading P-frames it cannot start on; never a keyframe.
        assert len(units) - first_key == stats["frames_sent_from_first_keyframe"]
        assert (
            stats["frames_sent"] - stats["frames_sent_from_first_keyframe"]
            == record["frames_before_first_keyframe"]
        )

        codec = av.CodecContext.create("h264", "r")
        decoded = 0
        stream = b"".join(u.annexb() for u in units[first_key:])
        for packet in codec.parse(stream) + codec.parse(None):
            decoded += len(codec.decode(packet))
        decoded += len(codec.decode(None))
        assert decoded == len(units) - first_key
        assert decoded >= 25  # 2.2 s, less up to 1 s before the first keyframe


async def test_without_inband_parameter_sets(clip_cache: Path) -> None:
    async with running(
        small_options(clip_cache, inband_parameter_sets=False, play_from_keyframe=True)
    ) as server:
        client = await RawClient.connect(server)
        sps, pps = sprop_from_sdp((await client.request("DESCRIBE")).body.decode())
        await client.play()
        await client.receive_for(1.2)
        await client.close()
    units = [e for e in depacketize(client.frames, sprop=(sps, pps)) if isinstance(e, AccessUnit)]
    assert units[0].keyframe
    assert not any(n[0] & 0x1F in (NAL_SPS, NAL_PPS) for u in units for n in u.nals)
    codec = av.CodecContext.create("h264", "r")
    stream = b"".join(u.annexb([sps, pps] if u.keyframe else None) for u in units)
    frames = [f for p in codec.parse(stream) + codec.parse(None) for f in codec.decode(p)]
    frames += codec.decode(None)
    assert len(frames) == len(units)


async def test_two_sessions_are_independent(clip_cache: Path) -> None:
    async with running(small_options(clip_cache)) as server:
        a = await RawClient.connect(server, "cam1")
        b = await RawClient.connect(server, "cam1")
        await a.play()
        await b.play()
        await asyncio.gather(a.receive_for(0.6), b.receive_for(0.6))
        ssrc_a = parse_header(next(d for ch, d in a.frames if ch == 0))[3]
        ssrc_b = parse_header(next(d for ch, d in b.frames if ch == 0))[3]
        assert ssrc_a != ssrc_b
        assert server.stats()["cameras"]["cam1"]["sessions_active"] == 2
        await a.close()
        await b.close()


# --- errors and hostile input ------------------------------------------------------------


async def test_status_codes(clip_cache: Path) -> None:
    async with running(small_options(clip_cache)) as server:
        client = await RawClient.connect(server)
        port = server.port
        assert (await client.request("DESCRIBE", f"rtsp://127.0.0.1:{port}/cam99")).status == 404
        assert (await client.request("DESCRIBE", f"rtsp://127.0.0.1:{port}/cam0")).status == 404
        assert (await client.request("DESCRIBE", f"rtsp://127.0.0.1:{port}/other")).status == 404
        assert (await client.request("PLAY", client.base)).status == 455  # no SETUP
        assert (await client.request("PLAY", client.base, {"Session": "nope"})).status == 454
        assert (await client.request("TEARDOWN", client.base, {"Session": "nope"})).status == 454
        # UDP without client ports (e.g. multicast) is not offered.
        udp = await client.request("SETUP", client.base + "/trackID=0", {"Transport": "RTP/AVP;multicast"})
        assert udp.status == 461
        assert (
            await client.request("SETUP", client.base + "/trackID=9", {"Transport": "RTP/AVP/TCP"})
        ).status == 404
        assert (await client.request("SETUP", client.base + "/trackID=0")).status == 400  # no Transport
        assert (await client.request("PAUSE", client.base)).status == 501
        assert (await client.request("OPTIONS", "*")).status == 200
        # No CSeq: 400, and the connection still works.
        client.writer.write(f"OPTIONS {client.base} RTSP/1.0\r\n\r\n".encode())
        assert (await client.response()).status == 400
        # Server picks channels when the client does not ask.
        setup = await client.request(
            "SETUP", client.base + "/trackID=0", {"Transport": "RTP/AVP/TCP;unicast"}
        )
        assert setup.status == 200 and "interleaved=0-1" in setup.header("transport")
        session = setup.header("session").split(";")[0]
        assert (await client.request("PLAY", client.base, {"Session": session})).status == 200
        again = await client.request(
            "SETUP",
            client.base + "/trackID=0",
            {"Transport": "RTP/AVP/TCP;interleaved=0-1", "Session": session},
        )
        assert again.status == 455  # no re-SETUP while playing
        await client.close()


async def test_pipelined_partial_and_body_requests(clip_cache: Path) -> None:
    async with running(small_options(clip_cache)) as server:
        client = await RawClient.connect(server)
        base = client.base
        pipelined = (
            f"OPTIONS {base} RTSP/1.0\r\nCSeq: 1\r\n\r\n"
            f"GET_PARAMETER {base} RTSP/1.0\r\nCSeq: 2\r\nContent-Type: text/parameters\r\n"
            f"Content-Length: 8\r\n\r\nuptime\r\n"
            f"\r\nDESCRIBE {base} RTSP/1.0\r\nCSeq: 3\r\n\r\n"
        ).encode()
        for i in range(len(pipelined)):  # one byte at a time
            client.writer.write(pipelined[i : i + 1])
            if i % 16 == 0:
                await client.writer.drain()
                await asyncio.sleep(0)
        responses = [await client.response() for _ in range(3)]
        assert [r.header("cseq") for r in responses] == ["1", "2", "3"]
        assert [r.status for r in responses] == [200, 200, 200]
        assert responses[2].body.startswith(b"v=0")
        await client.close()


async def test_garbage_closes_only_that_connection(clip_cache: Path) -> None:
    async with running(small_options(clip_cache)) as server:
        good = await RawClient.connect(server)
        await good.play()
        await good.receive_for(0.3)
        for garbage in (
            b"\x00\xff\x17binary junk\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"OPTIONS\r\n\r\n",
            b"PLAY rtsp://x RTSP/1.0\r\nCSeq: 1\r\nContent-Length: -1\r\n\r\n",
            b"A" * 20_000,
        ):
            bad = await RawClient.connect(server)
            bad.writer.write(garbage)
            data = await asyncio.wait_for(bad.reader.read(), STEP_TIMEOUT)
            assert data.startswith(b"RTSP/1.0 400 ") or data == b"", data[:40]
            await bad.close()
        before = len(good.frames)
        await good.receive_for(0.5)
        assert len(good.frames) > before + 5  # still streaming
        events = depacketize(good.frames)
        assert not [e for e in events if isinstance(e, Gap | StreamReset)]
        assert server.stats()["malformed_connections"] == 5
        await good.close()


async def test_client_rtcp_is_counted_and_session_times_out(clip_cache: Path) -> None:
    async with running(small_options(clip_cache, session_timeout=1.0)) as server:
        kept = await RawClient.connect(server, "cam1")
        lost = await RawClient.connect(server, "cam2")
        session, _ = await kept.play()
        await lost.play()
        rr = build_receiver_report(0x1234)
        for _ in range(3):
            kept.writer.write(b"$\x01" + len(rr).to_bytes(2, "big") + rr)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # keep one session alive, let the other expire
            await kept.receive_for(0.4)
            assert (await kept.request("GET_PARAMETER", kept.base, {"Session": session})).status == 200
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await asyncio.wait_for(lost.read_item(), STEP_TIMEOUT)  # drains until EOF
        stats = server.stats()
        assert stats["sessions_timed_out"] == 1
        assert stats["cameras"]["cam1"]["sessions_active"] == 1
        assert stats["cameras"]["cam1"]["rtcp_received"] == 3
        assert stats["cameras"]["cam2"]["sessions_active"] == 0
        await kept.close()
        await lost.close()


async def test_slow_client_frames_are_dropped_not_buffered(clip_cache: Path) -> None:
    options = small_options(clip_cache, cameras=1, max_write_buffer=32 * 1024, socket_send_buffer=8192)
    async with running(options) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        client = RawClient(reader, writer, f"rtsp://127.0.0.1:{server.port}/cam1")
        await client.play()
        transport = client.writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()  # not reading any more
        await asyncio.sleep(2.0)
        stats = server.stats()["cameras"]["cam1"]
        assert stats["frames_dropped"] > 0
        assert stats["frames_sent"] + stats["frames_dropped"] >= 45
        await client.close()
    # close() returned promptly although the client never read: bounded shutdown.


# --- authentication -----------------------------------------------------------------------


def _digest_params(header: str) -> dict[str, str]:
    return {
        k.strip(): v.strip('"') for k, v in (p.split("=", 1) for p in header[len("Digest ") :].split(", "))
    }


async def test_digest_auth(clip_cache: Path) -> None:
    async with running(small_options(clip_cache, username="op", password="s3cret!")) as server:
        client = await RawClient.connect(server)
        assert (await client.request("OPTIONS")).status == 200  # OPTIONS needs no credentials
        denied = await client.request("DESCRIBE")
        assert denied.status == 401
        challenge = denied.header("www-authenticate")
        assert challenge.startswith('Digest realm="csud-sim", nonce="')
        nonce = _digest_params(challenge)["nonce"]

        def authorization(password: str, method: str = "DESCRIBE", qop: bool = False) -> str:
            uri = client.base
            if qop:
                response = digest_response(
                    "op", password, "csud-sim", nonce, method, uri, "auth", "00000001", "c0ffee"
                )
                return (
                    f'Digest username="op", realm="csud-sim", nonce="{nonce}", uri="{uri}", '
                    f'response="{response}", qop=auth, nc=00000001, cnonce="c0ffee"'
                )
            response = digest_response("op", password, "csud-sim", nonce, method, uri)
            return (
                f'Digest username="op", realm="csud-sim", nonce="{nonce}", uri="{uri}", response="{response}"'
            )

        assert (
            await client.request("DESCRIBE", headers={"Authorization": authorization("s3cret!")})
        ).status == 200
        ok_qop = await client.request(
            "DESCRIBE", headers={"Authorization": authorization("s3cret!", qop=True)}
        )
        assert ok_qop.status == 200
        wrong = await client.request("DESCRIBE", headers={"Authorization": authorization("guess")})
        assert wrong.status == 401
        # A response computed for another method does not replay.
        replay = await client.request("DESCRIBE", headers={"Authorization": authorization("s3cret!", "PLAY")})
        assert replay.status == 401
        stranger = await client.request(
            "DESCRIBE", headers={"Authorization": authorization("s3cret!").replace(nonce, "0" * 32)}
        )
        assert stranger.status == 401
        assert server.stats()["auth_failures"] == 3
        await client.close()


async def test_digest_auth_with_aiortsp(clip_cache: Path) -> None:
    from aiortsp.rtsp.connection import RTSPConnection
    from aiortsp.rtsp.errors import RTSPResponseError

    async with running(
        small_options(clip_cache, username="op", password="s3cret!", digest_qop=True)
    ) as server:
        url = f"rtsp://127.0.0.1:{server.port}/cam1"
        async with RTSPConnection("127.0.0.1", server.port, "op", "s3cret!", accept_auth=["digest"]) as conn:
            response = await conn.send_request("DESCRIBE", url, {"Accept": "application/sdp"})
            assert response.status == 200
            assert "sprop-parameter-sets=" in response.content
        async with RTSPConnection("127.0.0.1", server.port, "op", "wrong", accept_auth=["digest"]) as conn:
            with pytest.raises(RTSPResponseError) as excinfo:
                await conn.send_request("DESCRIBE", url)
            assert excinfo.value.response.status == 401


async def test_basic_auth(clip_cache: Path) -> None:
    async with running(small_options(clip_cache, username="op", password="pw", auth="basic")) as server:
        client = await RawClient.connect(server)
        denied = await client.request("DESCRIBE")
        assert denied.status == 401 and denied.header("www-authenticate") == 'Basic realm="csud-sim"'
        good = base64.b64encode(b"op:pw").decode()
        bad = base64.b64encode(b"op:nope").decode()
        assert (await client.request("DESCRIBE", headers={"Authorization": f"Basic {good}"})).status == 200
        assert (await client.request("DESCRIBE", headers={"Authorization": f"Basic {bad}"})).status == 401
        await client.close()


# --- stats file and the command line ------------------------------------------------------


async def test_stats_file(clip_cache: Path, tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    async with running(small_options(clip_cache, stats_file=stats_file, stats_interval=0.2)) as server:
        client = await RawClient.connect(server)
        await client.play()
        await client.receive_for(0.6)
        on_disk = json.loads(stats_file.read_text())
        assert on_disk["cameras"]["cam1"]["sessions_active"] == 1
        await client.close()
    final = json.loads(stats_file.read_text())
    assert final["cameras"]["cam1"]["sessions_active"] == 0
    assert final["cameras"]["cam1"]["frames_sent"] > 0
    assert set(final["totals"]) >= {
        "frames_sent",
        "frames_sent_from_first_keyframe",
        "bytes_sent",
        "packets_sent",
        "frames_dropped",
        "sessions_total",
    }
    assert not list(tmp_path.glob("*.tmp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_main_exits_on_sigterm_and_after_duration(clip_cache: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CSUD_SIM_CACHE_DIR": str(clip_cache), "CSUD_SIM_PASSWORD": "hunter2"}
    port = _free_port()
    args = [
        "--cameras",
        "1",
        "--port",
        str(port),
        "--width",
        "320",
        "--height",
        "240",
        "--bitrate",
        "500000",
        "--username",
        "op",
        "--stats-file",
        str(tmp_path / "s.json"),
    ]
    code = f"import sys; from csud.sim.cli import main; sys.exit(main({args!r}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert proc.stdout is not None
        line = b""
        deadline = time.monotonic() + 10
        while f"rtsp://127.0.0.1:{port}/cam1".encode() not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:  # served by uvloop
            sock.sendall(b"OPTIONS * RTSP/1.0\r\nCSeq: 7\r\n\r\n")
            assert sock.recv(4096).startswith(b"RTSP/1.0 200 OK\r\nCSeq: 7\r\n")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert b"hunter2" not in line + out
        assert json.loads((tmp_path / "s.json").read_text())["port"] == port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    started = time.monotonic()
    quick = [*args[:-2], "--duration", "0.5"]
    code = f"import sys; from csud.sim.cli import main; sys.exit(main({quick!r}))"
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=15).returncode == 0
    )
    assert time.monotonic() - started < 10
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from csud.sim.cli import main; sys.exit(main(['--cameras', '0']))",
        ],
        env=env,
        capture_output=True,
        timeout=15,
    )
    assert bad.returncode == 2


# --- the request reader, byte by byte ------------------------------------------------------


def test_request_reader_whole_and_byte_by_byte() -> None:
    rr = b"\x80\xc9\x00\x01\x00\x00\x12\x34"
    stream = (
        b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n\r\n"
        + b"$\x01"
        + len(rr).to_bytes(2, "big")
        + rr
        + b"SET_PARAMETER rtsp://h/cam1 RTSP/1.0\r\nCSeq: 2\r\nContent-Length: 5\r\n\r\nhello"
    )
    whole = RequestReader().feed(stream)
    reader = RequestReader()
    pieces: list[Request | InterleavedFrame] = []
    for i in range(len(stream)):
        pieces += reader.feed(stream[i : i + 1])
    for items in (whole, pieces):
        assert len(items) == 3
        assert (
            isinstance(items[0], Request) and items[0].method == "OPTIONS" and items[0].header("CSeq") == "1"
        )
        assert items[1] == InterleavedFrame(1, rr)
        assert isinstance(items[2], Request) and items[2].body == b"hello"
    assert reader.buffered == 0


@pytest.mark.parametrize(
    "data",
    [
        b"\x00abc",
        b"options * RTSP/1.0\r\n\r\n",
        b"OPTIONS *\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nNoColon\r\n\r\n",
        b"OPTIONS * RTSP/1.0\r\nContent-Length: x\r\n\r\n",
        b"OPTIONS \xff RTSP/1.0\r\n\r\n",
        b"A" * 20_000,
    ],
)
def test_request_reader_rejects_garbage(data: bytes) -> None:
    with pytest.raises(MalformedRequest):
        RequestReader().feed(data)
