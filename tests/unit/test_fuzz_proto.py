"""Property tests: arbitrary input into the protocol parsers raises ValueError or nothing.

Kept to a few seconds in total; memory bounds are checked on the depacketizer's state.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csud.media.h264 import (
    MAX_AU_NALS,
    MAX_AU_SIZE,
    MAX_FU_FRAGMENTS,
    MAX_NAL_SIZE,
    H264Depacketizer,
    packetize_au,
    parse_sps,
    split_annexb,
)
from csud.media.rtp import RtpPacket, build_rtp, parse_header, parse_rtcp_packets
from csud.media.units import AccessUnit
from csud.rtsp.sdp import parse_sdp, resolve_control

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_value_errors(call: object, *args: object) -> None:
    assert callable(call)
    with contextlib.suppress(ValueError):
        call(*args)


@FAST
@given(st.binary(max_size=64), st.integers(-2, 70), st.integers(-2, 70) | st.none())
def test_parse_header_total(data: bytes, start: int, end: int | None) -> None:
    try:
        pt, _seq, _ts, _ssrc, _m, pstart, pend = parse_header(data, start, end)
    except ValueError:
        return
    stop = len(data) if end is None else end
    assert 0 <= pt <= 127
    assert start + 12 <= pstart <= pend <= stop
    assert bytes(RtpPacket.parse(data[start:stop])).startswith(data[start : start + 2])


@FAST
@given(st.binary(max_size=200))
def test_parse_rtcp_total(data: bytes) -> None:
    _only_value_errors(parse_rtcp_packets, data)


@FAST
@given(st.text(max_size=300))
def test_parse_sdp_total(text: str) -> None:
    _only_value_errors(parse_sdp, text)


@FAST
@given(
    st.lists(
        st.sampled_from(["v=0", "m=video 0 RTP/AVP 96", "a=rtpmap:96 H264/90000", "a=control:x"])
        | st.text(max_size=40)
    )
)
def test_parse_sdp_lines_total(lines: list[str]) -> None:
    _only_value_errors(parse_sdp, "\n".join(lines))


@FAST
@given(st.text(max_size=40), st.text(max_size=40) | st.none())
def test_resolve_control_total(base: str, control: str | None) -> None:
    _only_value_errors(resolve_control, base, control)


@FAST
@given(st.binary(max_size=64))
def test_parse_sps_and_split_annexb_total(data: bytes) -> None:
    _only_value_errors(parse_sps, b"\x67" + data)
    assert all(nal and nal[-1] != 0 for nal in split_annexb(data))


def _assert_bounded(d: H264Depacketizer) -> None:
    parts = d._fu_parts or []
    assert d._fu_size <= MAX_NAL_SIZE and len(parts) <= MAX_FU_FRAGMENTS + 1
    assert d._au_size + d._fu_size <= MAX_AU_SIZE and len(d._au_nals) <= MAX_AU_NALS
    assert d._au_size == sum(map(len, d._au_nals))


# Payloads biased towards the interesting headers: single NAL, STAP-A, FU-A and the refused types.
payloads = st.one_of(
    st.binary(max_size=40),
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=30)).map(
        lambda t: bytes(((t[0] & 0xE0) | (24, 28, 28, 5, 1, 25)[t[0] % 6], t[1])) + t[2]
    ),
)
packets = st.one_of(
    st.binary(max_size=60),
    st.tuples(
        st.integers(0, 127),
        st.integers(0, 0xFFFF),
        st.integers(0, 3),
        st.sampled_from([1, 2]),
        st.booleans(),
        payloads,
    ).map(lambda t: build_rtp(t[0], t[1], t[2], t[3], t[4], t[5])),
)


@FAST
@given(st.lists(packets, max_size=30))
def test_depacketizer_total_and_bounded(stream: list[bytes]) -> None:
    d = H264Depacketizer()
    for p in stream:
        with contextlib.suppress(ValueError):
            d.feed(p)
        _assert_bounded(d)
        for event in d.take_events():
            if isinstance(event, AccessUnit):
                assert event.nals and event.size == sum(map(len, event.nals))
                assert all(nal and 0 < nal[0] & 0x1F < 24 for nal in event.nals)
    assert d.packets == len(stream)


@FAST
@given(
    st.lists(st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=4), min_size=1, max_size=6),
    st.integers(3, 1500),
    st.booleans(),
    st.integers(0, 0xFFFF),
)
def test_round_trip_any_nals_after_a_keyframe(
    aus: list[list[bytes]], mtu: int, aggregate: bool, seq0: int
) -> None:
    # Types forced into 1..23 (not 5, so keyframe is only the first unit) and units preceded
    # by an AUD, so that each unit begins a picture whatever its slices look like.
    aus = [[b"\x09\xf0"] + [bytes(((n[0] & 0xE0) | (1 + n[0] % 4),)) + n[1:] for n in nals] for nals in aus]
    key = [b"\x67\x42\x00\x1e\xab", b"\x68\xce", b"\x65\x88\x84"]
    d = H264Depacketizer()
    seq = seq0
    for ts, nals in enumerate([key, *aus]):
        payloads_ = packetize_au(nals, mtu, aggregate)
        for i, payload in enumerate(payloads_):
            d.feed(build_rtp(96, seq, ts, 7, i == len(payloads_) - 1, payload))
            seq += 1
    events = list(d.take_events())
    assert events == [
        AccessUnit(ts, nals, ts == 0, sum(map(len, nals))) for ts, nals in enumerate([key, *aus])
    ]
