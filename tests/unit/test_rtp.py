"""RTP header and RTCP report parsing/building (csud.media.rtp)."""

from __future__ import annotations

import struct

import pytest

from csud.media.rtp import (
    RTP_HEADER_SIZE,
    RTP_SEQ_OFFSET,
    RTP_SSRC_OFFSET,
    RTP_TS_OFFSET,
    ReceiverReport,
    ReportBlock,
    RtpPacket,
    SenderReport,
    build_receiver_report,
    build_rtp,
    build_sender_report,
    ntp_to_unix_ns,
    parse_header,
    parse_rtcp,
    parse_rtcp_packets,
    unix_ns_to_ntp,
)

PACKETS = [
    pytest.param(RtpPacket(96, 1, 2, 3), id="empty-payload"),
    pytest.param(RtpPacket(96, 65535, 0xFFFFFFFF, 0xDEADBEEF, True, b"\x65abc"), id="marker-max-fields"),
    pytest.param(RtpPacket(0, 0, 0, 0, False, b"x", csrc=[1, 2, 0xFFFFFFFF]), id="csrc"),
    pytest.param(
        RtpPacket(97, 5, 6, 7, False, b"pay", extension_profile=0xBEDE, extension=b"\x01" * 8), id="ext"
    ),
    pytest.param(RtpPacket(97, 5, 6, 7, False, b"pay", extension_profile=0x1000), id="ext-empty"),
    pytest.param(RtpPacket(97, 5, 6, 7, True, b"payload", padding_size=3), id="padding"),
    pytest.param(RtpPacket(97, 5, 6, 7, True, b"", padding_size=1), id="padding-only"),
    pytest.param(
        RtpPacket(127, 9, 10, 11, True, b"all", [4, 5], 0xABAC, b"\x00" * 4, padding_size=255),
        id="everything",
    ),
]


@pytest.mark.parametrize("packet", PACKETS)
def test_rtp_packet_round_trip(packet: RtpPacket) -> None:
    data = bytes(packet)
    assert RtpPacket.parse(data) == packet
    assert bytes(RtpPacket.parse(data)) == data


@pytest.mark.parametrize("packet", PACKETS)
def test_parse_header_agrees_with_rtp_packet_at_an_offset(packet: RtpPacket) -> None:
    data = bytes(packet)
    buf = b"\xaa" * 5 + data + b"\xbb" * 7  # a packet inside a larger receive buffer
    for view in (buf, bytearray(buf), memoryview(buf)):
        pt, seq, ts, ssrc, marker, start, end = parse_header(view, 5, 5 + len(data))
        assert (pt, seq, ts, ssrc, marker) == (
            packet.payload_type,
            packet.sequence_number,
            packet.timestamp,
            packet.ssrc,
            packet.marker,
        )
        assert bytes(view[start:end]) == packet.payload


def test_build_rtp_matches_reference_and_offsets() -> None:
    data = build_rtp(96, 70000, (1 << 32) + 5, 0x1234, True, b"\x41xyz")
    assert RtpPacket.parse(data) == RtpPacket(96, 70000 % 65536, 5, 0x1234, True, b"\x41xyz")
    buf = bytearray(data)
    struct.pack_into("!H", buf, RTP_SEQ_OFFSET, 42)
    struct.pack_into("!I", buf, RTP_TS_OFFSET, 4242)
    struct.pack_into("!I", buf, RTP_SSRC_OFFSET, 99)
    assert parse_header(buf)[1:4] == (42, 4242, 99)
    assert RTP_HEADER_SIZE == RTP_SSRC_OFFSET + 4


def _raw(b0: int, tail: bytes = b"", size: int = RTP_HEADER_SIZE) -> bytes:
    return (bytes((b0, 96)) + bytes(size - 2) + tail)[: size + len(tail)]


MALFORMED_HEADERS = [
    (b"\x80" * 7, "RTP packet too short: 7 bytes"),
    (b"", "RTP packet too short: 0 bytes"),
    (_raw(0x40), "unsupported RTP version 1"),
    (_raw(0x00), "unsupported RTP version 0"),
    (_raw(0xC0), "unsupported RTP version 3"),
    (_raw(0x83, b"\x00" * 8), "RTP header with 3 CSRCs exceeds packet of 20 bytes"),
    (_raw(0x90, b"\x00\x00"), "RTP header extension truncated in packet of 14 bytes"),
    (_raw(0x90, b"\x00\x00\x00\x02abcd"), "RTP header extension of 2 words exceeds packet of 20 bytes"),
    (_raw(0xA0, b"x" * 9 + b"\xc8"), "RTP padding 200 exceeds payload 10"),
    (_raw(0xA0, b"x" * 9 + b"\x00"), "RTP padding count 0 is invalid"),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED_HEADERS)
def test_parse_header_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_header(data)
    with pytest.raises(ValueError, match=f"^{message}$"):
        RtpPacket.parse(data)


@pytest.mark.parametrize(("start", "end"), [(-1, 12), (0, 13), (5, 4)])
def test_parse_header_rejects_bounds_outside_buffer(start: int, end: int) -> None:
    with pytest.raises(ValueError, match=r"^RTP packet bounds .* outside buffer of 12 bytes$"):
        parse_header(build_rtp(96, 1, 2, 3, False, b""), start, end)


# --- NTP --------------------------------------------------------------------------------

NTP_CASES = [
    (0x83AA7E80_00000000, 0),  # 1970-01-01
    (0xEE093500_80000000, 1_784_592_000_500_000_000),  # 2026-07-21, half a second
    (0x00000000_00000000, 2_085_978_496_000_000_000),  # 2036-02-07, NTP era 1
]


@pytest.mark.parametrize(("ntp", "unix_ns"), NTP_CASES)
def test_ntp_conversions(ntp: int, unix_ns: int) -> None:
    assert ntp_to_unix_ns(ntp) == unix_ns
    assert unix_ns_to_ntp(unix_ns) == ntp


@pytest.mark.parametrize("unix_ns", [1, 999_999_999, 1_700_000_000_123_456_789, 2_200_000_000_987_654_321])
def test_ntp_round_trip_is_exact_to_the_nanosecond(unix_ns: int) -> None:
    assert ntp_to_unix_ns(unix_ns_to_ntp(unix_ns)) == unix_ns


# --- RTCP -------------------------------------------------------------------------------

BLOCK = ReportBlock(
    ssrc=0xCAFE, fraction_lost=12, cumulative_lost=-3, highest_seq=70000, jitter=9, lsr=7, dlsr=8
)


def test_sender_report_round_trip() -> None:
    data = build_sender_report(0x1234, 0xEE093500_80000000, 90000, 10, 12000)
    assert len(data) == 28
    [sr] = parse_rtcp(data)
    assert sr == SenderReport(0x1234, 0xEE093500_80000000, 90000, 10, 12000)
    assert sr.unix_ns == 1_784_592_000_500_000_000


@pytest.mark.parametrize("reports", [(), (BLOCK,), (BLOCK, ReportBlock(1))])
def test_receiver_report_round_trip(reports: tuple[ReportBlock, ...]) -> None:
    data = build_receiver_report(0x55, reports)
    assert len(data) == 8 + 24 * len(reports)
    assert parse_rtcp_packets(data) == [ReceiverReport(0x55, reports)]
    assert parse_rtcp(data) == []


SDES = bytes((0x81, 202)) + (2).to_bytes(2, "big") + b"\x00\x00\x00\x55" + b"\x01\x01x\x00"
BYE = bytes((0x81, 203, 0, 1)) + b"\x00\x00\x00\x55"


def test_compound_packet_keeps_sender_reports_only() -> None:
    sr1 = build_sender_report(1, 2, 3, 4, 5, [BLOCK])
    sr2 = build_sender_report(6, 7, 8, 9, 10)
    data = build_receiver_report(0x99) + sr1 + SDES + sr2 + BYE
    assert parse_rtcp(data) == [SenderReport(1, 2, 3, 4, 5, (BLOCK,)), SenderReport(6, 7, 8, 9, 10)]


def test_padding_on_last_packet() -> None:
    rr = bytearray(build_receiver_report(1))
    rr[0] |= 0x20
    rr[3] += 1  # one more word
    rr += b"\x00\x00\x00\x04"
    assert parse_rtcp_packets(bytes(rr)) == [ReceiverReport(1)]


SR = build_sender_report(1, 2, 3, 4, 5)
MALFORMED_RTCP = [
    (b"\x80\xc8\x00", "RTCP packet too short: 3 bytes"),
    (SR + b"\x80\xc8", "RTCP header truncated at offset 28"),
    (b"\x40" + SR[1:], "unsupported RTCP version 1"),
    (SR[:-4], "RTCP packet length 28 exceeds remaining 24 bytes"),
    (bytes((0x81, 200, 0, 6)) + SR[4:], "RTCP SR with 1 report blocks needs 52 bytes, packet has 28"),
    (bytes((0x80, 201, 0, 0)), "RTCP RR with 0 report blocks needs 8 bytes, packet has 4"),
    (bytes((0xA0,)) + SR[1:] + SR, "RTCP padding on a packet that is not the last"),
    (bytes((0xA0,)) + SR[1:-1] + b"\x00", "RTCP padding 0 invalid for packet of 28 bytes"),
    (bytes((0xA0,)) + SR[1:-1] + b"\x19", "RTCP padding 25 invalid for packet of 28 bytes"),
]


@pytest.mark.parametrize(("data", "message"), MALFORMED_RTCP)
def test_parse_rtcp_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_rtcp(data)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_rtp(128, 0, 0, 0, False, b""), "RTP payload type 128 out of range 0..127"),
        (lambda: bytes(RtpPacket(96, 0, 0, 0, csrc=[0] * 16)), "too many CSRCs: 16 > 15"),
        (
            lambda: bytes(RtpPacket(96, 0, 0, 0, extension_profile=1, extension=b"abc")),
            "RTP extension length 3",
        ),
        (lambda: build_receiver_report(1, [BLOCK] * 32), "too many RTCP report blocks: 32 > 31"),
        (
            lambda: ReportBlock(1, cumulative_lost=1 << 23).pack(),
            "cumulative lost 8388608 out of 24-bit range",
        ),
        (lambda: ntp_to_unix_ns(-1), "NTP timestamp -1 out of 64-bit range"),
    ],
)
def test_builders_reject(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call()
