"""What carrying H.264 (RFC 6184) and H.265 (RFC 7798) over RTP has in common.

The two payload formats have one structure: single NAL unit packets; an aggregation packet
(STAP-A, AP) whose NAL units are each led by a 16-bit size; a fragmentation unit (FU-A, FU)
whose payload header is a NAL unit header holding the FU type, then one FU header byte
S(1) E(1) and the fragmented NAL unit's type. They differ in the NAL unit header (1 or 2
bytes, where the type is), in type numbers, names and error messages, and in which NAL unit
types are keyframes, parameter sets or may begin a picture.

What belongs here: :class:`PayloadFormat`, the table of those differences (one instance per
codec, in ``h264.py`` and ``h265.py``), with the packetizer it drives (tests and the camera
simulator); and :class:`RtpDepacketizer`, the receive-side sans-IO state machine both codecs'
depacketizers are (RTP packets in, :mod:`csud.media.units` events out: the hot path of the
daemon): RTP header, SSRC changes, sequence tracking, access unit boundaries, resynchronisation
at a picture start, reassembly and the memory bounds. What does not: the codec facts
themselves (type constants, the tables, SPS parsing), sockets, clocks, and any import of
av/aiortsp/asyncio.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from csud.media.rtp import RTP_HEADER_SIZE, RTP_SEQ_MOD, RTP_VERSION, Buffer, parse_header
from csud.media.units import AccessUnit, Gap, MediaEvent, StreamReset

__all__ = [
    "DEFAULT_CLOCK_RATE",
    "DEFAULT_MTU_PAYLOAD",
    "FU_END_BIT",
    "FU_HEADER_SIZE",
    "FU_START_BIT",
    "MAX_AU_NALS",
    "MAX_AU_SIZE",
    "MAX_FU_FRAGMENTS",
    "MAX_NAL_SIZE",
    "NAL_SIZE_FIELD_SIZE",
    "PayloadFormat",
    "RtpDepacketizer",
]

DEFAULT_CLOCK_RATE = 90_000
DEFAULT_MTU_PAYLOAD = 1400

# --- Memory bounds: a hostile or broken camera can never make one stream grow past these --
MAX_NAL_SIZE = 8 << 20
MAX_AU_SIZE = 32 << 20
MAX_AU_NALS = 4096  # far above any real slice count, bounds per-object overhead
MAX_FU_FRAGMENTS = 1 << 16  # an 8 MiB NAL in 1400-byte fragments needs ~6,000

# --- Layouts common to both formats -----------------------------------------------------
FU_HEADER_SIZE = 1  # S(1) E(1) then R(1) type(5) in H.264, FuType(6) in H.265
FU_START_BIT = 0x80
FU_END_BIT = 0x40
NAL_SIZE_FIELD_SIZE = 2  # before each NAL unit of an aggregation packet
# The first bit after the NAL unit header of a slice: first_mb_in_slice == 0 (ue(v) 0 is the
# single bit "1") in H.264, first_slice_segment_in_pic_flag in H.265.
_FIRST_SLICE_BIT = 0x80

_SEQ_MASK = RTP_SEQ_MOD - 1
_SEQ_HALF = RTP_SEQ_MOD // 2

# The header every camera sends (version 2, no padding, extension or CSRC) is parsed inline in
# ``feed``: a function call per packet is a measurable share of the hot path. Any other first
# byte goes through ``parse_header``, which validates it and raises the exact error.
_PLAIN_RTP_FIRST_BYTE = RTP_VERSION << 6
_RTP_MARKER_BIT = 0x80
_unpack_rtp_header = struct.Struct("!BBHII").unpack_from

_MALFORMED = Gap(lost_packets=0, reason="malformed")


@dataclass(slots=True, frozen=True, eq=False)
class PayloadFormat:
    """What :class:`RtpDepacketizer` and the packetizer need to know of one codec's RTP
    payload format.

    A slotted instance rather than class attributes of the depacketizer: ``feed`` reads a few
    of these per packet, and a slot is cheaper to load than a class attribute through an
    instance (CPython 3.11).
    """

    nal_header_size: int
    type_shift: int  # the NAL unit type is (first header byte >> type_shift) & type_mask
    type_mask: int  # also the type field of the FU header
    min_single_type: int  # NAL unit types carried alone or aggregated: min..max inclusive
    max_single_type: int
    fu_type: int
    fu_name: str
    max_fu_nal_type: int  # a larger type in an FU start fragment is refused
    aggregation_type: int
    aggregation_name: str
    aggregated_too_short: str  # error message, formatted with the NAL unit ``size``
    # The NAL unit header of an aggregation packet holding these NAL units (packetizer).
    aggregation_header: Callable[[Sequence[bytes]], bytes]
    nal_too_short: str  # packetizer error message, formatted with the NAL unit ``size``
    unsupported_types: Mapping[int, str]  # every other payload type, with its name
    key_types: frozenset[int]  # an access unit holding one of these is a keyframe
    parameter_set_types: frozenset[int]  # VPS/SPS/PPS (:class:`csud.media.codec.Codec` orders them)
    # A picture starts at a NAL unit of ``picture_start_types``, or of ``slice_types`` when
    # its first slice bit is set; no VCL NAL unit of the access unit can precede either.
    slice_types: frozenset[int]
    picture_start_types: frozenset[int]

    # Derived, for the hot path: the NAL unit type of each possible first header byte (a tuple
    # index is cheaper than the shift and mask it replaces), where an FU's payload begins, and
    # the bits of the first header byte that are not the type.
    nal_types: tuple[int, ...] = field(init=False, repr=False)
    fu_payload_offset: int = field(init=False, repr=False)
    not_type_bits: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Frozen: object.__setattr__ is the one way to set a derived field.
        types = tuple((byte >> self.type_shift) & self.type_mask for byte in range(256))
        object.__setattr__(self, "nal_types", types)
        object.__setattr__(self, "fu_payload_offset", self.nal_header_size + FU_HEADER_SIZE)
        object.__setattr__(self, "not_type_bits", 0xFF ^ (self.type_mask << self.type_shift))

    def nal_type(self, first_byte: int) -> int:
        """The type of the NAL unit whose header begins with ``first_byte``."""
        return self.nal_types[first_byte]

    def with_type(self, buf: Buffer, pos: int, ntype: int) -> bytes:
        """The NAL unit header at ``buf[pos]`` with its type replaced by ``ntype``."""
        first = (buf[pos] & self.not_type_bits) | (ntype << self.type_shift)
        return bytes((first,)) + buf[pos + 1 : pos + self.nal_header_size]

    def starts_picture(self, ntype: int, next_byte: int) -> bool:
        """Whether a NAL unit of ``ntype`` (whose byte after the header is ``next_byte``, or
        -1) begins a picture."""
        if ntype in self.slice_types:
            return next_byte >= 0 and bool(next_byte & _FIRST_SLICE_BIT)
        return ntype in self.picture_start_types

    # -- packetizer (tests and simulator; not the hot path) --------------------------------

    def packetize_nal(self, nal: bytes, mtu_payload: int = DEFAULT_MTU_PAYLOAD) -> list[bytes]:
        """RTP payloads carrying one NAL unit: the NAL itself if it fits, else FU fragments."""
        self._check_nal(nal)
        fu_packet_header_size = self.nal_header_size + FU_HEADER_SIZE
        if mtu_payload <= fu_packet_header_size:
            raise ValueError(f"MTU payload {mtu_payload} too small for {self.fu_name}")
        if len(nal) <= mtu_payload:
            return [nal]
        payload_header = self.with_type(nal, 0, self.fu_type)
        ntype = self.nal_type(nal[0])
        chunk = mtu_payload - fu_packet_header_size
        body = memoryview(nal)[self.nal_header_size :]
        out = []
        for offset in range(0, len(body), chunk):
            flags = 0
            if offset == 0:
                flags |= FU_START_BIT
            if offset + chunk >= len(body):
                flags |= FU_END_BIT
            out.append(payload_header + bytes((flags | ntype,)) + body[offset : offset + chunk])
        return out

    def packetize_au(
        self, nals: Sequence[bytes], mtu_payload: int = DEFAULT_MTU_PAYLOAD, aggregate: bool = True
    ) -> list[bytes]:
        """RTP payloads for one access unit, in order; the caller sets the marker on the last.

        With ``aggregate``, runs of consecutive NAL units that fit together in ``mtu_payload``
        go into one aggregation packet; a run of one is sent as a single NAL unit.
        """
        out: list[bytes] = []
        run: list[bytes] = []
        header_size = self.nal_header_size  # an aggregation packet's own NAL unit header
        run_size = header_size

        def flush() -> None:
            nonlocal run_size
            if len(run) == 1:
                out.append(run[0])
            elif run:
                sized = (len(nal).to_bytes(NAL_SIZE_FIELD_SIZE, "big") + nal for nal in run)
                out.append(self.aggregation_header(run) + b"".join(sized))
            run.clear()
            run_size = header_size

        for nal in nals:
            self._check_nal(nal)
            entry = NAL_SIZE_FIELD_SIZE + len(nal)
            if aggregate and header_size + entry <= mtu_payload:
                if run_size + entry > mtu_payload:
                    flush()
                run.append(nal)
                run_size += entry
                continue
            flush()
            out.extend(self.packetize_nal(nal, mtu_payload))
        flush()
        return out

    def _check_nal(self, nal: bytes) -> None:
        if len(nal) < self.nal_header_size:
            raise ValueError(self.nal_too_short.format(size=len(nal)))


class RtpDepacketizer:
    """RTP packets of one stream in (in ``payload_format``), :class:`AccessUnit`/:class:`Gap`/
    :class:`StreamReset` events out (appended to ``self.events``; drain with
    :meth:`take_events`). A codec subclass passes its format. Parameter sets are not kept here:
    they travel inside the access units, and the segmenter is their one owner.

    Invariants:

    * An emitted :class:`AccessUnit` is complete as far as RTP can tell: no sequence gap, no
      malformed packet and no unfinished fragmentation unit inside it, and it begins at a
      picture start. Anything else is discarded and announced by a :class:`Gap` before the
      next unit.
    * After a :class:`Gap` (or at stream start, or after a :class:`StreamReset`) packets are
      dropped until one begins a picture, so a unit that lost its first slices is never
      emitted.
    * Memory is bounded: one NAL unit <= ``MAX_NAL_SIZE``, one access unit <= ``MAX_AU_SIZE``
      and ``MAX_AU_NALS``, one fragmented NAL unit <= ``MAX_FU_FRAGMENTS`` fragments;
      ``self.events`` grows only until the caller drains it.
    * Every ``ValueError`` from :meth:`feed` leaves the object usable and has already
      appended ``Gap(0, "malformed")``; the next packet is processed normally.
    """

    def __init__(self, payload_format: PayloadFormat, clock_rate: int) -> None:
        self._format = payload_format
        self.clock_rate = clock_rate
        self.events: list[MediaEvent] = []
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
        # Fragmented NAL unit in progress (None: none). Parts are joined once, at the end.
        self._fu_parts: list[Buffer] | None = None
        self._fu_size = 0
        self._fu_type = 0

    # -- public ---------------------------------------------------------------------------

    def take_events(self) -> list[MediaEvent]:
        """The events appended since the last call, handed over (the caller owns the list).

        Cheapest when the caller tests ``if depacketizer.events:`` first, as most packets
        (fragmentation unit middles) produce none.
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
        fmt = self._format
        header_size = fmt.nal_header_size
        if stop - pos < header_size:
            if pos >= stop:
                self._fail("empty RTP payload")
            self._fail(f"RTP payload too short for the NAL unit header: {stop - pos} bytes")
        ntype = fmt.nal_types[buf[pos]]

        if ntype == fmt.fu_type:
            body = pos + fmt.fu_payload_offset
            if stop < body:
                self._fail(f"{fmt.fu_name} payload too short: {stop - pos} bytes")
            fu = buf[body - 1]
            parts = self._fu_parts
            if fu & FU_START_BIT:
                # Once per NAL unit, so out of line. A start skipped while resynchronising goes
                # on to the marker below: nothing is kept then, so closing the unit is a no-op.
                self._fu_start(buf, pos, stop, fu)
            elif parts is None:
                # Middle/end of a NAL whose start was lost (a Gap is out already) or skipped
                # while resynchronising: part of a NAL unit that cannot be rebuilt.
                pass
            else:
                if fu & fmt.type_mask != self._fu_type:
                    self._fail(
                        f"{fmt.fu_name} fragment type {fu & fmt.type_mask} does not match "
                        f"fragmented NAL unit type {self._fu_type}"
                    )
                part = buf[body:stop]
                if type(part) is memoryview:  # a view would alias the caller's buffer
                    part = bytes(part)
                parts.append(part)
                size = self._fu_size = self._fu_size + stop - body
                if size > MAX_NAL_SIZE or self._au_size + size > MAX_AU_SIZE or len(parts) > MAX_FU_FRAGMENTS:
                    if len(parts) > MAX_FU_FRAGMENTS:
                        self._fail(f"{fmt.fu_name} NAL unit has more than {MAX_FU_FRAGMENTS} fragments")
                    self._check_au(size)
                if fu & FU_END_BIT:
                    self._fu_parts = None
                    self._push(b"".join(parts), self._fu_type)
        elif fmt.min_single_type <= ntype <= fmt.max_single_type:
            if self._fu_parts is not None:
                self._fail(f"NAL unit type {ntype} while a fragmented NAL unit is in progress")
            if self._resync:
                if not fmt.starts_picture(ntype, buf[pos + header_size] if stop - pos > header_size else -1):
                    return
                self._resync = False
            self._check_au(stop - pos)
            self._push(bytes(buf[pos:stop]), ntype)
        elif ntype == fmt.aggregation_type:
            self._aggregation(buf, pos, stop)
        else:
            self._fail(f"unsupported NAL unit type {ntype} ({fmt.unsupported_types[ntype]})")

        if marker:
            self._close_au()

    # -- internals ------------------------------------------------------------------------

    def _fu_start(self, buf: Buffer, pos: int, stop: int, fu: int) -> None:
        fmt = self._format
        if fu & FU_END_BIT:
            self._fail(f"{fmt.fu_name} fragment with both start and end bits")
        ftype = fu & fmt.type_mask
        if ftype > fmt.max_fu_nal_type:
            self._fail(f"{fmt.fu_name} holds NAL unit type {ftype}")
        if self._fu_parts is not None:
            self._fail(f"{fmt.fu_name} start while a fragmented NAL unit is in progress")
        body = pos + fmt.fu_payload_offset
        if self._resync:
            if not fmt.starts_picture(ftype, buf[body] if stop > body else -1):
                return
            self._resync = False
        part = buf[body:stop]
        self._fu_type = ftype
        self._fu_parts = [
            fmt.with_type(buf, pos, ftype),  # the FU payload header, with the NAL unit's type
            bytes(part) if type(part) is memoryview else part,  # a view would alias the caller's buffer
        ]
        self._fu_size = fmt.nal_header_size + stop - body
        self._check_au(self._fu_size)

    def _aggregation(self, buf: Buffer, pos: int, stop: int) -> None:
        fmt = self._format
        name = fmt.aggregation_name
        if self._fu_parts is not None:
            self._fail(f"{name} while a fragmented NAL unit is in progress")
        header_size = fmt.nal_header_size
        pos += header_size  # the aggregation packet's own NAL unit header
        if pos >= stop:
            self._fail(f"{name} payload has no NAL units")
        spans: list[tuple[int, int]] = []
        while pos < stop:
            if stop - pos < NAL_SIZE_FIELD_SIZE:
                self._fail(f"{name} length field truncated: {stop - pos} bytes left")
            size = (buf[pos] << 8) | buf[pos + 1]
            pos += NAL_SIZE_FIELD_SIZE
            if size < header_size:
                self._fail(fmt.aggregated_too_short.format(size=size))
            if size > stop - pos:
                self._fail(f"{name} NAL unit length {size} exceeds remaining {stop - pos} bytes")
            ntype = fmt.nal_type(buf[pos])
            if not fmt.min_single_type <= ntype <= fmt.max_single_type:
                self._fail(f"{name} holds NAL unit type {ntype}")
            spans.append((pos, pos + size))
            pos += size
        # Validated as a whole before anything is kept: a bad aggregation packet adds nothing.
        if self._resync:
            first, first_end = spans[0]
            next_byte = buf[first + header_size] if first_end - first > header_size else -1
            if not fmt.starts_picture(fmt.nal_type(buf[first]), next_byte):
                return
            self._resync = False
        for a, b in spans:
            self._check_au(b - a)
            self._push(bytes(buf[a:b]), fmt.nal_type(buf[a]))

    def _push(self, nal: bytes, ntype: int) -> None:
        """Append a complete NAL unit to the access unit in progress (bounds checked before)."""
        self._au_nals.append(nal)
        self._au_size += len(nal)
        if ntype in self._format.key_types:
            self._au_key = True

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
        """Drop the access unit and the fragmented NAL unit in progress; resume at the next
        picture start."""
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
