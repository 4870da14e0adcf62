"""The pure parts of the RTSP session (csud.rtsp.client): SETUP's Session header, the stream
description taken from csud's SDP parser, and the URL requests are sent to."""

from __future__ import annotations

import pytest

from csud.errors import StreamError
from csud.rtsp.client import (
    DEFAULT_SESSION_TIMEOUT_SECONDS,
    _request_url,
    parse_description,
    parse_session_header,
    stream_description,
)

SDP = (
    "v=0\r\ns=cam\r\na=control:*\r\nm=audio 0 RTP/AVP 0\r\n"
    "m=video 0 RTP/AVP 98\r\na=rtpmap:98 H265/90000\r\n"
    "a=fmtp:98 sprop-vps=QAE=;sprop-sps=QgE=;sprop-pps=RAE=;sprop-max-don-diff=0\r\na=control:track2\r\n"
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("12345678;timeout=60", ("12345678", 60)),
        ("ab12 ; timeout = 2", ("ab12", 2)),
        ("ab12", ("ab12", DEFAULT_SESSION_TIMEOUT_SECONDS)),
        ("ab12;timeout=2.5", ("ab12", 2)),
        ("ab12;timeout=0", ("ab12", DEFAULT_SESSION_TIMEOUT_SECONDS)),
        ("ab12;timeout=soon", ("ab12", DEFAULT_SESSION_TIMEOUT_SECONDS)),
        ("ab12;Timeout=30;other=1", ("ab12", 30)),
    ],
)
def test_session_header(header: str, expected: tuple[str, int]) -> None:
    assert parse_session_header(header) == expected


@pytest.mark.parametrize("header", ["", " ;timeout=60"])
def test_setup_without_a_session_id_is_a_stream_error(header: str) -> None:
    with pytest.raises(StreamError, match="no Session header"):
        parse_session_header(header)


def test_stream_description_is_the_first_recordable_video() -> None:
    description = stream_description(parse_description(SDP), 30)
    assert (description.encoding, description.payload_type, description.clock_rate) == ("H265", 98, 90000)
    assert description.parameter_sets == (b"\x40\x01", b"\x42\x01", b"\x44\x01")  # VPS, SPS, PPS
    assert description.fmtp["sprop-max-don-diff"] == "0"
    assert description.session_timeout_seconds == 30
    assert stream_description(parse_description(SDP), 0).session_timeout_seconds == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("v=0\r\nm=video 0 RTP/AVP 26\r\n", "SDP has no video media"),  # MJPEG: not recorded
        (
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 sprop-parameter-sets=!\r\n",
            "bad base64",
        ),
        ("<html>", "bad SDP line 1"),
    ],
)
def test_unusable_sdp_is_a_stream_error(body: str, reason: str) -> None:
    with pytest.raises(StreamError, match=f"^the camera's SDP is unusable: {reason}"):
        parse_description(body)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://10.0.0.1:554/stream1", "rtsp://10.0.0.1:554/stream1"),
        ("rtsp://user:secret@10.0.0.1/s?x=1", "rtsp://10.0.0.1/s?x=1"),
        ("rtsps://cam/s", "rtsps://cam/s"),
        ("http://cam/s", "rtsp://cam/s"),
        ("rtsp://[::1]:8554/cam1", "rtsp://[::1]:8554/cam1"),
    ],
)
def test_request_url_never_carries_credentials(url: str, expected: str) -> None:
    assert _request_url(url) == expected
