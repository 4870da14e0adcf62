"""RTP and RTCP wire formats (RFC 3550): parse and build, nothing else.

What belongs here: the fixed RTP header and its optional parts (CSRC list, header
extension, padding), the RTCP sender/receiver reports csud reads and sends, and the NTP
timestamp arithmetic they carry. What does not: payload formats (``h264.py``), sequence
and jitter bookkeeping (the depacketizer and the timeline), sockets and clocks.

Two forms of the RTP header parse exist on purpose:

* :class:`RtpPacket` is the readable reference form (a dataclass with ``parse`` and
  ``__bytes__``), used by tests and by the simulator's build step.
* :func:`parse_header` is the lean form used on the hot path: it works on offsets into a
  ``bytes``/``bytearray``/``memoryview`` and never copies the payload.

Every malformed input raises ``ValueError`` with an exact message; nothing else escapes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

Buffer = bytes | bytearray | memoryview

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
CSRC_SIZE = 4
MAX_CSRC_COUNT = 15
RTP_EXTENSION_HEADER_SIZE = 4  # 16-bit profile + 16-bit length in 32-bit words
RTP_EXTENSION_WORD_SIZE = 4
RTP_SEQ_MOD = 1 << 16
RTP_TS_MOD = 1 << 32
MAX_PAYLOAD_TYPE = 0x7F

# Byte offsets of the fixed header fields (the simulator patches them with struct.pack_into).
RTP_SEQ_OFFSET = 2
RTP_TS_OFFSET = RTP_SEQ_OFFSET + 2
RTP_SSRC_OFFSET = RTP_TS_OFFSET + 4
RTP_SEQ_FORMAT = "!H"
RTP_TS_FORMAT = "!I"
RTP_SSRC_FORMAT = "!I"

# First header byte: V(2) P(1) X(1) CC(4); second: M(1) PT(7).
_VERSION_SHIFT = 6
_PADDING_BIT = 0x20
_EXTENSION_BIT = 0x10
_CC_MASK = 0x0F
_MARKER_BIT = 0x80
_PT_MASK = 0x7F

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_unpack_header = _HEADER.unpack_from

RtpHeader = tuple[int, int, int, int, bool, int, int]


def parse_header(buf: Buffer, start: int = 0, end: int | None = None) -> RtpHeader:
    """Parse the RTP header of the packet held in ``buf[start:end]`` without copying.

    Returns ``(payload_type, seq, timestamp, ssrc, marker, payload_start, payload_end)``
    where the payload is ``buf[payload_start:payload_end]`` (absolute offsets into ``buf``),
    CSRCs and the header extension skipped and padding removed. Invariant on success:
    ``start + 12 <= payload_start <= payload_end <= end``.
    """
    size = len(buf)
    if end is None:
        end = size
    if not 0 <= start <= end <= size:
        raise ValueError(f"RTP packet bounds {start}:{end} outside buffer of {size} bytes")
    length = end - start
    if length < RTP_HEADER_SIZE:
        raise ValueError(f"RTP packet too short: {length} bytes")
    b0, b1, seq, timestamp, ssrc = _unpack_header(buf, start)
    if b0 >> _VERSION_SHIFT != RTP_VERSION:
        raise ValueError(f"unsupported RTP version {b0 >> _VERSION_SHIFT}")
    pos = start + RTP_HEADER_SIZE
    if b0 & (_CC_MASK | _EXTENSION_BIT | _PADDING_BIT):  # rare: keep the common path short
        pos += (b0 & _CC_MASK) * CSRC_SIZE
        if pos > end:
            raise ValueError(f"RTP header with {b0 & _CC_MASK} CSRCs exceeds packet of {length} bytes")
        if b0 & _EXTENSION_BIT:
            if pos + RTP_EXTENSION_HEADER_SIZE > end:
                raise ValueError(f"RTP header extension truncated in packet of {length} bytes")
            ext_words = _EXT_HEADER.unpack_from(buf, pos)[1]
            pos += RTP_EXTENSION_HEADER_SIZE + ext_words * RTP_EXTENSION_WORD_SIZE
            if pos > end:
                raise ValueError(
                    f"RTP header extension of {ext_words} words exceeds packet of {length} bytes"
                )
        if b0 & _PADDING_BIT:
            padding = buf[end - 1]
            if padding == 0:
                raise ValueError("RTP padding count 0 is invalid")
            if padding > end - pos:
                raise ValueError(f"RTP padding {padding} exceeds payload {end - pos}")
            end -= padding
    return b1 & _PT_MASK, seq, timestamp, ssrc, b1 >= _MARKER_BIT, pos, end


def build_rtp(payload_type: int, seq: int, timestamp: int, ssrc: int, marker: bool, payload: Buffer) -> bytes:
    """A plain RTP packet (no CSRC, no extension, no padding): 12-byte header + payload."""
    if not 0 <= payload_type <= MAX_PAYLOAD_TYPE:
        raise ValueError(f"RTP payload type {payload_type} out of range 0..127")
    header = _HEADER.pack(
        RTP_VERSION << _VERSION_SHIFT,
        (_MARKER_BIT if marker else 0) | payload_type,
        seq % RTP_SEQ_MOD,
        timestamp % RTP_TS_MOD,
        ssrc % RTP_TS_MOD,
    )
    return header + bytes(payload)


@dataclass(slots=True)
class RtpPacket:
    """Readable RTP packet. ``payload`` excludes padding; ``padding_size`` is the pad count
    (0 = no P bit). ``extension_profile`` is None when the X bit is clear; ``extension`` is
    the extension data (a multiple of 4 bytes)."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    marker: bool = False
    payload: bytes = b""
    csrc: list[int] = field(default_factory=list)
    extension_profile: int | None = None
    extension: bytes = b""
    padding_size: int = 0

    @classmethod
    def parse(cls, data: Buffer) -> RtpPacket:
        """Parse one whole packet; ``ValueError`` (same messages as :func:`parse_header`)."""
        pt, seq, ts, ssrc, marker, start, end = parse_header(data)
        view = memoryview(data)
        b0 = view[0]
        cc = b0 & _CC_MASK
        csrc = list(struct.unpack_from(f"!{cc}I", view, RTP_HEADER_SIZE))
        profile: int | None = None
        extension = b""
        if b0 & _EXTENSION_BIT:
            ext_pos = RTP_HEADER_SIZE + cc * CSRC_SIZE
            profile = _EXT_HEADER.unpack_from(view, ext_pos)[0]
            extension = bytes(view[ext_pos + RTP_EXTENSION_HEADER_SIZE : start])
        return cls(
            payload_type=pt,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            marker=marker,
            payload=bytes(view[start:end]),
            csrc=csrc,
            extension_profile=profile,
            extension=extension,
            padding_size=len(view) - end,
        )

    def __bytes__(self) -> bytes:
        if len(self.csrc) > MAX_CSRC_COUNT:
            raise ValueError(f"too many CSRCs: {len(self.csrc)} > {MAX_CSRC_COUNT}")
        if len(self.extension) % RTP_EXTENSION_WORD_SIZE:
            raise ValueError(f"RTP extension length {len(self.extension)} is not a multiple of 4")
        if not 0 <= self.padding_size <= 0xFF:
            raise ValueError(f"RTP padding {self.padding_size} out of range 0..255")
        b0 = RTP_VERSION << _VERSION_SHIFT | len(self.csrc)
        if self.extension_profile is not None:
            b0 |= _EXTENSION_BIT
        if self.padding_size:
            b0 |= _PADDING_BIT
        out = bytearray(
            _HEADER.pack(
                b0,
                (_MARKER_BIT if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
        )
        out += struct.pack(f"!{len(self.csrc)}I", *self.csrc)
        if self.extension_profile is not None:
            out += _EXT_HEADER.pack(self.extension_profile, len(self.extension) // RTP_EXTENSION_WORD_SIZE)
            out += self.extension
        out += self.payload
        if self.padding_size:
            out += bytes(self.padding_size - 1) + bytes((self.padding_size,))
        return bytes(out)


# --- NTP timestamps -------------------------------------------------------------------

NTP_UNIX_EPOCH_OFFSET_SECONDS = 2_208_988_800  # 1900-01-01 to 1970-01-01
NS_PER_SECOND = 1_000_000_000
NTP_FRACTION_BITS = 32
NTP_MOD = 1 << 64
_NTP_ERA_SECONDS = 1 << 32
_NTP_ERA_PIVOT = 1 << 31  # RFC 4330 §3: seconds with the MSB clear are in era 1 (after 2036)


def ntp_to_unix_ns(ntp64: int) -> int:
    """64-bit NTP timestamp (32.32 fixed point since 1900) to Unix nanoseconds, rounded.

    Era rule of RFC 4330: seconds below 2**31 are taken after 2036-02-07, so the mapping
    covers 1968..2104. Exact inverse of :func:`unix_ns_to_ntp` over that span.
    """
    if not 0 <= ntp64 < NTP_MOD:
        raise ValueError(f"NTP timestamp {ntp64} out of 64-bit range")
    if ntp64 >> NTP_FRACTION_BITS < _NTP_ERA_PIVOT:
        ntp64 += _NTP_ERA_SECONDS << NTP_FRACTION_BITS
    ns_since_1900 = (ntp64 * NS_PER_SECOND + (1 << (NTP_FRACTION_BITS - 1))) >> NTP_FRACTION_BITS
    return ns_since_1900 - NTP_UNIX_EPOCH_OFFSET_SECONDS * NS_PER_SECOND


def unix_ns_to_ntp(ns: int) -> int:
    """Unix nanoseconds to a 64-bit NTP timestamp, rounded to the nearest 2**-32 s."""
    ns_since_1900 = ns + NTP_UNIX_EPOCH_OFFSET_SECONDS * NS_PER_SECOND
    ntp = ((ns_since_1900 << NTP_FRACTION_BITS) + NS_PER_SECOND // 2) // NS_PER_SECOND
    return ntp % NTP_MOD


# --- RTCP (RFC 3550 §6.4) -------------------------------------------------------------

RTCP_SR = 200
RTCP_RR = 201
RTCP_HEADER_SIZE = 4  # V P RC(5) | PT | length in 32-bit words minus one
RTCP_WORD_SIZE = 4
RTCP_SSRC_SIZE = 4
RTCP_SENDER_INFO_SIZE = 20  # NTP 64 + RTP ts 32 + packet count 32 + octet count 32
RTCP_REPORT_BLOCK_SIZE = 24
RTCP_SR_SIZE = RTCP_HEADER_SIZE + RTCP_SSRC_SIZE + RTCP_SENDER_INFO_SIZE
RTCP_RR_SIZE = RTCP_HEADER_SIZE + RTCP_SSRC_SIZE
MAX_REPORT_BLOCKS = 31
_RC_MASK = 0x1F

_RTCP_HEADER = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc, ntp, rtp ts, packets, octets
_REPORT_BLOCK = struct.Struct("!IB3sIIII")
_CUMULATIVE_LOST_MIN = -(1 << 23)
_CUMULATIVE_LOST_MAX = (1 << 23) - 1


@dataclass(slots=True, frozen=True)
class ReportBlock:
    """One reception report block. ``cumulative_lost`` is signed 24-bit; ``fraction_lost``
    is the 8-bit fixed-point fraction; ``lsr``/``dlsr`` are the middle 32 bits of NTP and
    1/65536 s units, as on the wire."""

    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0
    highest_seq: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    def pack(self) -> bytes:
        if not _CUMULATIVE_LOST_MIN <= self.cumulative_lost <= _CUMULATIVE_LOST_MAX:
            raise ValueError(f"cumulative lost {self.cumulative_lost} out of 24-bit range")
        lost = (self.cumulative_lost & 0xFFFFFF).to_bytes(3, "big")
        return _REPORT_BLOCK.pack(
            self.ssrc, self.fraction_lost, lost, self.highest_seq, self.jitter, self.lsr, self.dlsr
        )

    @classmethod
    def unpack(cls, data: Buffer, offset: int) -> ReportBlock:
        ssrc, fraction, lost_raw, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        lost = int.from_bytes(lost_raw, "big", signed=True)
        return cls(ssrc, fraction, lost, highest, jitter, lsr, dlsr)


@dataclass(slots=True, frozen=True)
class SenderReport:
    """RTCP SR: the camera's wall clock (``ntp_timestamp``, 64-bit) paired with an RTP
    timestamp. Recorded and compared with the server clock, never trusted blindly."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()

    @property
    def unix_ns(self) -> int:
        """The sender's wall clock as Unix nanoseconds."""
        return ntp_to_unix_ns(self.ntp_timestamp)


@dataclass(slots=True, frozen=True)
class ReceiverReport:
    """RTCP RR: the reporter's SSRC and its reception report blocks."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


def parse_rtcp_packets(data: Buffer) -> list[SenderReport | ReceiverReport]:
    """Every SR and RR of a compound RTCP packet, in order; other packet types are skipped.

    Every packet's header and length are validated (version 2, length within the datagram,
    report blocks within the packet, padding only on the last packet); ``ValueError`` else.
    """
    size = len(data)
    if size < RTCP_HEADER_SIZE:
        raise ValueError(f"RTCP packet too short: {size} bytes")
    out: list[SenderReport | ReceiverReport] = []
    pos = 0
    while pos < size:
        if size - pos < RTCP_HEADER_SIZE:
            raise ValueError(f"RTCP header truncated at offset {pos}")
        b0, packet_type, words = _RTCP_HEADER.unpack_from(data, pos)
        if b0 >> _VERSION_SHIFT != RTP_VERSION:
            raise ValueError(f"unsupported RTCP version {b0 >> _VERSION_SHIFT}")
        length = (words + 1) * RTCP_WORD_SIZE
        if pos + length > size:
            raise ValueError(f"RTCP packet length {length} exceeds remaining {size - pos} bytes")
        end = pos + length
        if b0 & _PADDING_BIT:
            if end != size:
                raise ValueError("RTCP padding on a packet that is not the last")
            padding = data[end - 1]
            if padding == 0 or padding > length - RTCP_HEADER_SIZE:
                raise ValueError(f"RTCP padding {padding} invalid for packet of {length} bytes")
            end -= padding
        count = b0 & _RC_MASK
        if packet_type in (RTCP_SR, RTCP_RR):
            fixed = RTCP_SR_SIZE if packet_type == RTCP_SR else RTCP_RR_SIZE
            needed = fixed + count * RTCP_REPORT_BLOCK_SIZE
            if needed > end - pos:
                raise ValueError(
                    f"RTCP {'SR' if packet_type == RTCP_SR else 'RR'} with {count} report blocks "
                    f"needs {needed} bytes, packet has {end - pos}"
                )
            blocks = tuple(
                ReportBlock.unpack(data, pos + fixed + i * RTCP_REPORT_BLOCK_SIZE) for i in range(count)
            )
            if packet_type == RTCP_SR:
                ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, pos + RTCP_HEADER_SIZE)
                out.append(SenderReport(ssrc, ntp, rtp_ts, packets, octets, blocks))
            else:
                ssrc = int.from_bytes(data[pos + RTCP_HEADER_SIZE : pos + RTCP_RR_SIZE], "big")
                out.append(ReceiverReport(ssrc, blocks))
        pos += length
    return out


def parse_rtcp(data: Buffer) -> list[SenderReport]:
    """The sender reports of a compound RTCP packet (validated as :func:`parse_rtcp_packets`)."""
    return [p for p in parse_rtcp_packets(data) if isinstance(p, SenderReport)]


def _rtcp_header(packet_type: int, count: int, length: int) -> bytes:
    return _RTCP_HEADER.pack(RTP_VERSION << _VERSION_SHIFT | count, packet_type, length // RTCP_WORD_SIZE - 1)


def _check_blocks(reports: Sequence[ReportBlock]) -> None:
    if len(reports) > MAX_REPORT_BLOCKS:
        raise ValueError(f"too many RTCP report blocks: {len(reports)} > {MAX_REPORT_BLOCKS}")


def build_sender_report(
    ssrc: int,
    ntp_timestamp_64: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Sequence[ReportBlock] = (),
) -> bytes:
    """One RTCP SR packet (no SDES: callers that need a compliant compound append one)."""
    _check_blocks(reports)
    length = RTCP_SR_SIZE + len(reports) * RTCP_REPORT_BLOCK_SIZE
    return (
        _rtcp_header(RTCP_SR, len(reports), length)
        + _SENDER_INFO.pack(ssrc, ntp_timestamp_64, rtp_timestamp, packet_count, octet_count)
        + b"".join(r.pack() for r in reports)
    )


def build_receiver_report(ssrc: int, reports: Sequence[ReportBlock] = ()) -> bytes:
    """One RTCP RR packet from ``ssrc`` carrying ``reports`` (usually 0 or 1 block)."""
    _check_blocks(reports)
    length = RTCP_RR_SIZE + len(reports) * RTCP_REPORT_BLOCK_SIZE
    return (
        _rtcp_header(RTCP_RR, len(reports), length)
        + ssrc.to_bytes(RTCP_SSRC_SIZE, "big")
        + b"".join(r.pack() for r in reports)
    )
