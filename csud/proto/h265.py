"""H.265/HEVC over RTP (RFC 7798) and the few H.265 bitstream facts csud needs.

The same shape as :mod:`csud.proto.h264` (read that module's docstring first): a sans-IO
depacketizer (RTP packets in, :mod:`csud.proto.media` events out), a packetizer for tests and
the simulator, and the SPS fields a recorder needs (picture size after the conformance
window, profile/tier/level, chroma format, bit depths). No sockets, clocks, decoding, nor any
import of av/aiortsp/asyncio.

Supported packetization: single NAL unit packets, aggregation packets (AP, type 48) and
fragmentation units (FU, type 49), without decoding order numbers, i.e. what a camera sends
when ``sprop-max-don-diff`` is 0 (absent) and ``sprop-depack-buf-nalus`` is 0: transmission
order is decoding order. Streams that carry DONL/DOND fields are refused at construction,
PACI packets (type 50) and the unspecified types 51-63 per packet, all with ``ValueError``.

H.265 NAL unit header (2 bytes): F(1) Type(6) LayerId(6) TID(3).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from csud.proto.bits import BitReader, unescape_rbsp
from csud.proto.h264 import (
    DEFAULT_CLOCK_RATE,
    DEFAULT_MTU_PAYLOAD,
    MAX_AU_NALS,
    MAX_AU_SIZE,
    MAX_FU_FRAGMENTS,
    MAX_NAL_SIZE,
)
from csud.proto.media import AccessUnit, Gap, MediaEvent, StreamReset
from csud.proto.rtp import RTP_SEQ_MOD, Buffer, parse_header

__all__ = [
    "DEFAULT_CLOCK_RATE",
    "DEFAULT_MTU_PAYLOAD",
    "MAX_AU_NALS",
    "MAX_AU_SIZE",
    "MAX_FU_FRAGMENTS",
    "MAX_NAL_SIZE",
    "H265Depacketizer",
    "H265SpsInfo",
    "is_keyframe_nal",
    "nal_to_rbsp",
    "nal_type",
    "packetize_au",
    "packetize_nal",
    "parse_sps",
]

# --- NAL unit types (H.265 table 7-1, RFC 7798 §4.4) ----------------------------------
NAL_TRAIL_N = 0
NAL_TRAIL_R = 1
NAL_BLA_W_LP = 16
NAL_BLA_W_RADL = 17
NAL_BLA_N_LP = 18
NAL_IDR_W_RADL = 19
NAL_IDR_N_LP = 20
NAL_CRA = 21
MAX_VCL_TYPE = 31  # 0..31 are VCL (some reserved); all start with first_slice_segment_in_pic_flag
NAL_VPS = 32
NAL_SPS = 33
NAL_PPS = 34
NAL_AUD = 35
NAL_EOS = 36
NAL_EOB = 37
NAL_FD = 38
NAL_PREFIX_SEI = 39
NAL_SUFFIX_SEI = 40
MAX_SINGLE_NAL_TYPE = 47
AP = 48
FU = 49
PACI = 50

IRAP_TYPES: Final = frozenset(range(NAL_BLA_W_LP, NAL_CRA + 1))  # 16..21: decoding can start here

UNSUPPORTED_NAL_TYPES: Final = {PACI: "PACI", **{t: "unspecified" for t in range(51, 64)}}

# --- Header layouts ---------------------------------------------------------------------
NAL_HEADER_SIZE = 2  # F(1) Type(6) LayerId(6) TID(3)
NAL_TYPE_SHIFT = 1
NAL_TYPE_MASK = 0x3F
NAL_FORBIDDEN_BIT = 0x80
_TYPE_BITS = NAL_TYPE_MASK << NAL_TYPE_SHIFT  # 0x7E in the first header byte
_KEEP_BITS = 0xFF ^ _TYPE_BITS  # F and the LayerId MSB
_LAYER_ID_MSB = 0x01
_TID_MASK = 0x07

FU_HEADER_SIZE = 1  # S(1) E(1) FuType(6)
FU_PACKET_HEADER_SIZE = NAL_HEADER_SIZE + FU_HEADER_SIZE  # payload header + FU header
FU_START_BIT = 0x80
FU_END_BIT = 0x40

AP_LENGTH_SIZE = 2
AP_HEADER_SIZE = NAL_HEADER_SIZE
MAX_AP_NAL_SIZE = (1 << (8 * AP_LENGTH_SIZE)) - 1

_SEQ_MASK = RTP_SEQ_MOD - 1
_SEQ_HALF = RTP_SEQ_MOD // 2

# NAL types that can only begin an access unit, before its first VCL NAL unit (H.265
# 7.4.2.4.4): AUD, VPS, SPS, PPS, prefix SEI and the reserved 41..44. After a gap decoding
# resumes at one of these or at a slice segment with first_slice_segment_in_pic_flag set.
_AU_START_TYPES: Final = frozenset({NAL_VPS, NAL_SPS, NAL_PPS, NAL_AUD, NAL_PREFIX_SEI, 41, 42, 43, 44})
_FIRST_SLICE_BIT = 0x80  # first_slice_segment_in_pic_flag: first bit after the NAL header

_MALFORMED = Gap(lost_packets=0, reason="malformed")


def nal_type(nal: Buffer) -> int:
    """The type of the NAL unit (or RTP payload) starting at ``nal[0]``; -1 if empty."""
    return (nal[0] >> NAL_TYPE_SHIFT) & NAL_TYPE_MASK if len(nal) else -1


def _starts_picture(ntype: int, third_byte: int) -> bool:
    """Whether a NAL unit of ``ntype`` (whose byte after the 2-byte header is ``third_byte``,
    or -1) begins a picture: no VCL NAL unit of its access unit can precede it."""
    if ntype <= MAX_VCL_TYPE:
        return third_byte >= 0 and bool(third_byte & _FIRST_SLICE_BIT)
    return ntype in _AU_START_TYPES


class H265Depacketizer:
    """RTP packets of one H.265 stream in, :class:`AccessUnit`/:class:`Gap`/:class:`StreamReset`
    events out (appended to ``self.events``; drain with :meth:`take_events`).

    The invariants of :class:`csud.proto.h264.H264Depacketizer` hold, with H.265 terms:

    * An emitted :class:`AccessUnit` is complete as far as RTP can tell (no sequence gap, no
      malformed packet, no unfinished FU inside it) and begins at a picture start. Its
      ``keyframe`` is true when it holds an IRAP slice (types 16-21: BLA, IDR, CRA).
    * After a :class:`Gap` (or at stream start, or after a :class:`StreamReset`) packets are
      dropped until one begins a picture (VPS/SPS/PPS/AUD/prefix SEI, or a slice segment with
      ``first_slice_segment_in_pic_flag``).
    * Memory is bounded by the same ``MAX_NAL_SIZE``, ``MAX_AU_SIZE``, ``MAX_AU_NALS`` and
      ``MAX_FU_FRAGMENTS`` as H.264.
    * Every ``ValueError`` from :meth:`feed` leaves the object usable and has already
      appended ``Gap(0, "malformed")``.

    ``sprop_nals``: the SDP's ``sprop-vps``, ``sprop-sps`` and ``sprop-pps`` NAL units, in any
    order. ``max_don_diff``: the SDP's ``sprop-max-don-diff``; anything but 0 means the packets
    carry decoding order numbers, which this depacketizer refuses (``ValueError``).
    """

    def __init__(
        self,
        sprop_nals: Iterable[bytes] = (),
        clock_rate: int = DEFAULT_CLOCK_RATE,
        max_don_diff: int = 0,
        depack_buf_nalus: int = 0,
    ) -> None:
        if max_don_diff or depack_buf_nalus:
            raise ValueError(
                f"H.265 RTP streams with decoding order numbers (DONL) are not supported: "
                f"sprop-max-don-diff {max_don_diff}, sprop-depack-buf-nalus {depack_buf_nalus}"
            )
        self.clock_rate = clock_rate
        self.events: list[MediaEvent] = []
        self.vps: bytes | None = None
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        for nal in sprop_nals:
            if len(nal) >= NAL_HEADER_SIZE:
                self._learn(bytes(nal), nal_type(nal))
        # Counters (plain ints, exported by the caller).
        self.packets = 0
        self.bytes = 0
        self.lost_packets = 0
        self.late_packets = 0
        self.malformed_packets = 0
        self.access_units = 0
        # Stream state.
        self._ssrc = -1
        self._expected_seq = -1
        self._resync = True
        # Access unit in progress.
        self._au_ts = -1
        self._au_nals: list[bytes] = []
        self._au_size = 0
        self._au_key = False
        # FU in progress (None: none). Parts are joined once, at the end fragment.
        self._fu_parts: list[Buffer] | None = None
        self._fu_size = 0
        self._fu_type = 0

    # -- public ---------------------------------------------------------------------------

    @property
    def ssrc(self) -> int | None:
        """SSRC of the stream being received (None before the first packet)."""
        return None if self._ssrc < 0 else self._ssrc

    @property
    def highest_seq(self) -> int | None:
        """Highest sequence number received so far, 16-bit (for RTCP receiver reports)."""
        return None if self._expected_seq < 0 else (self._expected_seq - 1) & 0xFFFF

    def take_events(self) -> list[MediaEvent]:
        """The events appended since the last call, handed over (the caller owns the list)."""
        events = self.events
        self.events = []
        return events

    def feed(self, buf: Buffer, start: int = 0, end: int | None = None) -> None:
        """Process one whole RTP packet held in ``buf[start:end]`` (payload type not checked).

        The buffer is not retained: every byte kept is copied out.
        """
        if end is None:
            end = len(buf)
        self.packets += 1
        self.bytes += end - start
        try:
            _pt, seq, ts, ssrc, marker, pos, stop = parse_header(buf, start, end)
        except ValueError:
            self._malformed()
            raise
        if ssrc != self._ssrc:
            self._new_ssrc(ssrc)
        expected = self._expected_seq
        if seq != expected and expected >= 0:
            delta = (seq - expected) & _SEQ_MASK
            if delta >= _SEQ_HALF:
                self.late_packets += 1
                return
            self.lost_packets += delta
            self._discard()
            self.events.append(Gap(delta, "loss"))
        self._expected_seq = (seq + 1) & _SEQ_MASK

        if ts != self._au_ts:
            if self._au_nals or self._fu_parts is not None:
                self._close_au()
            self._au_ts = ts
        if pos >= stop:
            self._fail("empty RTP payload")
        if stop - pos < NAL_HEADER_SIZE:
            self._fail(f"RTP payload too short for the NAL unit header: {stop - pos} bytes")
        header0 = buf[pos]
        ntype = (header0 >> NAL_TYPE_SHIFT) & NAL_TYPE_MASK

        if ntype == FU:
            self._fu(buf, pos, stop, header0)
        elif ntype <= MAX_SINGLE_NAL_TYPE:
            if self._fu_parts is not None:
                self._fail(f"NAL unit type {ntype} while a fragmented NAL unit is in progress")
            if self._resync:
                if not _starts_picture(ntype, buf[pos + 2] if stop - pos > NAL_HEADER_SIZE else -1):
                    return
                self._resync = False
            self._check_au(stop - pos)
            self._push(bytes(buf[pos:stop]), ntype)
        elif ntype == AP:
            self._ap(buf, pos, stop)
        else:
            self._fail(f"unsupported NAL unit type {ntype} ({UNSUPPORTED_NAL_TYPES[ntype]})")

        if marker:
            self._close_au()

    # -- internals ------------------------------------------------------------------------

    def _fu(self, buf: Buffer, pos: int, stop: int, header0: int) -> None:
        if stop - pos < FU_PACKET_HEADER_SIZE:
            self._fail(f"FU payload too short: {stop - pos} bytes")
        fu = buf[pos + NAL_HEADER_SIZE]
        ftype = fu & NAL_TYPE_MASK
        parts = self._fu_parts
        body = pos + FU_PACKET_HEADER_SIZE
        if fu & FU_START_BIT:
            if fu & FU_END_BIT:
                self._fail("FU fragment with both start and end bits")
            if ftype > MAX_SINGLE_NAL_TYPE:
                self._fail(f"FU holds NAL unit type {ftype}")
            if parts is not None:
                self._fail("FU start while a fragmented NAL unit is in progress")
            if self._resync:
                if not _starts_picture(ftype, buf[body] if stop > body else -1):
                    return
                self._resync = False
            self._fu_type = ftype
            part = buf[body:stop]
            self._fu_parts = [
                bytes(((header0 & _KEEP_BITS) | (ftype << NAL_TYPE_SHIFT), buf[pos + 1])),
                bytes(part) if type(part) is memoryview else part,
            ]
            self._fu_size = NAL_HEADER_SIZE + stop - body
            self._check_au(self._fu_size)
        elif parts is None:
            # Middle/end of a NAL unit whose start was lost (a Gap is out already) or skipped
            # while resynchronising: it cannot be rebuilt.
            pass
        else:
            if ftype != self._fu_type:
                self._fail(
                    f"FU fragment type {ftype} does not match fragmented NAL unit type {self._fu_type}"
                )
            part = buf[body:stop]
            if type(part) is memoryview:  # a view would alias the caller's buffer
                part = bytes(part)
            parts.append(part)
            size = self._fu_size = self._fu_size + stop - body
            if size > MAX_NAL_SIZE or self._au_size + size > MAX_AU_SIZE or len(parts) > MAX_FU_FRAGMENTS:
                if len(parts) > MAX_FU_FRAGMENTS:
                    self._fail(f"FU NAL unit has more than {MAX_FU_FRAGMENTS} fragments")
                self._check_au(size)
            if fu & FU_END_BIT:
                self._fu_parts = None
                self._push(b"".join(parts), self._fu_type)

    def _ap(self, buf: Buffer, pos: int, stop: int) -> None:
        if self._fu_parts is not None:
            self._fail("AP while a fragmented NAL unit is in progress")
        pos += AP_HEADER_SIZE
        if pos >= stop:
            self._fail("AP payload has no NAL units")
        spans: list[tuple[int, int]] = []
        while pos < stop:
            if stop - pos < AP_LENGTH_SIZE:
                self._fail(f"AP length field truncated: {stop - pos} bytes left")
            size = (buf[pos] << 8) | buf[pos + 1]
            pos += AP_LENGTH_SIZE
            if size < NAL_HEADER_SIZE:
                self._fail(f"AP NAL unit length {size} is shorter than a NAL unit header")
            if size > stop - pos:
                self._fail(f"AP NAL unit length {size} exceeds remaining {stop - pos} bytes")
            ntype = (buf[pos] >> NAL_TYPE_SHIFT) & NAL_TYPE_MASK
            if ntype > MAX_SINGLE_NAL_TYPE:
                self._fail(f"AP holds NAL unit type {ntype}")
            spans.append((pos, pos + size))
            pos += size
        # Validated as a whole before anything is kept: a bad AP adds nothing.
        if self._resync:
            first, first_end = spans[0]
            third = buf[first + 2] if first_end - first > NAL_HEADER_SIZE else -1
            if not _starts_picture((buf[first] >> NAL_TYPE_SHIFT) & NAL_TYPE_MASK, third):
                return
            self._resync = False
        for a, b in spans:
            self._check_au(b - a)
            self._push(bytes(buf[a:b]), (buf[a] >> NAL_TYPE_SHIFT) & NAL_TYPE_MASK)

    def _learn(self, nal: bytes, ntype: int) -> None:
        if ntype == NAL_VPS:
            self.vps = nal
        elif ntype == NAL_SPS:
            self.sps = nal
        elif ntype == NAL_PPS:
            self.pps = nal

    def _push(self, nal: bytes, ntype: int) -> None:
        """Append a complete NAL unit to the access unit in progress (bounds checked before)."""
        self._au_nals.append(nal)
        self._au_size += len(nal)
        if ntype in IRAP_TYPES:
            self._au_key = True
        elif NAL_VPS <= ntype <= NAL_PPS:
            self._learn(nal, ntype)

    def _check_au(self, nal_size: int) -> None:
        if nal_size > MAX_NAL_SIZE:
            self._fail(f"NAL unit size {nal_size} exceeds limit {MAX_NAL_SIZE}")
        if self._au_size + nal_size > MAX_AU_SIZE:
            self._fail(f"access unit size {self._au_size + nal_size} exceeds limit {MAX_AU_SIZE}")
        if len(self._au_nals) >= MAX_AU_NALS:
            self._fail(f"access unit has more than {MAX_AU_NALS} NAL units")

    def _close_au(self) -> None:
        """End of the access unit in progress: emit it, or drop it if a NAL is unfinished."""
        if self._fu_parts is not None:
            self._malformed()
            return
        if self._au_nals:
            self.events.append(AccessUnit(self._au_ts, self._au_nals, self._au_key, self._au_size))
            self.access_units += 1
            self._au_nals = []
            self._au_size = 0
            self._au_key = False

    def _discard(self) -> None:
        """Drop the access unit and the FU in progress; resume at the next picture start."""
        if self._au_nals:
            self._au_nals = []
            self._au_size = 0
            self._au_key = False
        self._fu_parts = None
        self._fu_size = 0
        self._resync = True

    def _malformed(self) -> None:
        self.malformed_packets += 1
        self._discard()
        self.events.append(_MALFORMED)

    def _fail(self, message: str) -> None:
        self._malformed()
        raise ValueError(message)

    def _new_ssrc(self, ssrc: int) -> None:
        if self._ssrc >= 0:
            self._discard()
            self.events.append(StreamReset("ssrc", {"old": self._ssrc, "new": ssrc}))
        self._ssrc = ssrc
        self._expected_seq = -1
        self._au_ts = -1
        self._resync = True


# --- Packetizer (tests and simulator; not the hot path) --------------------------------


def _check_nal(nal: bytes) -> None:
    if len(nal) < NAL_HEADER_SIZE:
        raise ValueError(f"NAL unit of {len(nal)} bytes is shorter than its header")


def packetize_nal(nal: bytes, mtu_payload: int = DEFAULT_MTU_PAYLOAD) -> list[bytes]:
    """RTP payloads carrying one NAL unit: the NAL itself if it fits, else FU fragments."""
    _check_nal(nal)
    if mtu_payload <= FU_PACKET_HEADER_SIZE:
        raise ValueError(f"MTU payload {mtu_payload} too small for FU")
    if len(nal) <= mtu_payload:
        return [nal]
    payload_header = bytes(((nal[0] & _KEEP_BITS) | (FU << NAL_TYPE_SHIFT), nal[1]))
    ntype = nal_type(nal)
    chunk = mtu_payload - FU_PACKET_HEADER_SIZE
    body = memoryview(nal)[NAL_HEADER_SIZE:]
    out = []
    for offset in range(0, len(body), chunk):
        flags = 0
        if offset == 0:
            flags |= FU_START_BIT
        if offset + chunk >= len(body):
            flags |= FU_END_BIT
        out.append(payload_header + bytes((flags | ntype,)) + body[offset : offset + chunk])
    return out


def _layer_id(nal: bytes) -> int:
    return ((nal[0] & _LAYER_ID_MSB) << 5) | (nal[1] >> 3)


def _ap(nals: Sequence[bytes]) -> bytes:
    # RFC 7798 §4.4.2: F is the OR of the aggregated F bits, LayerId and TID their minimum.
    forbidden = NAL_FORBIDDEN_BIT if any(nal[0] & NAL_FORBIDDEN_BIT for nal in nals) else 0
    layer = min(map(_layer_id, nals))
    tid = min(nal[1] & _TID_MASK for nal in nals)
    header = bytes((forbidden | (AP << NAL_TYPE_SHIFT) | (layer >> 5), ((layer & 0x1F) << 3) | tid))
    return header + b"".join(len(nal).to_bytes(AP_LENGTH_SIZE, "big") + nal for nal in nals)


def packetize_au(
    nals: Sequence[bytes], mtu_payload: int = DEFAULT_MTU_PAYLOAD, aggregate: bool = True
) -> list[bytes]:
    """RTP payloads for one access unit, in order; the caller sets the marker on the last.

    With ``aggregate``, runs of consecutive NAL units that fit together in ``mtu_payload``
    (typically VPS+SPS+PPS+SEI) go into one AP; a run of one is sent as a single NAL unit.
    """
    out: list[bytes] = []
    run: list[bytes] = []
    run_size = AP_HEADER_SIZE

    def flush() -> None:
        nonlocal run_size
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(_ap(run))
        run.clear()
        run_size = AP_HEADER_SIZE

    for nal in nals:
        _check_nal(nal)
        entry = AP_LENGTH_SIZE + len(nal)
        if aggregate and AP_HEADER_SIZE + entry <= mtu_payload:
            if run_size + entry > mtu_payload:
                flush()
            run.append(nal)
            run_size += entry
            continue
        flush()
        out.extend(packetize_nal(nal, mtu_payload))
    flush()
    return out


# --- Bitstream helpers ------------------------------------------------------------------


def is_keyframe_nal(nal: Buffer) -> bool:
    """Whether ``nal`` is an IRAP slice (BLA, IDR or CRA: types 16-21), where decoding can start."""
    return len(nal) >= NAL_HEADER_SIZE and nal_type(nal) in IRAP_TYPES


def nal_to_rbsp(nal: Buffer) -> bytes:
    """The RBSP of a NAL unit: the 2-byte header dropped, emulation prevention bytes removed."""
    return unescape_rbsp(nal[NAL_HEADER_SIZE:])


MAX_SUB_LAYERS = 7
_PROFILE_SPACE_LETTERS = ("", "A", "B", "C")
_GENERAL_CONSTRAINT_BITS = 48  # progressive, interlaced, non-packed, frame-only + 44 bits
_SUB_LAYER_PROFILE_BITS = 2 + 1 + 5 + 32 + _GENERAL_CONSTRAINT_BITS  # 88
_LEVEL_BITS = 8
_MAX_PICTURE_SIDE = 1 << 16  # luma samples; level 6.2 allows 8444, anything larger is junk
# (SubWidthC, SubHeightC) by ChromaArrayType (H.265 table 6-1); 0: monochrome or separate planes.
_CHROMA_SUBSAMPLING: Final = {0: (1, 1), 1: (2, 2), 2: (2, 1), 3: (1, 1)}


@dataclass(slots=True, frozen=True)
class H265SpsInfo:
    """What a recorder needs from an H.265 sequence parameter set. ``width``/``height`` are the
    displayed size (conformance window applied) in luma samples; ``coded_width``/``coded_height``
    the decoded picture size."""

    width: int
    height: int
    profile_idc: int
    level_idc: int  # 30 x the level number: 93 is level 3.1
    tier_flag: int = 0  # 0 Main tier, 1 High tier
    profile_space: int = 0
    profile_compatibility_flags: int = 0  # 32 bits, flag j at bit (31 - j)
    constraint_flags: int = 0  # the 48 bits after the compatibility flags
    chroma_format_idc: int = 1
    bit_depth_luma: int = 8
    bit_depth_chroma: int = 8
    max_sub_layers: int = 1
    coded_width: int = 0
    coded_height: int = 0

    @property
    def codec_string(self) -> str:
        """ISO/IEC 14496-15 annex E ``hvc1.P.C.TL.CC`` string, e.g. ``hvc1.1.6.L93.B0``."""
        compat = int(f"{self.profile_compatibility_flags:032b}"[::-1], 2)  # bit-reversed, no zeros
        constraints = list(self.constraint_flags.to_bytes(6, "big"))
        while constraints and constraints[-1] == 0:
            constraints.pop()
        parts = [
            "hvc1",
            f"{_PROFILE_SPACE_LETTERS[self.profile_space]}{self.profile_idc}",
            f"{compat:X}",
            f"{'H' if self.tier_flag else 'L'}{self.level_idc}",
            *(f"{b:X}" for b in constraints),
        ]
        return ".".join(parts)


def _profile_tier_level(r: BitReader, max_sub_layers_minus1: int) -> tuple[int, int, int, int, int, int]:
    """profile_tier_level(1, max_sub_layers_minus1) (H.265 7.3.3): the general fields;
    sub-layer fields skipped. Returns (space, tier, profile_idc, compat, constraints, level)."""
    space = r.u(2)
    tier = r.u(1)
    profile_idc = r.u(5)
    compat = r.u(32)
    constraints = r.u(_GENERAL_CONSTRAINT_BITS)
    level = r.u(_LEVEL_BITS)
    present = [(r.u(1), r.u(1)) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        r.skip(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits
    for profile_present, level_present in present:
        if profile_present:
            r.skip(_SUB_LAYER_PROFILE_BITS)
        if level_present:
            r.skip(_LEVEL_BITS)
    return space, tier, profile_idc, compat, constraints, level


def parse_sps(sps: Buffer) -> H265SpsInfo:
    """Decode picture size, profile/tier/level, chroma format and bit depths of an H.265 SPS
    NAL unit (with its 2-byte header). Handles sub-layers in profile_tier_level and the
    conformance window. ``ValueError`` on anything malformed."""
    if len(sps) < NAL_HEADER_SIZE + 3 or nal_type(sps) != NAL_SPS:
        raise ValueError("not an H.265 SPS NAL unit")
    r = BitReader(nal_to_rbsp(sps))
    r.skip(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = r.u(3)
    if max_sub_layers_minus1 >= MAX_SUB_LAYERS:
        raise ValueError(f"SPS sps_max_sub_layers_minus1 {max_sub_layers_minus1} invalid")
    r.skip(1)  # sps_temporal_id_nesting_flag
    space, tier, profile_idc, compat, constraints, level = _profile_tier_level(r, max_sub_layers_minus1)
    sps_id = r.ue()
    if sps_id > 15:
        raise ValueError(f"SPS sps_seq_parameter_set_id {sps_id} invalid")
    chroma_format_idc = r.ue()
    if chroma_format_idc > 3:
        raise ValueError(f"SPS chroma_format_idc {chroma_format_idc} invalid")
    separate_colour_plane = r.u(1) if chroma_format_idc == 3 else 0
    coded_width = r.ue()
    coded_height = r.ue()
    if not 0 < coded_width <= _MAX_PICTURE_SIDE or not 0 < coded_height <= _MAX_PICTURE_SIDE:
        raise ValueError(f"SPS picture size {coded_width}x{coded_height} invalid")
    width, height = coded_width, coded_height
    if r.u(1):  # conformance_window_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        sub_width, sub_height = _CHROMA_SUBSAMPLING[0 if separate_colour_plane else chroma_format_idc]
        width -= sub_width * (left + right)
        height -= sub_height * (top + bottom)
        if width <= 0 or height <= 0:
            raise ValueError("SPS conformance window leaves an empty picture")
    bit_depth_luma = r.ue() + 8
    bit_depth_chroma = r.ue() + 8
    if bit_depth_luma > 16 or bit_depth_chroma > 16:
        raise ValueError(f"SPS bit depth {bit_depth_luma}/{bit_depth_chroma} invalid")
    return H265SpsInfo(
        width=width,
        height=height,
        profile_idc=profile_idc,
        level_idc=level,
        tier_flag=tier,
        profile_space=space,
        profile_compatibility_flags=compat,
        constraint_flags=constraints,
        chroma_format_idc=chroma_format_idc,
        bit_depth_luma=bit_depth_luma,
        bit_depth_chroma=bit_depth_chroma,
        max_sub_layers=max_sub_layers_minus1 + 1,
        coded_width=coded_width,
        coded_height=coded_height,
    )
