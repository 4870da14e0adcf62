"""H.264 depacketizer, packetizer and bitstream helpers (csud.media.h264).

Every depacketizer scenario is fed twice, as the whole packet list and packet by packet
with the events drained after each packet; both must give the same events and errors.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import pytest

from csud.media.h264 import (
    FU_A,
    MAX_AU_NALS,
    MAX_AU_SIZE,
    MAX_FU_FRAGMENTS,
    MAX_NAL_SIZE,
    STAP_A,
    H264Depacketizer,
    SpsInfo,
    is_keyframe_nal,
    packetize_au,
    packetize_nal,
    parse_sps,
    split_annexb,
)
from csud.media.rtp import build_rtp
from csud.media.units import AccessUnit, Gap, MediaEvent, StreamReset

PT = 96
SSRC = 0x11223344
TS_STEP = 3600  # 25 fps at 90 kHz


_PATTERN = bytes((i * 7) & 0xFF for i in range(251))


def nal(ntype: int, size: int, first_mb_zero: bool = True, nri: int = 3) -> bytes:
    """A NAL unit of ``size`` bytes; slices start with first_mb_in_slice = 0 unless told."""
    body = (_PATTERN * (size // len(_PATTERN) + 1))[ntype : ntype + size - 1]
    if size > 1 and ntype in (1, 5):
        body = bytes(((0x80 if first_mb_zero else 0x40) | (body[0] & 0x3F),)) + body[1:]
    return bytes(((nri << 5) | ntype,)) + body


SPS = bytes.fromhex("6742c00dda0507e840000003004000000ca3c50aa8")
PPS = bytes.fromhex("68ce3c80")
SEI = nal(6, 30, nri=0)
IDR_SMALL = nal(5, 500)
IDR_BIG = nal(5, 5000)
P_SMALL = nal(1, 300, nri=2)
P_BIG = nal(1, 3000, nri=2)
KEY_AU = [SPS, PPS, SEI, IDR_SMALL]


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
                seq = 5  # a rebooted camera restarts its numbering
            ssrc = pssrc
            out.append(build_rtp(PT, seq, ts, pssrc, marker, payload))
            seq += 1
        return out


def au(ts: int, nals: Sequence[bytes]) -> AccessUnit:
    return AccessUnit(ts, list(nals), any(n[0] & 0x1F == 5 for n in nals), sum(map(len, nals)))


@dataclass
class Result:
    events: list[MediaEvent]
    errors: list[str]
    depacketizer: H264Depacketizer


def feed_all(packets: Sequence[bytes]) -> Result:
    d = H264Depacketizer()
    errors = []
    for p in packets:
        try:
            d.feed(p)
        except ValueError as e:
            errors.append(str(e))
    return Result(list(d.take_events()), errors, d)


def feed_one_by_one(packets: Sequence[bytes]) -> Result:
    d = H264Depacketizer()
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

FU_STREAM = Stream().au(KEY_AU, T0).au([IDR_BIG], T1).au([P_SMALL], T2).packets()  # AU1 = 4 FU-A packets
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
    "stap-a": Scenario(Stream().au(KEY_AU, T0).packets(), [au(T0, KEY_AU)]),
    "stap-a-then-fu-a": Scenario(Stream().au([*KEY_AU, IDR_BIG], T0).packets(), [au(T0, [*KEY_AU, IDR_BIG])]),
    "fu-a": Scenario(FU_STREAM, [au(T0, KEY_AU), au(T1, [IDR_BIG]), au(T2, [P_SMALL])]),
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
        .au([SPS, PPS], T0, marker=False, aggregate=False)
        .au([IDR_BIG], T0, marker=False)
        .au([P_SMALL], T1, marker=False)
        .au([P_BIG], T2, marker=False)
        .packets(),
        [au(T0, [SPS, PPS, IDR_BIG]), au(T1, [P_SMALL])],  # T2 still in progress
    ),
    "starts-mid-picture": Scenario(
        Stream()
        .au([nal(1, 200, first_mb_zero=False)], T0)  # a later slice: its picture lost its start
        .rtp(packetize_nal(IDR_BIG)[1], T1)  # FU middle with no start
        .rtp(packetize_nal(nal(5, 3000, first_mb_zero=False))[0], T1, True)  # later slice, FU-A
        .au([P_SMALL], T2)
        .packets(),
        [au(T2, [P_SMALL])],
    ),
    "multi-slice-picture-loses-first-slice": Scenario(
        drop(
            Stream()
            .au([IDR_SMALL], T0)
            .au([nal(5, 800), nal(5, 800, first_mb_zero=False)], T1, aggregate=False)
            .au([P_SMALL], T2)
            .packets(),
            1,
        ),
        [au(T0, [IDR_SMALL]), LOSS1, au(T2, [P_SMALL])],  # the tail of the IDR is not a keyframe
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


# Malformed payloads, inserted either between two access units or inside a fragmented NAL
# unit. The first access unit is kept, the damaged one is dropped, the next one is fine.
FU_START = packetize_nal(IDR_BIG)[0]
MALFORMED_PAYLOADS = [
    (b"", "between", "empty RTP payload"),
    (bytes((STAP_A,)), "between", "STAP-A payload has no NAL units"),
    (bytes((STAP_A, 0)), "between", "STAP-A length field truncated: 1 bytes left"),
    (bytes((STAP_A, 0, 4)) + PPS + b"\x00", "between", "STAP-A length field truncated: 1 bytes left"),
    (bytes((STAP_A, 0, 0)), "between", "STAP-A NAL unit length 0"),
    (
        bytes((STAP_A, 1, 0x2C)) + bytes(12),
        "between",
        "STAP-A NAL unit length 300 exceeds remaining 12 bytes",
    ),
    (bytes((STAP_A, 0, 2, 0x00, 0x00)), "between", "STAP-A holds NAL unit type 0"),
    (bytes((STAP_A, 0, 2, 0x1C, 0x00)), "between", "STAP-A holds NAL unit type 28"),
    (bytes((0x7C,)), "between", "FU-A payload too short: 1 bytes"),
    (bytes((0x7C, 0xC5, 0x88)), "between", "FU-A fragment with both start and end bits"),
    (FU_START, "inside-fu", "FU-A start while a fragmented NAL unit is in progress"),
    (
        bytes((0x7C, 0x01, 0x00)),
        "inside-fu",
        "FU-A fragment type 1 does not match fragmented NAL unit type 5",
    ),
    (P_SMALL, "inside-fu", "NAL unit type 1 while a fragmented NAL unit is in progress"),
    (bytes((STAP_A, 0, 4)) + PPS, "inside-fu", "STAP-A while a fragmented NAL unit is in progress"),
    (bytes((0x19, 0)), "between", r"unsupported NAL unit type 25 \(STAP-B\)"),
    (bytes((0x1A, 0)), "between", r"unsupported NAL unit type 26 \(MTAP16\)"),
    (bytes((0x1B, 0)), "between", r"unsupported NAL unit type 27 \(MTAP24\)"),
    (bytes((0x1D, 0)), "between", r"unsupported NAL unit type 29 \(FU-B\)"),
    (bytes((0x00, 0)), "between", r"unsupported NAL unit type 0 \(reserved\)"),
    (bytes((0x1E, 0)), "between", r"unsupported NAL unit type 30 \(reserved\)"),
    (bytes((0x1F, 0)), "between", r"unsupported NAL unit type 31 \(reserved\)"),
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
            H264Depacketizer().feed(Stream().rtp(payload, T1).packets()[0])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80" * 7, "RTP packet too short: 7 bytes"),
        (b"\x40" + bytes(11), "unsupported RTP version 1"),
        (build_rtp(PT, 1, 2, SSRC, False, b"x" * 9 + b"\xc8")[:1] + b"", "RTP packet too short: 1 bytes"),
        (
            bytes((0xA0,)) + build_rtp(PT, 1, 2, SSRC, False, b"x" * 9 + b"\xc8")[1:],
            "RTP padding 200 exceeds payload 10",
        ),
    ],
)
def test_malformed_rtp_header(data: bytes, message: str) -> None:
    # The header is unreadable, so no sequence number is consumed: no loss follows.
    packets = Stream().au(KEY_AU, T0).raw(data).au([IDR_BIG], T1).au([P_SMALL], T2).packets()
    result = run(packets)
    assert result.errors == [message]
    assert result.events == [au(T0, KEY_AU), MALFORMED, au(T1, [IDR_BIG]), au(T2, [P_SMALL])]


def test_nal_larger_than_limit_is_dropped() -> None:
    big = nal(5, MAX_NAL_SIZE + 1)
    packets = Stream().au([big], T0, mtu=65000).au([IDR_SMALL], T1).packets()
    result = run(packets)
    assert result.errors == [f"NAL unit size {MAX_NAL_SIZE + 1} exceeds limit {MAX_NAL_SIZE}"]
    assert result.events == [MALFORMED, au(T1, [IDR_SMALL])]


def test_access_unit_larger_than_limit_is_dropped() -> None:
    slices = [nal(5, 7 << 20)] + [nal(5, 7 << 20, first_mb_zero=False)] * 4
    packets = Stream().au(slices, T0, mtu=65000).au([IDR_SMALL], T1).packets()
    result = run(packets)
    assert len(result.errors) == 1
    assert re.fullmatch(rf"access unit size \d+ exceeds limit {MAX_AU_SIZE}", result.errors[0])
    assert result.events == [MALFORMED, au(T1, [IDR_SMALL])]


def test_access_unit_with_too_many_nal_units_is_dropped() -> None:
    s = Stream().rtp(IDR_SMALL, T0)
    for _ in range(MAX_AU_NALS):
        s.rtp(nal(5, 3, first_mb_zero=False), T0)
    result = run(s.au([IDR_SMALL], T1).packets())
    assert result.errors == [f"access unit has more than {MAX_AU_NALS} NAL units"]
    assert result.events == [MALFORMED, au(T1, [IDR_SMALL])]


def test_fu_with_too_many_fragments_is_dropped() -> None:
    s = Stream().rtp(FU_START, T0)
    for _ in range(MAX_FU_FRAGMENTS):
        s.rtp(bytes((0x7C, 0x05, 0xAA)), T0)
    result = feed_all(s.au([IDR_SMALL], T1).packets())
    assert result.errors == [f"FU-A NAL unit has more than {MAX_FU_FRAGMENTS} fragments"]
    assert result.events == [MALFORMED, au(T1, [IDR_SMALL])]


# --- round trip ---------------------------------------------------------------------------

SIZES = sorted(
    {1, 2, 3, 99, 100, 101, 499, 500, 501, 1399, 1400, 1401, 2798, 2799, 4000, 20000}
    | set(random.Random(6184).sample(range(1, 20001), 40))
)


@pytest.mark.parametrize("mtu", [100, 500, 1400, 1500])
@pytest.mark.parametrize("aggregate", [True, False])
def test_packetize_depacketize_round_trip(mtu: int, aggregate: bool) -> None:
    s = Stream(seq0=65000).au(KEY_AU, 0, mtu=mtu, aggregate=aggregate)
    expected = [au(0, KEY_AU)]
    for i, size in enumerate(SIZES, start=1):
        nals = [nal(9, 2), nal(1, size, nri=i % 4), nal(12, 1 + size % 7, nri=0)]
        s.au(nals, i * TS_STEP, mtu=mtu, aggregate=aggregate)
        expected.append(au(i * TS_STEP, nals))
    result = run(s.packets())
    assert result.errors == []
    assert result.events == expected
    d = result.depacketizer
    assert (d.access_units, d.lost_packets, d.late_packets, d.malformed_packets) == (len(expected), 0, 0, 0)
    assert d.packets == len(s.packets())


# --- packetizer -------------------------------------------------------------------------


def test_packetize_nal_fu_a_headers() -> None:
    n = nal(5, 1000, nri=2)
    frags = packetize_nal(n, 300)
    assert [len(f) for f in frags] == [300, 300, 300, 2 + 999 - 3 * 298]
    assert all(f[0] == (0x40 | FU_A) for f in frags)
    assert [f[1] for f in frags] == [0x85, 0x05, 0x05, 0x45]
    assert bytes((n[0],)) + b"".join(f[2:] for f in frags) == n
    assert packetize_nal(n, 1000) == [n]


def test_packetize_au_aggregates_small_nals() -> None:
    payloads = packetize_au([SPS, PPS, SEI, IDR_BIG, P_SMALL], 1400)
    stap = payloads[0]
    assert stap[0] == 0x60 | STAP_A  # NRI is the highest of the aggregated units
    assert stap[1:] == b"".join(len(n).to_bytes(2, "big") + n for n in (SPS, PPS, SEI))
    assert payloads[1:5] == packetize_nal(IDR_BIG, 1400)
    assert payloads[5] == P_SMALL  # a run of one is a single NAL unit packet
    assert packetize_au([SPS, PPS], aggregate=False) == [SPS, PPS]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: packetize_nal(b""), "empty NAL unit"),
        (lambda: packetize_nal(IDR_BIG, 2), "MTU payload 2 too small for FU-A"),
        (lambda: packetize_au([SPS, b""]), "empty NAL unit"),
    ],
)
def test_packetizer_rejects(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        call()


# --- Annex B, keyframes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "nals"),
    [
        (b"", []),
        (b"\x01\x02", []),
        (b"\x00\x00\x01\x67\x42", [b"\x67\x42"]),
        (b"\x00\x00\x00\x01\x67\x42\x00\x00\x01\x68\xce", [b"\x67\x42", b"\x68\xce"]),
        (b"\x00\x00\x00\x01\x67\x00\x00\x00\x00\x01\x68\x00\x00", [b"\x67", b"\x68"]),
        (b"junk\x00\x00\x01\x65\x88\x00\x00\x03\x01", [b"\x65\x88\x00\x00\x03\x01"]),
        (b"\x00\x00\x01\x00\x00\x01\x09\xf0", [b"\x09\xf0"]),
    ],
)
def test_split_annexb(data: bytes, nals: list[bytes]) -> None:
    assert split_annexb(data) == nals


@pytest.mark.parametrize(
    ("data", "key"), [(b"", False), (b"\x65", True), (b"\x25\x88", True), (b"\x41", False), (SPS, False)]
)
def test_is_keyframe_nal(data: bytes, key: bool) -> None:
    assert is_keyframe_nal(data) is key


# --- SPS --------------------------------------------------------------------------------


def _x264_sps(width: int, height: int, pix_fmt: str = "yuv420p", params: str = "") -> bytes:
    import av
    import numpy as np

    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = width, height, pix_fmt
    cc.time_base = Fraction(1, 25)
    cc.options = {"preset": "ultrafast", "tune": "zerolatency", **({"x264-params": params} if params else {})}
    shape = (height * 3 // 2, width) if pix_fmt == "yuv420p" else (3, height, width)
    data = b""
    for pts in range(2):
        frame = av.VideoFrame.from_ndarray(np.zeros(shape, dtype=np.uint8), format=pix_fmt)
        frame.pts = pts
        data += b"".join(bytes(p) for p in cc.encode(frame))
    data += b"".join(bytes(p) for p in cc.encode(None))
    nals = split_annexb(data)
    assert any(is_keyframe_nal(n) for n in nals)
    return next(n for n in nals if n[0] & 0x1F == 7)


@pytest.mark.parametrize(
    ("width", "height", "pix_fmt", "params", "profile"),
    [
        (320, 240, "yuv420p", "", 66),
        (1280, 720, "yuv420p", "", 66),
        (1920, 1080, "yuv420p", "", 66),  # coded 1088 lines, cropped
        (352, 288, "yuv444p", "", 244),  # High 4:4:4: chroma_format_idc 3
        (720, 576, "yuv420p", "interlaced=1", 77),  # frame_mbs_only_flag 0
        (1920, 1080, "yuv420p", "interlaced=1", 77),  # field coding and cropping
        (640, 360, "yuv420p", "cqm=jvt:8x8dct=1", 100),
    ],
)
def test_parse_sps_from_libx264(width: int, height: int, pix_fmt: str, params: str, profile: int) -> None:
    info = parse_sps(_x264_sps(width, height, pix_fmt, params))
    assert (info.width, info.height, info.profile_idc) == (width, height, profile)


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

    def se(self, value: int) -> _BitWriter:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self) -> bytes:
        bits = self.bits + "1"  # rbsp_stop_one_bit
        bits += "0" * (-len(bits) % 8)
        rbsp = int(bits, 2).to_bytes(len(bits) // 8, "big")
        out, zeros = bytearray(b"\x67"), 0
        for byte in rbsp:  # emulation prevention
            if zeros >= 2 and byte <= 3:
                out.append(3)
                zeros = 0
            out.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return bytes(out)


def _high_sps(scaling: bool, poc_type: int, crop: tuple[int, int, int, int] | None) -> bytes:
    w = _BitWriter().u(8, 100).u(8, 0).u(8, 41).ue(0)
    w.ue(1).ue(0).ue(0).u(1, 0)  # chroma 4:2:0, 8 bits, no bypass
    w.u(1, int(scaling))
    if scaling:
        for i in range(8):
            present = i in (0, 3, 6)
            w.u(1, int(present))
            if present:
                size = 16 if i < 6 else 64
                for j in range(size):
                    w.se(-8 if (i == 3 and j == 0) else (j % 5) - 2)  # i == 3: "use default" (next 0)
                    if i == 3:
                        break
    w.ue(0).ue(poc_type)
    if poc_type == 0:
        w.ue(2)
    elif poc_type == 1:
        w.u(1, 0).se(-1).se(2).ue(3).se(1).se(-1).se(0)
    w.ue(4).u(1, 0).ue(119).ue(67).u(1, 1).u(1, 1)  # 1920x1088 progressive
    w.u(1, int(crop is not None))
    if crop:
        for c in crop:
            w.ue(c)
    return w.u(1, 0).nal()


@pytest.mark.parametrize("scaling", [False, True])
@pytest.mark.parametrize("poc_type", [0, 1, 2])
@pytest.mark.parametrize(
    ("crop", "size"), [(None, (1920, 1088)), ((0, 0, 0, 4), (1920, 1080)), ((2, 3, 1, 0), (1910, 1086))]
)
def test_parse_sps_high_profile_fields(
    scaling: bool, poc_type: int, crop: tuple[int, int, int, int] | None, size: tuple[int, int]
) -> None:
    info = parse_sps(_high_sps(scaling, poc_type, crop))
    assert info == SpsInfo(*size, profile_idc=100, level_idc=41, constraint_flags=0, chroma_format_idc=1)
    assert info.codec_string == "avc1.640029"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x67\x42", "not an SPS NAL unit"),
        (PPS + b"\x00\x00", "not an SPS NAL unit"),
        (SPS[:6], "SPS truncated"),
        (b"\x67\x42\x00\x1e" + bytes(8), "SPS exp-Golomb code longer than 32 bits"),
        (_BitWriter().u(8, 66).u(8, 0).u(8, 30).ue(0).ue(0).ue(3).nal(), "SPS pic_order_cnt_type 3 invalid"),
        (_BitWriter().u(8, 100).u(8, 0).u(8, 30).ue(0).ue(4).nal(), "SPS chroma_format_idc 4 invalid"),
    ],
)
def test_parse_sps_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_sps(data)
