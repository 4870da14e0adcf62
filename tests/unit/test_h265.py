"""H.265 depacketizer, packetizer and SPS parser (csud.media.h265), and PyAV's HEVC fMP4 muxing.

Every depacketizer scenario is fed twice, as the whole packet list and packet by packet
with the events drained after each packet; both must give the same events and errors.
"""

from __future__ import annotations

import ast
import random
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import pytest

from csud.media import h265
from csud.media.h264 import split_annexb
from csud.media.h265 import (
    AP,
    FU,
    MAX_AU_NALS,
    MAX_AU_SIZE,
    MAX_FU_FRAGMENTS,
    MAX_NAL_SIZE,
    H265Depacketizer,
    H265SpsInfo,
    is_keyframe_nal,
    nal_type,
    packetize_au,
    packetize_nal,
    parse_sps,
)
from csud.media.rtp import build_rtp
from csud.media.units import AccessUnit, Gap, MediaEvent, StreamReset

PT = 96
SSRC = 0x11223344
TS_STEP = 3600  # 25 fps at 90 kHz

_PATTERN = bytes((i * 7) & 0xFF for i in range(251))


def header(ntype: int, layer: int = 0, tid: int = 1) -> bytes:
    return bytes(((ntype << 1) | (layer >> 5), ((layer & 0x1F) << 3) | tid))


def nal(ntype: int, size: int, first_slice: bool = True, layer: int = 0, tid: int = 1) -> bytes:
    """A NAL unit of ``size`` bytes (>= 2); slice segments are first in their picture unless told."""
    body = (_PATTERN * (size // len(_PATTERN) + 2))[ntype : ntype + size - 2]
    if size > 2 and ntype <= 31:
        body = bytes(((0x80 if first_slice else 0x00) | (body[0] & 0x7F),)) + body[1:]
    return header(ntype, layer, tid) + body


# Parameter sets of a 320x240 libx265 stream.
VPS = bytes.fromhex("40010c01ffff01600000030090000003000003003cba0240")
SPS = bytes.fromhex("42010101600000030090000003000003003ca00a080f165ba4a4c2e68080000003008000000c84")
PPS = bytes.fromhex("4401c0718312")
SEI = nal(39, 30)
IDR_SMALL = nal(19, 500)
IDR_BIG = nal(19, 5000)
CRA = nal(21, 400)
P_SMALL = nal(1, 300)
P_BIG = nal(1, 3000)
KEY_AU = [VPS, SPS, PPS, SEI, IDR_SMALL]


# --- stream builder -------------------------------------------------------------------


@dataclass
class Stream:
    """RTP packets under construction: sequence numbers are assigned by ``packets()``."""

    seq0: int = 1000
    ssrc: int = SSRC
    entries: list[tuple[str, bytes, int, bool, int]] = field(default_factory=list)

    def au(
        self, nals: Sequence[bytes], ts: int, mtu: int = 1400, marker: bool = True, aggregate: bool = True
    ) -> Stream:
        payloads = packetize_au(nals, mtu, aggregate)
        for i, payload in enumerate(payloads):
            self.rtp(payload, ts, marker and i == len(payloads) - 1)
        return self

    def rtp(self, payload: bytes, ts: int, marker: bool = False, ssrc: int | None = None) -> Stream:
        self.entries.append(("rtp", payload, ts, marker, self.ssrc if ssrc is None else ssrc))
        return self

    def raw(self, data: bytes) -> Stream:
        self.entries.append(("raw", data, 0, False, 0))
        return self

    def packets(self) -> list[bytes]:
        out, seq, ssrc = [], self.seq0, None
        for kind, payload, ts, marker, pssrc in self.entries:
            if kind == "raw":
                out.append(payload)
                continue
            if ssrc is not None and pssrc != ssrc:
                seq = 5
            ssrc = pssrc
            out.append(build_rtp(PT, seq, ts, pssrc, marker, payload))
            seq += 1
        return out


def au(ts: int, nals: Sequence[bytes]) -> AccessUnit:
    return AccessUnit(ts, list(nals), any(16 <= nal_type(n) <= 21 for n in nals), sum(map(len, nals)))


@dataclass
class Result:
    events: list[MediaEvent]
    errors: list[str]
    depacketizer: H265Depacketizer


def feed_all(packets: Sequence[bytes]) -> Result:
    d = H265Depacketizer()
    errors = []
    for p in packets:
        try:
            d.feed(p)
        except ValueError as e:
            errors.append(str(e))
    return Result(list(d.take_events()), errors, d)


def feed_one_by_one(packets: Sequence[bytes]) -> Result:
    d = H265Depacketizer()
    events: list[MediaEvent] = []
    errors = []
    for p in packets:
        try:
            d.feed(p)
        except ValueError as e:
            errors.append(str(e))
        events.extend(d.take_events())
    return Result(events, errors, d)


def run(packets: Sequence[bytes]) -> Result:
    whole, single = feed_all(packets), feed_one_by_one(packets)
    assert whole.events == single.events
    assert whole.errors == single.errors
    return whole


def drop(packets: list[bytes], *indexes: int) -> list[bytes]:
    return [p for i, p in enumerate(packets) if i not in indexes]


# --- scenarios ------------------------------------------------------------------------

T0, T1, T2, T3 = (90000 + i * TS_STEP for i in range(4))
LOSS1 = Gap(1, "loss")
MALFORMED = Gap(0, "malformed")

FU_STREAM = Stream().au(KEY_AU, T0).au([IDR_BIG], T1).au([P_SMALL], T2).packets()  # AU1 = 4 FUs
SINGLES = Stream().au([IDR_SMALL], T0).au([P_SMALL], T1).au([P_SMALL], T2).au([P_SMALL], T3).packets()


@dataclass
class Scenario:
    packets: list[bytes]
    events: list[MediaEvent]
    errors: list[str] = field(default_factory=list)
    lost: int = 0
    late: int = 0


SCENARIOS = {
    "single-nal": Scenario(
        Stream().au([IDR_SMALL], T0).au([P_SMALL], T1).packets(), [au(T0, [IDR_SMALL]), au(T1, [P_SMALL])]
    ),
    "ap": Scenario(Stream().au(KEY_AU, T0).packets(), [au(T0, KEY_AU)]),
    "ap-then-fu": Scenario(Stream().au([*KEY_AU, IDR_BIG], T0).packets(), [au(T0, [*KEY_AU, IDR_BIG])]),
    "fu": Scenario(FU_STREAM, [au(T0, KEY_AU), au(T1, [IDR_BIG]), au(T2, [P_SMALL])]),
    "cra-is-a-keyframe": Scenario(
        Stream().au([CRA], T0).au([P_SMALL], T1).packets(), [au(T0, [CRA]), au(T1, [P_SMALL])]
    ),
    "layers-and-temporal-ids-kept": Scenario(
        Stream().au([VPS, SPS, PPS, nal(19, 900, tid=1), nal(1, 200, tid=3, layer=1)], T0).packets(),
        [au(T0, [VPS, SPS, PPS, nal(19, 900, tid=1), nal(1, 200, tid=3, layer=1)])],
    ),
    "lost-fu-start": Scenario(drop(FU_STREAM, 1), [au(T0, KEY_AU), LOSS1, au(T2, [P_SMALL])], lost=1),
    "lost-fu-middle": Scenario(drop(FU_STREAM, 2), [au(T0, KEY_AU), LOSS1, au(T2, [P_SMALL])], lost=1),
    "lost-fu-end": Scenario(drop(FU_STREAM, 4), [au(T0, KEY_AU), LOSS1, au(T2, [P_SMALL])], lost=1),
    "lost-two-fu": Scenario(
        drop(FU_STREAM, 2, 3), [au(T0, KEY_AU), Gap(2, "loss"), au(T2, [P_SMALL])], lost=2
    ),
    "lost-between-aus": Scenario(
        drop(SINGLES, 1), [au(T0, [IDR_SMALL]), LOSS1, au(T2, [P_SMALL]), au(T3, [P_SMALL])], lost=1
    ),
    "reordered": Scenario(
        [SINGLES[0], SINGLES[2], SINGLES[1], SINGLES[3]],
        [au(T0, [IDR_SMALL]), LOSS1, au(T2, [P_SMALL]), au(T3, [P_SMALL])],
        lost=1,
        late=1,
    ),
    "duplicate": Scenario(
        [SINGLES[0], SINGLES[1], SINGLES[1], SINGLES[2]],
        [au(T0, [IDR_SMALL]), au(T1, [P_SMALL]), au(T2, [P_SMALL])],
        late=1,
    ),
    "wrap-at-65535": Scenario(
        Stream(seq0=65533).au(KEY_AU, T0).au([IDR_BIG], T1).au([P_BIG], T2).packets(),
        [au(T0, KEY_AU), au(T1, [IDR_BIG]), au(T2, [P_BIG])],
    ),
    "loss-across-wrap": Scenario(
        drop(Stream(seq0=65535).au([IDR_SMALL], T0).au([P_SMALL], T1).au([P_SMALL], T2).packets(), 1),
        [au(T0, [IDR_SMALL]), LOSS1, au(T2, [P_SMALL])],
        lost=1,
    ),
    "ssrc-change": Scenario(
        Stream()
        .au(KEY_AU, T0)
        .rtp(packetize_nal(IDR_BIG)[0], T1)  # an FU in progress when the camera reboots
        .rtp(IDR_SMALL, 7, True, ssrc=0xBEEF)
        .packets(),
        [au(T0, KEY_AU), StreamReset("ssrc", {"old": SSRC, "new": 0xBEEF}), au(7, [IDR_SMALL])],
    ),
    "timestamp-boundary-without-marker": Scenario(
        Stream()
        .au([VPS, SPS, PPS], T0, marker=False, aggregate=False)
        .au([IDR_BIG], T0, marker=False)
        .au([P_SMALL], T1, marker=False)
        .au([P_BIG], T2, marker=False)
        .packets(),
        [au(T0, [VPS, SPS, PPS, IDR_BIG]), au(T1, [P_SMALL])],  # T2 still in progress
    ),
    "starts-mid-picture": Scenario(
        Stream()
        .au([nal(1, 200, first_slice=False)], T0)  # a later slice segment: its picture lost its start
        .rtp(packetize_nal(IDR_BIG)[1], T1)  # FU middle with no start
        .rtp(packetize_nal(nal(19, 3000, first_slice=False))[0], T1, True)  # later slice, as FU
        .rtp(packetize_au([nal(1, 100, first_slice=False), P_SMALL])[0], T1, True)  # AP led by one
        .au([P_SMALL], T2)
        .packets(),
        [au(T2, [P_SMALL])],
    ),
    "suffix-sei-and-eos-do-not-start-a-picture": Scenario(
        Stream().au([nal(40, 20)], T0).au([nal(36, 2)], T1).au([nal(35, 3), P_SMALL], T2).packets(),
        [au(T2, [nal(35, 3), P_SMALL])],
    ),
    "multi-slice-picture-loses-first-slice": Scenario(
        drop(
            Stream()
            .au([IDR_SMALL], T0)
            .au([nal(19, 800), nal(19, 800, first_slice=False)], T1, aggregate=False)
            .au([P_SMALL], T2)
            .packets(),
            1,
        ),
        [au(T0, [IDR_SMALL]), LOSS1, au(T2, [P_SMALL])],
        lost=1,
    ),
    "marker-inside-fu": Scenario(
        Stream().au(KEY_AU, T0).rtp(packetize_nal(IDR_BIG)[0], T1, True).au([P_SMALL], T2).packets(),
        [au(T0, KEY_AU), MALFORMED, au(T2, [P_SMALL])],
    ),
    "timestamp-change-inside-fu": Scenario(
        Stream().au(KEY_AU, T0).rtp(packetize_nal(IDR_BIG)[0], T1).au([P_SMALL], T2).packets(),
        [au(T0, KEY_AU), MALFORMED, au(T2, [P_SMALL])],
    ),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_depacketizer_scenarios(name: str) -> None:
    scenario = SCENARIOS[name]
    result = run(scenario.packets)
    assert result.events == scenario.events
    assert result.errors == scenario.errors
    assert result.depacketizer.lost_packets == scenario.lost
    assert result.depacketizer.late_packets == scenario.late


FU_START = packetize_nal(IDR_BIG)[0]
AP_HDR = header(AP)
FU_HDR = header(FU)
MALFORMED_PAYLOADS = [
    (b"", "between", "empty RTP payload"),
    (b"\x02", "between", "RTP payload too short for the NAL unit header: 1 bytes"),
    (AP_HDR, "between", "AP payload has no NAL units"),
    (AP_HDR + b"\x00", "between", "AP length field truncated: 1 bytes left"),
    (AP_HDR + b"\x00\x06" + PPS + b"\x00", "between", "AP length field truncated: 1 bytes left"),
    (AP_HDR + b"\x00\x00", "between", "AP NAL unit length 0 is shorter than a NAL unit header"),
    (AP_HDR + b"\x00\x01\x02", "between", "AP NAL unit length 1 is shorter than a NAL unit header"),
    (AP_HDR + b"\x01\x2c" + bytes(12), "between", "AP NAL unit length 300 exceeds remaining 12 bytes"),
    (AP_HDR + b"\x00\x02" + header(AP), "between", "AP holds NAL unit type 48"),
    (AP_HDR + b"\x00\x02" + header(FU), "between", "AP holds NAL unit type 49"),
    (AP_HDR + b"\x00\x03" + header(50) + b"\x00", "between", "AP holds NAL unit type 50"),
    (FU_HDR, "between", "FU payload too short: 2 bytes"),
    (FU_HDR + bytes((0xC0 | 19, 0x80)), "between", "FU fragment with both start and end bits"),
    (FU_HDR + bytes((0x80 | 48, 0x80)), "between", "FU holds NAL unit type 48"),
    (FU_HDR + bytes((0x80 | 63, 0x80)), "between", "FU holds NAL unit type 63"),
    (FU_START, "inside-fu", "FU start while a fragmented NAL unit is in progress"),
    (FU_HDR + bytes((1, 0)), "inside-fu", "FU fragment type 1 does not match fragmented NAL unit type 19"),
    (P_SMALL, "inside-fu", "NAL unit type 1 while a fragmented NAL unit is in progress"),
    (AP_HDR + b"\x00\x06" + PPS, "inside-fu", "AP while a fragmented NAL unit is in progress"),
    (header(50) + b"\x00\x00", "between", r"unsupported NAL unit type 50 \(PACI\)"),
    (header(51) + b"\x00", "between", r"unsupported NAL unit type 51 \(unspecified\)"),
    (header(63), "between", r"unsupported NAL unit type 63 \(unspecified\)"),
]


@pytest.mark.parametrize(("payload", "where", "message"), MALFORMED_PAYLOADS)
def test_malformed_payload(payload: bytes, where: str, message: str) -> None:
    s = Stream().au(KEY_AU, T0)
    if where == "inside-fu":
        s.rtp(FU_START, T1)
    s.rtp(payload, T1)
    packets = s.au([IDR_BIG], T2).au([P_SMALL], T3).packets()
    result = run(packets)
    assert len(result.errors) == 1
    assert re.fullmatch(message, result.errors[0])
    assert result.events == [au(T0, KEY_AU), MALFORMED, au(T2, [IDR_BIG]), au(T3, [P_SMALL])]
    assert result.depacketizer.malformed_packets == 1
    assert result.depacketizer.lost_packets == 0
    if where == "between":  # the same error from a fresh depacketizer
        with pytest.raises(ValueError, match=f"^{message}$"):
            H265Depacketizer().feed(Stream().rtp(payload, T1).packets()[0])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80" * 7, "RTP packet too short: 7 bytes"),
        (b"\x40" + bytes(11), "unsupported RTP version 1"),
        (
            bytes((0xA0,)) + build_rtp(PT, 1, 2, SSRC, False, b"x" * 9 + b"\xc8")[1:],
            "RTP padding 200 exceeds payload 10",
        ),
    ],
)
def test_malformed_rtp_header(data: bytes, message: str) -> None:
    packets = Stream().au(KEY_AU, T0).raw(data).au([IDR_BIG], T1).au([P_SMALL], T2).packets()
    result = run(packets)
    assert result.errors == [message]
    assert result.events == [au(T0, KEY_AU), MALFORMED, au(T1, [IDR_BIG]), au(T2, [P_SMALL])]


@pytest.mark.parametrize(("max_don_diff", "depack_buf_nalus"), [(1, 0), (0, 2), (5, 5)])
def test_donl_streams_are_refused(max_don_diff: int, depack_buf_nalus: int) -> None:
    message = (
        "H.265 RTP streams with decoding order numbers (DONL) are not supported: "
        f"sprop-max-don-diff {max_don_diff}, sprop-depack-buf-nalus {depack_buf_nalus}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        H265Depacketizer(max_don_diff=max_don_diff, depack_buf_nalus=depack_buf_nalus)


def test_nal_larger_than_limit_is_dropped() -> None:
    big = nal(19, MAX_NAL_SIZE + 1)
    packets = Stream().au([big], T0, mtu=65000).au([IDR_SMALL], T1).packets()
    result = run(packets)
    assert result.errors == [f"NAL unit size {MAX_NAL_SIZE + 1} exceeds limit {MAX_NAL_SIZE}"]
    assert result.events == [MALFORMED, au(T1, [IDR_SMALL])]


def test_access_unit_larger_than_limit_is_dropped() -> None:
    slices = [nal(19, 7 << 20)] + [nal(19, 7 << 20, first_slice=False)] * 4
    packets = Stream().au(slices, T0, mtu=65000).au([IDR_SMALL], T1).packets()
    result = run(packets)
    assert len(result.errors) == 1
    assert re.fullmatch(rf"access unit size \d+ exceeds limit {MAX_AU_SIZE}", result.errors[0])
    assert result.events == [MALFORMED, au(T1, [IDR_SMALL])]


def test_access_unit_with_too_many_nal_units_is_dropped() -> None:
    s = Stream().rtp(IDR_SMALL, T0)
    for _ in range(MAX_AU_NALS):
        s.rtp(nal(19, 4, first_slice=False), T0)
    result = run(s.au([IDR_SMALL], T1).packets())
    assert result.errors == [f"access unit has more than {MAX_AU_NALS} NAL units"]
    assert result.events == [MALFORMED, au(T1, [IDR_SMALL])]


def test_fu_with_too_many_fragments_is_dropped() -> None:
    s = Stream().rtp(FU_START, T0)
    for _ in range(MAX_FU_FRAGMENTS):
        s.rtp(FU_HDR + bytes((19, 0xAA)), T0)
    result = feed_all(s.au([IDR_SMALL], T1).packets())
    assert result.errors == [f"FU NAL unit has more than {MAX_FU_FRAGMENTS} fragments"]
    assert result.events == [MALFORMED, au(T1, [IDR_SMALL])]


# --- round trip ---------------------------------------------------------------------------

SIZES = sorted(
    {2, 3, 4, 99, 100, 101, 499, 500, 501, 1399, 1400, 1401, 2797, 2798, 4000, 20000}
    | set(random.Random(7798).sample(range(2, 20001), 40))
)


@pytest.mark.parametrize("mtu", [100, 500, 1400, 1500])
@pytest.mark.parametrize("aggregate", [True, False])
def test_packetize_depacketize_round_trip(mtu: int, aggregate: bool) -> None:
    s = Stream(seq0=65000).au(KEY_AU, 0, mtu=mtu, aggregate=aggregate)
    expected = [au(0, KEY_AU)]
    rng = random.Random(mtu)
    for i, size in enumerate(SIZES, start=1):
        nals = [nal(35, 3), nal(1, size, layer=rng.randrange(64), tid=rng.randrange(1, 8))]
        s.au(nals, i * TS_STEP, mtu=mtu, aggregate=aggregate)
        expected.append(au(i * TS_STEP, nals))
    result = run(s.packets())
    assert result.errors == []
    assert result.events == expected
    d = result.depacketizer
    assert (d.access_units, d.lost_packets, d.late_packets, d.malformed_packets) == (len(expected), 0, 0, 0)
    assert d.packets == len(s.packets())


# --- packetizer -------------------------------------------------------------------------


def test_packetize_nal_fu_headers() -> None:
    n = nal(19, 1000, layer=33, tid=2)
    frags = packetize_nal(n, 300)
    assert [len(f) for f in frags] == [300, 300, 300, 3 + 998 - 3 * 297]
    assert all(f[:2] == header(FU, layer=33, tid=2) for f in frags)
    assert [f[2] for f in frags] == [0x80 | 19, 19, 19, 0x40 | 19]
    assert n[:2] + b"".join(f[3:] for f in frags) == n
    assert packetize_nal(n, 1000) == [n]


def test_packetize_au_aggregates_small_nals() -> None:
    sei = nal(39, 30, layer=2, tid=4)
    payloads = packetize_au([VPS, SPS, PPS, sei, IDR_BIG, P_SMALL], 1400)
    ap = payloads[0]
    assert ap[:2] == header(AP, layer=0, tid=1)  # lowest LayerId and TID of the aggregated units
    assert ap[2:] == b"".join(len(n).to_bytes(2, "big") + n for n in (VPS, SPS, PPS, sei))
    assert payloads[1:5] == packetize_nal(IDR_BIG, 1400)
    assert payloads[5] == P_SMALL
    assert packetize_au([VPS, SPS], aggregate=False) == [VPS, SPS]
    assert packetize_au([b"\x80\x01" + b"x", b"\x02\x01"])[0][0] == 0x80 | (AP << 1)  # F is OR-ed


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: packetize_nal(b""), "NAL unit of 0 bytes is shorter than its header"),
        (lambda: packetize_nal(b"\x26"), "NAL unit of 1 bytes is shorter than its header"),
        (lambda: packetize_nal(IDR_BIG, 3), "MTU payload 3 too small for FU"),
        (lambda: packetize_au([VPS, b""]), "NAL unit of 0 bytes is shorter than its header"),
    ],
)
def test_packetizer_rejects(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        call()


@pytest.mark.parametrize(
    ("data", "key"),
    [(b"", False), (b"\x26", False), (header(19), True), (header(16), True), (header(21), True)]
    + [(header(t), False) for t in (0, 1, 9, 15, 22, 23, 32, 33, 34, 39)],
)
def test_is_keyframe_nal(data: bytes, key: bool) -> None:
    assert is_keyframe_nal(data) is key


# --- SPS --------------------------------------------------------------------------------


def _x265_stream(
    width: int, height: int, pix_fmt: str = "yuv420p", params: str = "", frames: int = 2, tune: bool = True
) -> list[bytes]:
    """Access units (Annex B) encoded by libx265 through PyAV: a fixture made at test time."""
    import av
    import numpy as np

    cc = av.CodecContext.create("libx265", "w")
    cc.width, cc.height, cc.pix_fmt = width, height, pix_fmt
    cc.time_base = Fraction(1, 25)
    cc.options = {
        "preset": "ultrafast",
        **({"tune": "zerolatency"} if tune else {}),
        "x265-params": "log-level=error" + (f":{params}" if params else ""),
    }
    planes = {"yuv420p": (height * 3 // 2, width), "yuv444p": (3, height, width)}
    dtype = np.uint16 if pix_fmt.endswith("10le") else np.uint8
    shape = planes.get(pix_fmt, (height * 3 // 2, width))
    out = []
    for pts in range(frames):
        frame = av.VideoFrame.from_ndarray(np.full(shape, (pts * 16) % 200, dtype=dtype), format=pix_fmt)
        frame.pts = pts
        out += [bytes(p) for p in cc.encode(frame)]
    out += [bytes(p) for p in cc.encode(None)]
    return out


def _x265_sps(*args: object, **kwargs: object) -> bytes:
    nals = split_annexb(b"".join(_x265_stream(*args, **kwargs)))  # type: ignore[arg-type]
    assert any(is_keyframe_nal(n) for n in nals)
    return next(n for n in nals if nal_type(n) == h265.NAL_SPS)


@pytest.mark.parametrize(
    ("width", "height", "pix_fmt", "params", "profile", "coded", "sub_layers"),
    [
        (320, 240, "yuv420p", "", 1, (320, 240), 1),
        (1280, 720, "yuv420p", "", 1, (1280, 720), 1),
        (1920, 1080, "yuv420p", "", 1, (1920, 1088), 1),  # conformance window: 8 lines cropped
        (642, 362, "yuv420p", "", 1, (656, 368), 1),  # cropped on both axes
        (352, 288, "yuv444p", "", 4, (352, 288), 1),  # RExt, chroma_format_idc 3
        (320, 240, "yuv420p10le", "", 2, (320, 240), 1),  # Main 10
        (320, 240, "yuv420p", "temporal-layers=3", 1, (320, 240), 3),  # sub-layers in PTL
    ],
)
def test_parse_sps_from_libx265(
    width: int,
    height: int,
    pix_fmt: str,
    params: str,
    profile: int,
    coded: tuple[int, int],
    sub_layers: int,
) -> None:
    info = parse_sps(_x265_sps(width, height, pix_fmt, params, frames=4, tune=not params))
    assert (info.width, info.height, info.profile_idc) == (width, height, profile)
    assert (info.coded_width, info.coded_height, info.max_sub_layers) == (*coded, sub_layers)
    assert info.chroma_format_idc == (3 if pix_fmt == "yuv444p" else 1)
    assert info.bit_depth_luma == info.bit_depth_chroma == (10 if "10" in pix_fmt else 8)


def test_parse_sps_known_values() -> None:
    info = parse_sps(SPS)
    assert info == H265SpsInfo(
        width=320,
        height=240,
        profile_idc=1,
        level_idc=60,
        tier_flag=0,
        profile_space=0,
        profile_compatibility_flags=0x60000000,
        constraint_flags=0x900000000000,
        chroma_format_idc=1,
        bit_depth_luma=8,
        bit_depth_chroma=8,
        max_sub_layers=1,
        coded_width=320,
        coded_height=240,
    )
    assert info.codec_string == "hvc1.1.6.L60.90"


class _BitWriter:
    def __init__(self) -> None:
        self.bits = ""

    def u(self, n: int, value: int) -> _BitWriter:
        self.bits += format(value, f"0{n}b") if n else ""
        return self

    def ue(self, value: int) -> _BitWriter:
        code = format(value + 1, "b")
        self.bits += "0" * (len(code) - 1) + code
        return self

    def nal(self, hdr: bytes = b"\x42\x01") -> bytes:
        bits = self.bits + "1"
        bits += "0" * (-len(bits) % 8)
        rbsp = int(bits, 2).to_bytes(len(bits) // 8, "big")
        out, zeros = bytearray(hdr), 0
        for byte in rbsp:  # emulation prevention
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def _synthetic_sps(
    sub_layers: list[tuple[int, int]],
    chroma: int = 1,
    size: tuple[int, int] = (1920, 1088),
    window: tuple[int, int, int, int] | None = None,
    tier: int = 0,
    space: int = 0,
    separate_planes: int = 0,
) -> bytes:
    """An SPS up to the bit depths; ``sub_layers``: (profile_present, level_present) per sub-layer."""
    w = _BitWriter().u(4, 0).u(3, len(sub_layers)).u(1, 1)
    w.u(2, space).u(1, tier).u(5, 2).u(32, 0x20000000).u(48, 0xB00000000000).u(8, 153)
    for profile_present, level_present in sub_layers:
        w.u(1, profile_present).u(1, level_present)
    if sub_layers:
        w.u(2 * (8 - len(sub_layers)), 0)
    for profile_present, level_present in sub_layers:
        if profile_present:
            w.u(88, (1 << 87) | 0x5A5A)  # junk that must be skipped, not parsed
        if level_present:
            w.u(8, 0xFF)
    w.ue(0).ue(chroma)
    if chroma == 3:
        w.u(1, separate_planes)
    w.ue(size[0]).ue(size[1]).u(1, int(window is not None))
    for offset in window or ():
        w.ue(offset)
    return w.ue(2).ue(2).ue(4).nal()


@pytest.mark.parametrize(
    "sub_layers",
    [[], [(0, 0)], [(1, 0)], [(0, 1)], [(1, 1)], [(1, 1), (0, 1), (1, 0)], [(1, 1)] * 6],
)
def test_parse_sps_sub_layers(sub_layers: list[tuple[int, int]]) -> None:
    info = parse_sps(_synthetic_sps(sub_layers, window=(0, 0, 0, 4)))
    assert info == H265SpsInfo(
        width=1920,
        height=1080,
        profile_idc=2,
        level_idc=153,
        profile_compatibility_flags=0x20000000,
        constraint_flags=0xB00000000000,
        bit_depth_luma=10,
        bit_depth_chroma=10,
        max_sub_layers=len(sub_layers) + 1,
        coded_width=1920,
        coded_height=1088,
    )
    assert info.codec_string == "hvc1.2.4.L153.B0"


@pytest.mark.parametrize(
    ("chroma", "separate", "window", "size"),
    [
        (0, 0, (1, 2, 3, 4), (1917, 1081)),  # monochrome: offsets in luma samples
        (1, 0, (1, 2, 3, 4), (1914, 1074)),  # 4:2:0: x2 both ways
        (2, 0, (1, 2, 3, 4), (1914, 1081)),  # 4:2:2: x2 horizontally
        (3, 0, (1, 2, 3, 4), (1917, 1081)),  # 4:4:4
        (3, 1, (1, 2, 3, 4), (1917, 1081)),  # separate colour planes: ChromaArrayType 0
    ],
)
def test_parse_sps_conformance_window(
    chroma: int, separate: int, window: tuple[int, int, int, int], size: tuple[int, int]
) -> None:
    info = parse_sps(_synthetic_sps([], chroma=chroma, window=window, separate_planes=separate))
    assert (info.width, info.height, info.chroma_format_idc) == (*size, chroma)


def test_codec_string_tier_and_space() -> None:
    info = parse_sps(_synthetic_sps([], tier=1, space=1))
    assert info.codec_string == "hvc1.A2.4.H153.B0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x42\x01", "not an H.265 SPS NAL unit"),
        (PPS + b"\x00\x00", "not an H.265 SPS NAL unit"),
        (VPS, "not an H.265 SPS NAL unit"),
        (SPS[:10], "SPS truncated"),
        (_BitWriter().u(4, 0).u(3, 7).u(1, 1).u(16, 0).nal(), "SPS sps_max_sub_layers_minus1 7 invalid"),
        (_synthetic_sps([])[:20] + bytes(8), "SPS exp-Golomb code longer than 32 bits"),
        (_synthetic_sps([], chroma=4), "SPS chroma_format_idc 4 invalid"),
        (_synthetic_sps([], size=(0, 1080)), "SPS picture size 0x1080 invalid"),
        (_synthetic_sps([], window=(960, 960, 0, 0)), "SPS conformance window leaves an empty picture"),
    ],
)
def test_parse_sps_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_sps(data)


# --- x265 stream through the depacketizer, and PyAV's HEVC fragmented MP4 ---------------


def _x265_gops(frames: int = 30, keyint: int = 10) -> list[bytes]:
    return _x265_stream(320, 240, params=f"keyint={keyint}:min-keyint={keyint}", frames=frames)


def test_libx265_stream_round_trip() -> None:
    """A real x265 stream packetized and depacketized: the same access units, IRAPs as keyframes."""
    aus = [split_annexb(a) for a in _x265_gops()]
    s = Stream()
    for i, nals in enumerate(aus):
        s.au(nals, i * TS_STEP, mtu=500)
    result = run(s.packets())
    assert result.errors == []
    assert result.events == [au(i * TS_STEP, nals) for i, nals in enumerate(aus)]
    keyframes = [i for i, e in enumerate(result.events) if isinstance(e, AccessUnit) and e.keyframe]
    assert keyframes == [0, 10, 20]
    assert {nal_type(n) for n in aus[10]} >= {h265.NAL_VPS, h265.NAL_SPS, h265.NAL_PPS}


def test_pyav_muxes_hevc_annexb_into_fragmented_mp4(tmp_path: Path) -> None:
    """What the recorder's writer needs for H.265: FragmentMuxer(codec="hevc") with Annex B
    access units whose first keyframe carries VPS/SPS/PPS in-band. The sample entry is hev1
    (PyAV's add_mux_stream has no codec_tag to ask for hvc1); PyAV and ffprobe read it."""
    import av

    from csud.recording.segmenter import Frame
    from csud.recording.writer import FragmentMuxer

    aus = _x265_gops()
    muxer = FragmentMuxer(320, 240, codec="hevc")
    data = b""
    for i, unit in enumerate(aus):
        key = any(is_keyframe_nal(n) for n in split_annexb(unit))
        data += muxer.mux([Frame(unit, i * 40_000_000, 40_000_000, key)], 0)
    data += muxer.close()
    assert [f.frames for f in muxer.take_fragments()] == [10, 10, 10]
    path = tmp_path / "hevc.mp4"
    path.write_bytes(data)
    hvcc = data.find(b"hvcC")
    assert data.find(b"hev1") > 0 and hvcc > 0
    assert data[hvcc + 4 + 22] == 3  # numOfArrays: VPS, SPS and PPS taken from the first keyframe
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.width, stream.codec_context.height) == (
            "hevc",
            320,
            240,
        )
        assert sum(1 for _ in container.decode(video=0)) == len(aus)
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,codec_tag_string",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (probe.returncode, probe.stderr, probe.stdout.strip()) == (0, "", "hevc,hev1")


def test_protocol_core_imports_no_io() -> None:
    for module in ("h265", "bits"):
        path = Path(h265.__file__).with_name(f"{module}.py")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & {"asyncio", "av", "aiortsp", "time", "socket", "os", "aiofiles", "datetime"}
