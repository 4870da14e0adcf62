"""InterleavedDemux: fed whole, then one byte at a time, the events must be the same."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csud.rtsp.interleave import InterleavedDemux


def frame(channel: int, payload: bytes) -> bytes:
    return bytes([0x24, channel]) + len(payload).to_bytes(2, "big") + payload


RESPONSE = b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nSession: 12345678\r\n\r\n"
DESCRIBE = (
    b"RTSP/1.0 200 OK\r\nCSeq: 2\r\nContent-Type: application/sdp\r\nContent-Length: 10\r\n\r\nv=0\r\ns=x\r\n"
)
SERVER_REQUEST = b"GET_PARAMETER rtsp://cam/ RTSP/1.0\r\nCSeq: 9\r\n\r\n"


def run(chunks: list[bytes]) -> tuple[list[tuple[str, int, bytes]], InterleavedDemux]:
    events: list[tuple[str, int, bytes]] = []
    demux = InterleavedDemux(
        on_binary=lambda ch, buf, a, b: events.append(("bin", ch, bytes(buf[a:b]))),
        on_message=lambda msg: events.append(("msg", -1, msg)),
    )
    for chunk in chunks:
        demux.feed(chunk)
    return events, demux


CASES = {
    "frames only": (
        frame(0, b"a" * 100) + frame(1, b"rtcp") + frame(0, b""),
        [("bin", 0, b"a" * 100), ("bin", 1, b"rtcp"), ("bin", 0, b"")],
    ),
    "response between frames": (
        frame(0, b"x") + RESPONSE + frame(0, b"y"),
        [("bin", 0, b"x"), ("msg", -1, RESPONSE), ("bin", 0, b"y")],
    ),
    "response with body": (DESCRIBE + frame(1, b"z"), [("msg", -1, DESCRIBE), ("bin", 1, b"z")]),
    "server request": (SERVER_REQUEST + frame(0, b"q"), [("msg", -1, SERVER_REQUEST), ("bin", 0, b"q")]),
    "max length frame": (frame(0, b"m" * 65535), [("bin", 0, b"m" * 65535)]),
}


@pytest.mark.parametrize("name", CASES)
def test_whole_and_byte_by_byte(name: str) -> None:
    data, expected = CASES[name]
    whole, demux = run([data])
    assert whole == expected
    assert demux.buffered == 0
    trickled, demux = run([data[i : i + 1] for i in range(len(data))])
    assert trickled == expected
    assert demux.buffered == 0


def test_garbage_is_skipped_to_next_frame_and_counted() -> None:
    events, demux = run([b"\x00\x01garbage" + frame(0, b"ok")])
    assert events == [("bin", 0, b"ok")]
    assert demux.garbage_bytes == 9


def test_truncated_frame_waits() -> None:
    events, demux = run([frame(0, b"x" * 10)[:-3]])
    assert events == []
    assert demux.buffered == 11


def test_oversized_header_is_refused() -> None:
    demux = InterleavedDemux(lambda *a: None, lambda m: None, max_message_bytes=64)
    with pytest.raises(ValueError, match="RTSP header longer than 64 bytes"):
        demux.feed(b"RTSP/1.0 200 OK\r\n" + b"X-Pad: " + b"a" * 100)


def test_bad_content_length_is_refused() -> None:
    demux = InterleavedDemux(lambda *a: None, lambda m: None)
    with pytest.raises(ValueError, match="bad Content-Length b'abc'"):
        demux.feed(b"RTSP/1.0 200 OK\r\nContent-Length: abc\r\n\r\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_only_raise_value_error(data: bytes, step: int) -> None:
    demux = InterleavedDemux(lambda *a: None, lambda m: None, max_message_bytes=512)
    try:
        for i in range(0, len(data), step):
            demux.feed(data[i : i + step])
    except ValueError:
        return
    # Whatever is held back is bounded by one frame or one message.
    assert demux.buffered <= max(65535 + 4, 512 + 65536)
