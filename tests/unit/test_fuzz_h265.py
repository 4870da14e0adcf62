"""Property tests for csud.media.h265: arbitrary input raises ValueError or nothing, state stays
bounded, and any NAL units survive packetize -> depacketize. Kept to a few seconds."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csud.media.h265 import (
    MAX_AU_NALS,
    MAX_AU_SIZE,
    MAX_FU_FRAGMENTS,
    MAX_NAL_SIZE,
    H265Depacketizer,
    nal_type,
    packetize_au,
    parse_sps,
)
from csud.media.rtp import build_rtp
from csud.media.units import AccessUnit

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=80))
def test_parse_sps_total(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        info = parse_sps(b"\x42\x01" + data)
        assert info.width > 0 and info.height > 0
        assert info.codec_string.startswith("hvc1.")


def _assert_bounded(d: H265Depacketizer) -> None:
    parts = d._fu_parts or []
    assert d._fu_size <= MAX_NAL_SIZE and len(parts) <= MAX_FU_FRAGMENTS + 1
    assert d._au_size + d._fu_size <= MAX_AU_SIZE and len(d._au_nals) <= MAX_AU_NALS
    assert d._au_size == sum(map(len, d._au_nals))


# Payloads biased towards the interesting headers: single NAL (slice, IRAP, VPS), AP, FU, PACI.
payloads = st.one_of(
    st.binary(max_size=40),
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=30)).map(
        lambda t: bytes(((t[0] & 0x81) | ((48, 49, 49, 49, 19, 1, 32, 50)[t[0] % 8] << 1), t[1], t[2])) + t[3]
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
    d = H265Depacketizer()
    for p in stream:
        with contextlib.suppress(ValueError):
            d.feed(p)
        _assert_bounded(d)
        for event in d.take_events():
            if isinstance(event, AccessUnit):
                assert event.nals and event.size == sum(map(len, event.nals))
                assert all(len(nal) >= 2 and nal_type(nal) < 48 for nal in event.nals)
    assert d.packets == len(stream)


@FAST
@given(
    st.lists(st.lists(st.binary(min_size=2, max_size=3000), min_size=1, max_size=4), min_size=1, max_size=6),
    st.integers(4, 1500),
    st.booleans(),
    st.integers(0, 0xFFFF),
)
def test_round_trip_any_nals_after_a_keyframe(
    aus: list[list[bytes]], mtu: int, aggregate: bool, seq0: int
) -> None:
    # Types forced into 0..9 (non-IRAP slices: keyframe is only the first unit), LayerId and
    # TID kept as drawn, and units led by an AUD so that each begins a picture.
    aus = [
        [b"\x46\x01\x50"] + [bytes(((n[0] & 0x81) | ((n[0] % 10) << 1),)) + n[1:] for n in nals]
        for nals in aus
    ]
    key = [b"\x40\x01\x0c", b"\x42\x01\x01", b"\x44\x01\xc0", b"\x26\x01\xaf"]
    d = H265Depacketizer()
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
