"""Property tests: bytes from a camera never escape csud's RTSP handling as anything but
``StreamError``, and its buffers stay bounded.

- ``LeanConnection.data_received`` (the TCP path of every camera: interleaved ``$`` frames and
  RTSP messages through aiortsp's parser) with arbitrary bytes cut at arbitrary places: no
  exception leaves it; a fatal input resolves the connection's ``result`` with ``StreamError``;
  the demultiplexer holds at most one frame or message.
- The SDP of a DESCRIBE answer, read as ``RtspSession.start`` reads it (``parse_description``,
  csud's own parser, then ``stream_description``, inside ``rtsp_errors``): only ``StreamError``
  comes out, and what comes out is an H.264/H.265 description.
Kept to a few seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csud.errors import StreamError
from csud.rtsp.aiortsp_adapter import LeanConnection, rtsp_errors
from csud.rtsp.client import parse_description, stream_description
from csud.rtsp.interleave import INTERLEAVED_HEADER_SIZE, MAX_MESSAGE_BYTES

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_BUFFERED = 2 * MAX_MESSAGE_BYTES + 0xFFFF + INTERLEAVED_HEADER_SIZE  # header + body, or one frame


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@pytest.fixture(scope="module", autouse=True)
def event_loop_for_futures() -> Iterator[None]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


def new_connection(frames: list[tuple[int, int]]) -> LeanConnection:
    conn = LeanConnection(
        "127.0.0.1", 554, "user", "pass", on_packet=lambda ch, buf, s, e: frames.append((ch, e - s))
    )
    conn.connection_made(FakeTransport())
    return conn


RTSP_ISH = st.sampled_from(
    [
        b"RTSP/1.0 200 OK\r\nCSeq: 1\r\n\r\n",
        b'RTSP/1.0 401 Unauthorized\r\nCSeq: 2\r\nWWW-Authenticate: Digest realm="x", nonce="y"\r\n\r\n',
        b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nContent-Length: 5\r\n\r\nv=0\r\n",
        b"RTSP/1.0 200 OK\r\nContent-Length: -3\r\n\r\n",
        b"RTSP/1.0 200 OK\r\nContent-Length: 99999999\r\n\r\n",
        b"GET_PARAMETER rtsp://x RTSP/1.0\r\nCSeq: 9\r\n\r\n",
        b"$\x00\x00\x0c\x80\x60\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01",
        b"$\x01\xff\xff",
        b"RTSP/1.0 abc\r\n\r\n",
        b"\r\n\r\n",
    ]
)
STREAM = st.lists(RTSP_ISH | st.binary(max_size=200), max_size=12).map(b"".join)


@FAST
@given(STREAM, st.lists(st.integers(1, 64), max_size=20))
def test_data_received_only_fails_with_stream_error(data: bytes, cuts: list[int]) -> None:
    frames: list[tuple[int, int]] = []
    conn = new_connection(frames)
    pos = 0
    for cut in [*cuts, len(data)]:
        conn.data_received(data[pos : pos + cut])  # must never raise
        pos += cut
        assert conn.demux.buffered <= MAX_BUFFERED
        if pos >= len(data):
            break
    if conn.result.done():
        assert isinstance(conn.result.exception(), StreamError)
    assert all(0 <= length <= 0xFFFF for _, length in frames)


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(100, 5000))
def test_an_endless_header_is_refused_not_buffered(pattern: bytes, chunk: int) -> None:
    pattern = pattern.replace(b"$", b"x").replace(b"\r", b"x")
    data = b"RTSP/1.0 200 OK\r\n" + pattern * (2 * MAX_MESSAGE_BYTES // len(pattern))
    conn = new_connection([])
    for pos in range(0, len(data), chunk):
        conn.data_received(data[pos : pos + chunk])
        assert conn.demux.buffered <= MAX_BUFFERED
    assert conn.demux.buffered <= MAX_BUFFERED
    assert conn.result.done() and isinstance(conn.result.exception(), StreamError)


SDP_LINES = st.sampled_from(
    [
        "v=0",
        "v=1",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=x",
        "c=IN IP4 0.0.0.0",
        "t=0 0",
        "m=video 0 RTP/AVP 96",
        "m=video",
        "m=audio 0 RTP/AVP 0",
        "a=rtpmap:96 H264/90000",
        "a=rtpmap:96 H265/90000",
        "a=rtpmap:96",
        "a=rtpmap:x H264/abc",
        "a=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z0IAHqtA,aM4=",
        "a=fmtp:96 sprop-parameter-sets=!!!",
        "a=fmtp:96 sprop-vps=QAE=;sprop-sps=QgE=;sprop-pps=RAE=",
        "a=fmtp:96",
        "a=control:trackID=0",
        "b=AS:5000",
        "x",
        "",
    ]
)


@FAST
@given(st.lists(SDP_LINES | st.text(max_size=30), max_size=14), st.sampled_from([0, 60, 1, -5]))
def test_describe_of_any_sdp_is_a_stream_description_or_a_stream_error(
    lines: list[str], timeout: int
) -> None:
    text = "\r\n".join(lines)
    try:
        with rtsp_errors("camera"):
            description = stream_description(parse_description(text), timeout)
    except StreamError:
        return
    assert description.encoding in ("H264", "H265") and description.session_timeout_seconds >= 1
    assert 0 <= description.payload_type <= 127 and description.clock_rate > 0
