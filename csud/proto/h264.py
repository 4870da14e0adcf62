"""H.264 over RTP (RFC 6184) and the few H.264 bitstream facts csud needs.

What belongs here: NAL unit type constants, the receive-side depacketizer (a sans-IO state
machine, the hot path of the daemon: RTP packets in, :mod:`csud.proto.media` events out),
the send-side packetizer used by the camera simulator, Annex B splitting and the SPS fields
a recorder needs (picture size, profile, level). What does not: sockets, clocks, timestamps
mapped to wall time (``timeline.py``), decoding, and any import of av/aiortsp/asyncio.

Supported packetization: single NAL unit packets, STAP-A and FU-A (packetization-mode 0
and 1, which is what IP cameras send). STAP-B, MTAP and FU-B (interleaved mode) are
refused with ``ValueError``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from csud.proto.bits import BitReader as _BitReader
from csud.proto.bits import unescape_rbsp
from csud.proto.media import AccessUnit, Gap, MediaEvent, StreamReset
from csud.proto.rtp import RTP_HEADER_SIZE, RTP_SEQ_MOD, RTP_VERSION, Buffer, parse_header

# --- NAL unit types (H.264 table 7-1, RFC 6184 table 1) --------------------------------
NAL_SLICE = 1
NAL_SLICE_DPA = 2
NAL_SLICE_DPB = 3
NAL_SLICE_DPC = 4
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_END_OF_SEQUENCE = 10
NAL_END_OF_STREAM = 11
NAL_FILLER = 12
MAX_SINGLE_NAL_TYPE = 23
STAP_A = 24
STAP_B = 25
MTAP16 = 26
MTAP24 = 27
FU_A = 28
FU_B = 29

UNSUPPORTED_NAL_TYPES: Final = {
    0: "reserved",
    STAP_B: "STAP-B",
    MTAP16: "MTAP16",
    MTAP24: "MTAP24",
    FU_B: "FU-B",
    30: "reserved",
    31: "reserved",
}

# --- Header layouts ---------------------------------------------------------------------
NAL_HEADER_SIZE = 1  # F(1) NRI(2) type(5)
NAL_TYPE_MASK = 0x1F
NAL_NRI_MASK = 0x60
NAL_FORBIDDEN_BIT = 0x80
NAL_F_NRI_MASK = NAL_FORBIDDEN_BIT | NAL_NRI_MASK

FU_HEADER_SIZE = 1  # S(1) E(1) R(1) type(5)
FU_A_HEADER_SIZE = NAL_HEADER_SIZE + FU_HEADER_SIZE  # FU indicator + FU header
FU_START_BIT = 0x80
FU_END_BIT = 0x40

STAP_LENGTH_SIZE = 2
STAP_A_HEADER_SIZE = NAL_HEADER_SIZE
MAX_STAP_NAL_SIZE = (1 << (8 * STAP_LENGTH_SIZE)) - 1

_SEQ_MASK = RTP_SEQ_MOD - 1
_SEQ_HALF = RTP_SEQ_MOD // 2

# The header every camera sends (version 2, no padding, extension or CSRC) is parsed inline in
# ``feed``: a function call per packet is a measurable share of the hot path. Any other first
# byte goes through ``parse_header``, which validates it and raises the exact error.
_PLAIN_RTP_FIRST_BYTE = RTP_VERSION << 6
_RTP_MARKER_BIT = 0x80
_unpack_rtp_header = struct.Struct("!BBHII").unpack_from

# --- Memory bounds: a hostile or broken camera can never make one stream grow past these --
MAX_NAL_SIZE = 8 << 20
MAX_AU_SIZE = 32 << 20
MAX_AU_NALS = 4096  # far above any real slice count, bounds per-object overhead
MAX_FU_FRAGMENTS = 1 << 16  # an 8 MiB NAL in 1400-byte fragments needs ~6,000

DEFAULT_CLOCK_RATE = 90_000
DEFAULT_MTU_PAYLOAD = 1400

# NAL types that can only appear at the start of an access unit, before its first slice
# (H.264 7.4.1.2.3). After a gap, decoding resumes at one of these or at a slice whose
# first_mb_in_slice is 0, i.e. where no slice of the picture can have been lost.
_AU_START_TYPES: Final = frozenset({NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD, 13, 14, 15, 16, 17, 18})
_SLICE_HEADER_TYPES: Final = frozenset({NAL_SLICE, NAL_SLICE_DPA, NAL_IDR})
_FIRST_MB_ZERO_BIT = 0x80  # first_mb_in_slice = ue(v) 0 is the single bit "1"

_MALFORMED = Gap(lost_packets=0, reason="malformed")


def _starts_picture(ntype: int, second_byte: int) -> bool:
    """Whether a NAL unit of ``ntype`` (whose byte after the header is ``second_byte``, or
    -1) begins a picture: no VCL NAL of its access unit can precede it."""
    if ntype in _SLICE_HEADER_TYPES:
        return second_byte >= 0 and bool(second_byte & _FIRST_MB_ZERO_BIT)
    return ntype in _AU_START_TYPES


class H264Depacketizer:
    """RTP packets of one H.264 stream in, :class:`AccessUnit`/:class:`Gap`/:class:`StreamReset`
    events out (appended to ``self.events``; drain with :meth:`take_events`).

    Invariants:

    * An emitted :class:`AccessUnit` is complete as far as RTP can tell: no sequence gap, no
      malformed packet and no unfinished FU-A inside it, and it begins at a picture start.
      Anything else is discarded and announced by a :class:`Gap` before the next unit.
    * After a :class:`Gap` (or at stream start, or after a :class:`StreamReset`) packets are
      dropped until one begins a picture (an SEI/SPS/PPS/AUD NAL unit, or a slice with
      ``first_mb_in_slice == 0``), so a unit that lost its first slices is never emitted.
    * Memory is bounded: one NAL unit <= ``MAX_NAL_SIZE``, one access unit <= ``MAX_AU_SIZE``
      and ``MAX_AU_NALS``; ``self.events`` grows only until the caller drains it.
    * Every ``ValueError`` from :meth:`feed` leaves the object usable and has already
      appended ``Gap(0, "malformed")``; the next packet is processed normally.
    """

    def __init__(self, sprop_nals: Iterable[bytes] = (), clock_rate: int = DEFAULT_CLOCK_RATE) -> None:
        self.clock_rate = clock_rate
        self.events: list[MediaEvent] = []
        self.sps: bytes | None = None
        self.pps: bytes | None = None
        for nal in sprop_nals:
            if nal:
                ntype = nal[0] & NAL_TYPE_MASK
                if ntype == NAL_SPS:
                    self.sps = bytes(nal)
                elif ntype == NAL_PPS:
                    self.pps = bytes(nal)
        # Counters (plain ints, exported by the caller).
        self.packets = 0
        self.bytes = 0
        self.lost_packets = 0
        self.late_packets = 0
        self.malformed_packets = 0
        self.access_units = 0
        # Stream state.
        self._ssrc = -1
        self._expected_seq = -1  # -1: not synchronised (first packet sets it)
        self._resync = True  # dropping until a picture start
        # Access unit in progress.
        self._au_ts = -1
        self._au_nals: list[bytes] = []
        self._au_size = 0
        self._au_key = False
        # FU-A in progress (None: none). Parts are joined once, at the end fragment.
        self._fu_parts: list[Buffer] | None = None
        self._fu_size = 0
        self._fu_type = 0

    # -- public ---------------------------------------------------------------------------

    def take_events(self) -> list[MediaEvent]:
        """The events appended since the last call, handed over (the caller owns the list).

        Cheapest when the caller tests ``if depacketizer.events:`` first, as most packets
        (FU-A middles) produce none.
        """
        events = self.events
        self.events = []
        return events

    @property
    def ssrc(self) -> int | None:
        """SSRC of the stream being received (None before the first packet)."""
        return None if self._ssrc < 0 else self._ssrc

    @property
    def highest_seq(self) -> int | None:
        """Highest sequence number received so far, 16-bit (for RTCP receiver reports)."""
        return None if self._expected_seq < 0 else (self._expected_seq - 1) & _SEQ_MASK

    def feed(self, buf: Buffer, start: int = 0, end: int | None = None) -> None:
        """Process one whole RTP packet held in ``buf[start:end]`` (payload type not checked).

        The buffer is not retained: every byte kept is copied out, so the caller may reuse it.
        """
        if end is None:
            end = len(buf)
        self.packets += 1
        self.bytes += end - start
        if start >= 0 and start + RTP_HEADER_SIZE <= end <= len(buf) and buf[start] == _PLAIN_RTP_FIRST_BYTE:
            _b0, marker, seq, ts, ssrc = _unpack_rtp_header(buf, start)
            marker &= _RTP_MARKER_BIT
            pos = start + RTP_HEADER_SIZE
            stop = end
        else:
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
        indicator = buf[pos]
        ntype = indicator & NAL_TYPE_MASK

        if ntype == FU_A:
            if stop - pos < FU_A_HEADER_SIZE:
                self._fail(f"FU-A payload too short: {stop - pos} bytes")
            fu = buf[pos + 1]
            parts = self._fu_parts
            if fu & FU_START_BIT:
                if fu & FU_END_BIT:
                    self._fail("FU-A fragment with both start and end bits")
                if parts is not None:
                    self._fail("FU-A start while a fragmented NAL unit is in progress")
                ftype = fu & NAL_TYPE_MASK
                if self._resync:
                    second = buf[pos + 2] if stop - pos > FU_A_HEADER_SIZE else -1
                    if not _starts_picture(ftype, second):
                        return
                    self._resync = False
                self._fu_type = ftype
                self._fu_parts = [
                    bytes(((indicator & NAL_F_NRI_MASK) | ftype,)),
                    self._copy(buf, pos + 2, stop),
                ]
                self._fu_size = NAL_HEADER_SIZE + stop - pos - FU_A_HEADER_SIZE
                self._check_au(self._fu_size)
            elif parts is None:
                # Middle/end of a NAL whose start was lost (a Gap is out already) or skipped
                # while resynchronising: part of a NAL unit that cannot be rebuilt.
                pass
            else:
                if fu & NAL_TYPE_MASK != self._fu_type:
                    self._fail(
                        f"FU-A fragment type {fu & NAL_TYPE_MASK} does not match "
                        f"fragmented NAL unit type {self._fu_type}"
                    )
                part = buf[pos + 2 : stop]
                if type(part) is memoryview:  # a view would alias the caller's buffer
                    part = bytes(part)
                parts.append(part)
                size = self._fu_size = self._fu_size + stop - pos - FU_A_HEADER_SIZE
                if size > MAX_NAL_SIZE or self._au_size + size > MAX_AU_SIZE or len(parts) > MAX_FU_FRAGMENTS:
                    if len(parts) > MAX_FU_FRAGMENTS:
                        self._fail(f"FU-A NAL unit has more than {MAX_FU_FRAGMENTS} fragments")
                    self._check_au(size)
                if fu & FU_END_BIT:
                    self._fu_parts = None
                    self._push(b"".join(parts), self._fu_type)
        elif 0 < ntype <= MAX_SINGLE_NAL_TYPE:
            if self._fu_parts is not None:
                self._fail(f"NAL unit type {ntype} while a fragmented NAL unit is in progress")
            if self._resync:
                if not _starts_picture(ntype, buf[pos + 1] if stop - pos > 1 else -1):
                    return
                self._resync = False
            self._check_au(stop - pos)
            self._push(bytes(buf[pos:stop]), ntype)
        elif ntype == STAP_A:
            self._stap_a(buf, pos, stop)
        else:
            self._fail(f"unsupported NAL unit type {ntype} ({UNSUPPORTED_NAL_TYPES[ntype]})")

        if marker:
            self._close_au()

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _copy(buf: Buffer, start: int, stop: int) -> Buffer:
        # Slicing bytes/bytearray copies; a memoryview slice would alias the caller's buffer.
        part = buf[start:stop]
        return bytes(part) if type(part) is memoryview else part

    def _stap_a(self, buf: Buffer, pos: int, stop: int) -> None:
        if self._fu_parts is not None:
            self._fail("STAP-A while a fragmented NAL unit is in progress")
        pos += STAP_A_HEADER_SIZE
        if pos >= stop:
            self._fail("STAP-A payload has no NAL units")
        spans: list[tuple[int, int]] = []
        while pos < stop:
            if stop - pos < STAP_LENGTH_SIZE:
                self._fail(f"STAP-A length field truncated: {stop - pos} bytes left")
            size = (buf[pos] << 8) | buf[pos + 1]
            pos += STAP_LENGTH_SIZE
            if size == 0:
                self._fail("STAP-A NAL unit length 0")
            if size > stop - pos:
                self._fail(f"STAP-A NAL unit length {size} exceeds remaining {stop - pos} bytes")
            ntype = buf[pos] & NAL_TYPE_MASK
            if ntype == 0 or ntype > MAX_SINGLE_NAL_TYPE:
                self._fail(f"STAP-A holds NAL unit type {ntype}")
            spans.append((pos, pos + size))
            pos += size
        # Validated as a whole before anything is kept: a bad STAP-A adds nothing.
        if self._resync:
            first, first_end = spans[0]
            second = buf[first + 1] if first_end - first > 1 else -1
            if not _starts_picture(buf[first] & NAL_TYPE_MASK, second):
                return
            self._resync = False
        for a, b in spans:
            self._check_au(b - a)
            self._push(bytes(buf[a:b]), buf[a] & NAL_TYPE_MASK)

    def _push(self, nal: bytes, ntype: int) -> None:
        """Append a complete NAL unit to the access unit in progress (bounds checked before)."""
        self._au_nals.append(nal)
        self._au_size += len(nal)
        if ntype == NAL_IDR:
            self._au_key = True
        elif ntype == NAL_SPS:
            self.sps = nal
        elif ntype == NAL_PPS:
            self.pps = nal

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
            # The picture ended (marker or new timestamp) inside a fragmented NAL unit.
            self._malformed()
            return
        if self._au_nals:
            self.events.append(AccessUnit(self._au_ts, self._au_nals, self._au_key, self._au_size))
            self.access_units += 1
            self._au_nals = []
            self._au_size = 0
            self._au_key = False

    def _discard(self) -> None:
        """Drop the access unit and the FU-A in progress; resume at the next picture start."""
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


# --- Packetizer (simulator side; not the hot path) -----------------------------------


def packetize_nal(nal: bytes, mtu_payload: int = DEFAULT_MTU_PAYLOAD) -> list[bytes]:
    """RTP payloads carrying one NAL unit: the NAL itself if it fits, else FU-A fragments."""
    if not nal:
        raise ValueError("empty NAL unit")
    if mtu_payload <= FU_A_HEADER_SIZE:
        raise ValueError(f"MTU payload {mtu_payload} too small for FU-A")
    if len(nal) <= mtu_payload:
        return [nal]
    indicator = bytes(((nal[0] & NAL_F_NRI_MASK) | FU_A,))
    ntype = nal[0] & NAL_TYPE_MASK
    chunk = mtu_payload - FU_A_HEADER_SIZE
    body = memoryview(nal)[NAL_HEADER_SIZE:]
    out = []
    for offset in range(0, len(body), chunk):
        flags = 0
        if offset == 0:
            flags |= FU_START_BIT
        if offset + chunk >= len(body):
            flags |= FU_END_BIT
        out.append(indicator + bytes((flags | ntype,)) + body[offset : offset + chunk])
    return out


def _stap_a(nals: Sequence[bytes]) -> bytes:
    f_nri = max(nal[0] & NAL_NRI_MASK for nal in nals) | (
        NAL_FORBIDDEN_BIT if any(nal[0] & NAL_FORBIDDEN_BIT for nal in nals) else 0
    )
    return bytes((f_nri | STAP_A,)) + b"".join(
        len(nal).to_bytes(STAP_LENGTH_SIZE, "big") + nal for nal in nals
    )


def packetize_au(
    nals: Sequence[bytes], mtu_payload: int = DEFAULT_MTU_PAYLOAD, aggregate: bool = True
) -> list[bytes]:
    """RTP payloads for one access unit, in order; the caller sets the marker on the last.

    With ``aggregate``, runs of consecutive NAL units that fit together in ``mtu_payload``
    (typically SPS+PPS+SEI) go into one STAP-A; a run of one is sent as a single NAL unit.
    """
    out: list[bytes] = []
    run: list[bytes] = []
    run_size = STAP_A_HEADER_SIZE

    def flush() -> None:
        nonlocal run_size
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(_stap_a(run))
        run.clear()
        run_size = STAP_A_HEADER_SIZE

    for nal in nals:
        if not nal:
            raise ValueError("empty NAL unit")
        entry = STAP_LENGTH_SIZE + len(nal)
        if aggregate and STAP_A_HEADER_SIZE + entry <= mtu_payload:
            if run_size + entry > mtu_payload:
                flush()
            run.append(nal)
            run_size += entry
            continue
        flush()
        out.extend(packetize_nal(nal, mtu_payload))
    flush()
    return out


# --- Annex B and bitstream helpers ---------------------------------------------------

_START_CODE = b"\x00\x00\x01"


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units (without start codes) of an Annex B byte stream.

    Accepts 3- and 4-byte start codes; bytes before the first start code are ignored and
    trailing zero bytes of each NAL unit (trailing_zero_8bits, or the leading zero of a
    4-byte start code) are stripped. Empty NAL units are skipped.
    """
    out: list[bytes] = []
    pos = data.find(_START_CODE)
    while pos >= 0:
        begin = pos + len(_START_CODE)
        pos = data.find(_START_CODE, begin)
        nal = data[begin : pos if pos >= 0 else len(data)].rstrip(b"\x00")
        if nal:
            out.append(nal)
    return out


def is_keyframe_nal(nal: Buffer) -> bool:
    """Whether ``nal`` is an IDR slice, where decoding can start."""
    return len(nal) > 0 and nal[0] & NAL_TYPE_MASK == NAL_IDR


def nal_to_rbsp(nal: Buffer) -> bytes:
    """The RBSP of a NAL unit: header byte dropped, emulation prevention bytes removed."""
    return unescape_rbsp(nal[NAL_HEADER_SIZE:])


@dataclass(slots=True, frozen=True)
class SpsInfo:
    """What a recorder needs from a sequence parameter set. ``width``/``height`` are the
    displayed (cropped) size in luma samples."""

    width: int
    height: int
    profile_idc: int
    level_idc: int
    constraint_flags: int = 0
    chroma_format_idc: int = 1

    @property
    def codec_string(self) -> str:
        """RFC 6381 ``avc1.PPCCLL`` string."""
        return f"avc1.{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"


# Profiles whose SPS carries chroma_format_idc, bit depths and scaling matrices (7.3.2.1.1).
_HIGH_PROFILES: Final = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
_MB_SIZE = 16
_MAX_MBS = 1 << 16  # per dimension; far beyond level 6.2 (8K is 480 MBs)


def _skip_scaling_list(reader: _BitReader, size: int) -> None:
    last_scale = next_scale = 8
    for _ in range(size):
        if next_scale:
            delta = reader.se()
            if not -128 <= delta <= 127:
                raise ValueError(f"SPS scaling list delta {delta} out of range")
            next_scale = (last_scale + delta + 256) % 256
        last_scale = next_scale or last_scale


def parse_sps(sps: Buffer) -> SpsInfo:
    """Decode the picture size, profile and level of an SPS NAL unit (with its header byte).

    Handles the high profiles (chroma format, bit depth, scaling lists), interlaced coding
    (``frame_mbs_only_flag``) and frame cropping. ``ValueError`` on anything malformed.
    """
    if len(sps) < NAL_HEADER_SIZE + 3 or sps[0] & NAL_TYPE_MASK != NAL_SPS:
        raise ValueError("not an SPS NAL unit")
    r = _BitReader(nal_to_rbsp(sps))
    profile_idc = r.u(8)
    constraint_flags = r.u(8)
    level_idc = r.u(8)
    r.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_colour_plane = 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc > 3:
            raise ValueError(f"SPS chroma_format_idc {chroma_format_idc} invalid")
        if chroma_format_idc == 3:
            separate_colour_plane = r.u(1)
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.u(1):
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        r.u(1)  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        cycle = r.ue()
        if cycle > 255:
            raise ValueError(f"SPS num_ref_frames_in_pic_order_cnt_cycle {cycle} invalid")
        for _ in range(cycle):
            r.se()
    elif poc_type != 2:
        raise ValueError(f"SPS pic_order_cnt_type {poc_type} invalid")
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_map_units = r.ue() + 1
    frame_mbs_only = r.u(1)
    if width_mbs > _MAX_MBS or height_map_units > _MAX_MBS:
        raise ValueError(f"SPS picture of {width_mbs}x{height_map_units} macroblocks too large")
    if not frame_mbs_only:
        r.u(1)  # mb_adaptive_frame_field_flag
    r.u(1)  # direct_8x8_inference_flag
    width = width_mbs * _MB_SIZE
    height = (2 - frame_mbs_only) * height_map_units * _MB_SIZE
    if r.u(1):  # frame_cropping_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
        if chroma_array_type == 0:
            crop_x, crop_y = 1, 2 - frame_mbs_only
        else:
            sub_width = 1 if chroma_array_type == 3 else 2
            sub_height = 2 if chroma_array_type == 1 else 1
            crop_x, crop_y = sub_width, sub_height * (2 - frame_mbs_only)
        width -= crop_x * (left + right)
        height -= crop_y * (top + bottom)
        if width <= 0 or height <= 0:
            raise ValueError("SPS cropping leaves an empty picture")
    return SpsInfo(width, height, profile_idc, level_idc, constraint_flags, chroma_format_idc)
