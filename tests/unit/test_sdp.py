"""SDP parsing and control URL resolution (csud.rtsp.sdp)."""

from __future__ import annotations

import base64

import pytest

from csud.media.h264 import parse_sps
from csud.rtsp.sdp import parse_sdp, resolve_control

SPS = bytes.fromhex("6742c01fda014016e840000003004000000ca3c60ca8")
PPS = bytes.fromhex("68ce3c80")
B64 = f"{base64.b64encode(SPS).decode()},{base64.b64encode(PPS).decode()}"

# What a typical IP camera (and GStreamer's rtsp-server) answers to DESCRIBE.
CAMERA_SDP = f"""v=0\r
o=- 1109162014219182 1 IN IP4 10.20.0.11\r
s=Media Presentation\r
e=NONE\r
b=AS:5050\r
t=0 0\r
a=control:rtsp://10.20.0.11:554/stream1/\r
m=video 0 RTP/AVP 96\r
c=IN IP4 0.0.0.0\r
b=AS:5000\r
a=recvonly\r
a=x-dimensions:1280,720\r
a=control:trackID=1\r
a=rtpmap:96 H264/90000\r
a=fmtp:96 profile-level-id=42C01F; packetization-mode=1; sprop-parameter-sets={B64}\r
m=audio 0 RTP/AVP 0\r
a=control:trackID=2\r
m=application 0 RTP/AVP 107\r
a=control:trackID=3\r
a=rtpmap:107 vnd.onvif.metadata/90000\r
"""

H265_FMTP = (
    "sprop-vps=QAEMAf//AWAAAAMAkAAAAwAAAwBdlZgJ;"
    "sprop-sps=QgEBAWAAAAMAkAAAAwAAAwBdoAKAgC0WWVmkkyvAQAAA+kAAF3AC;"
    "sprop-pps=RAHBc9GJ"
)
H265_SDP = f"""v=0
s=Session streamed with GStreamer
m=video 0 RTP/AVP 98
a=rtpmap:98 H265/90000
a=fmtp:98 {H265_FMTP}
a=control:stream=0
"""


def test_camera_sdp() -> None:
    sdp = parse_sdp(CAMERA_SDP)
    assert sdp.session_name == "Media Presentation"
    assert sdp.control == "rtsp://10.20.0.11:554/stream1/"
    assert [(m.media, m.payload_type, m.encoding_name, m.clock_rate, m.control) for m in sdp.media] == [
        ("video", 96, "H264", 90000, "trackID=1"),
        ("audio", 0, "PCMU", 8000, "trackID=2"),
        ("application", 107, "VND.ONVIF.METADATA", 90000, "trackID=3"),
    ]
    video = sdp.video
    assert video.fmtp == {
        "profile-level-id": "42C01F",
        "packetization-mode": "1",
        "sprop-parameter-sets": B64,
    }
    assert video.sprop_parameter_sets == [SPS, PPS]
    assert video.parameter_sets == [SPS, PPS]
    assert parse_sps(video.sprop_parameter_sets[0]).height == 720
    assert resolve_control(sdp.control, video.control) == "rtsp://10.20.0.11:554/stream1/trackID=1"


def test_h265_sdp() -> None:
    video = parse_sdp(H265_SDP).video
    assert (video.encoding_name, video.payload_type, video.control) == ("H265", 98, "stream=0")
    assert [len(video.sprop_vps[0]), len(video.sprop_sps[0]), len(video.sprop_pps[0])] == [24, 39, 6]
    assert [n[0] >> 1 & 0x3F for n in video.parameter_sets] == [32, 33, 34]  # VPS, SPS, PPS NAL types
    assert video.sprop_parameter_sets == []


@pytest.mark.parametrize(
    ("fmtp", "expected"),
    [
        ("sprop-parameter-sets=Z0LAH9oBQBboQAAAAwBAAAAMo8YMqA,aM48gA", [SPS, PPS]),  # unpadded
        ("sprop-parameter-sets= Z0LAH9oBQBboQAAAAwBAAAAMo8YMqA== , ;", [SPS]),
        ("packetization-mode=1", []),
        ("", []),
    ],
)
def test_sprop_parameter_sets_variants(fmtp: str, expected: list[bytes]) -> None:
    sdp = parse_sdp(f"v=0\nm=video 0 RTP/AVP 96\na=rtpmap:96 h264/90000\na=fmtp:96 {fmtp}\n")
    assert sdp.video.encoding_name == "H264"
    assert sdp.video.sprop_parameter_sets == expected


def test_rtpmap_of_other_payload_types_is_ignored() -> None:
    sdp = parse_sdp(
        "m=video 0 RTP/AVP 97 96\na=rtpmap:96 H265/90000\na=rtpmap:97 H264/90000/1\n"
        "a=fmtp:96 sprop-parameter-sets=!!!\n"
    )
    assert (sdp.video.payload_type, sdp.video.encoding_name, sdp.video.encoding_params) == (97, "H264", "1")
    assert sdp.video.fmtp == {}


MALFORMED = [
    ("v=0\ns=x\n", "SDP has no video media"),
    ("m=audio 0 RTP/AVP 0\n", "SDP has no video media"),
    ("m=video 0 RTP/AVP 26\n", "SDP has no video media"),  # JPEG: not recorded
    ("m=video 0 RTP/AVP 96\n", "SDP has no video media"),  # no rtpmap: unknown encoding
    ("v=0\ngarbage\n", "bad SDP line 2: 'garbage'"),
    ("=x\n", "bad SDP line 1: '=x'"),
    ("m=video\n", "bad media line 1: 'video'"),
    ("m=video 0 RTP/AVP x\n", "bad media line 1: 'video 0 RTP/AVP x'"),
    ("m=video 0 RTP/AVP 128\n", "bad media line 1: 'video 0 RTP/AVP 128'"),
    ("m=video 0 RTP/AVP 96\na=rtpmap:96 H264\n", "bad rtpmap attribute: '96 H264'"),
    ("m=video 0 RTP/AVP 96\na=rtpmap:96 H264/abc\n", "bad rtpmap attribute: '96 H264/abc'"),
    ("m=video 0 RTP/AVP 96\na=rtpmap:96 H264/0\n", "bad rtpmap attribute: '96 H264/0'"),
    ("m=video 0 RTP/AVP 96\na=rtpmap:x H264/90000\n", "bad rtpmap attribute: 'x H264/90000'"),
    ("m=video 0 RTP/AVP 96\na=fmtp:x a=b\n", "bad fmtp attribute: 'x a=b'"),
    (
        "m=video 0 RTP/AVP 96\na=rtpmap:96 H264/90000\na=fmtp:96 sprop-parameter-sets=Z0LA,a$b\n",
        "bad base64 in sprop-parameter-sets: 'a$b'",
    ),
    (
        "m=video 0 RTP/AVP 96\na=rtpmap:96 H264/90000\na=fmtp:96 sprop-parameter-sets=Z\n",
        "bad base64 in sprop-parameter-sets: 'Z'",
    ),
    (
        "m=video 0 RTP/AVP 96\na=rtpmap:96 H265/90000\na=fmtp:96 sprop-pps=%%\n",
        "bad base64 in sprop-pps: '%%'",
    ),
]


@pytest.mark.parametrize(("text", "message"), MALFORMED)
def test_parse_sdp_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_sdp(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("base", "control", "expected"),
    [
        ("rtsp://cam/stream1", None, "rtsp://cam/stream1"),
        ("rtsp://cam/stream1", "", "rtsp://cam/stream1"),
        ("rtsp://cam/stream1", "*", "rtsp://cam/stream1"),
        ("rtsp://cam/stream1", "trackID=1", "rtsp://cam/stream1/trackID=1"),
        ("rtsp://cam/stream1/", "trackID=1", "rtsp://cam/stream1/trackID=1"),
        ("rtsp://cam:554/a/b?x=1", "track1", "rtsp://cam:554/a/b?x=1/track1"),
        ("rtsp://cam:554/a/b", "/other/track", "rtsp://cam:554/other/track"),
        ("rtsp://cam/stream1", "rtsp://10.0.0.2/x/trackID=0", "rtsp://10.0.0.2/x/trackID=0"),
        ("rtsp://u:p@cam/s", "stream=0", "rtsp://u:p@cam/s/stream=0"),
    ],
)
def test_resolve_control(base: str, control: str | None, expected: str) -> None:
    assert resolve_control(base, control) == expected


def test_resolve_control_needs_an_absolute_base_and_never_echoes_it() -> None:
    with pytest.raises(ValueError) as info:
        resolve_control("stream1?password=secret", "trackID=1")
    assert str(info.value) == "base URL is not absolute"


def test_malformed_format_lines_of_tracks_not_recorded_are_ignored() -> None:
    """Audio and metadata tracks are not recorded: a camera's oddities there cost no footage."""
    sdp = parse_sdp(
        "m=video 0 RTP/AVP 96\na=rtpmap:96 H264/90000\n"
        "m=audio 0 RTP/AVP 97\na=rtpmap:97 MPEG4-GENERIC\na=fmtp:x whatever\n"
        "m=application 0 RTP/AVP 107\na=rtpmap:vnd.onvif.metadata/90000\n"
    )
    assert [(m.media, m.encoding_name) for m in sdp.media] == [
        ("video", "H264"),
        ("audio", ""),
        ("application", ""),
    ]
