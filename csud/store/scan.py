"""The fMP4 recovery scanner: how much of a segment file is whole.

Pure: no I/O. The caller passes a ``read(offset, size) -> bytes`` function and the file's size
(or uses :func:`scan_bytes`), so a 60 MB segment is scanned by reading its box headers and
``moof`` boxes only, never its media payload.

A segment file is ``ftyp moov (moof mdat)*`` (docs/storage.md, "File format"). The scanner
accepts a prefix of the file as *whole* up to the end of the last fragment that is:

- a ``moof`` followed at once by an ``mdat``, both entirely inside the file, box sizes at least
  their header size (a size of 0, "to the end of the file", is refused: the writer never makes
  one, and a file extended by a power loss ends in zeros that would otherwise read as one box);
- a ``moof`` holding one ``mfhd`` (sequence numbers increasing from fragment to fragment) and one
  ``traf`` for the track of the ``moov`` with a ``tfhd``, a ``tfdt`` and ``trun`` boxes whose sample
  tables fit in their boxes; at least one and at most :data:`MAX_SAMPLES` samples;
- consistent: the ``trun`` data offset points at the first byte of the ``mdat`` payload and the
  sample sizes add up to exactly that payload; ``tfdt`` strictly increases.

Invariants (property-tested): the scanner never raises on any input, reads only inside
``[0, size)``, does work linear in the number of boxes (each ``read`` is bounded by
:data:`MAX_MOOF_SIZE` or a box header), and ``good_end`` is 0 or the end of a fragment, with
``init_end <= good_end <= size``. A truncated file (a torn last write) scans as its prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BOX_HEADER_SIZE = 8
LARGESIZE_HEADER_SIZE = BOX_HEADER_SIZE + 8
FULLBOX_HEADER_SIZE = BOX_HEADER_SIZE + 4  # version (1) and flags (3)
MAX_INIT_SIZE = 1 << 20  # ftyp + moov of one video track: a few hundred bytes in practice
MAX_MOOF_SIZE = 4 << 20  # a GOP of 1000 frames needs ~12 kB of trun
MAX_SAMPLES = 100_000
NS_PER_SECOND = 1_000_000_000

# tfhd flags (ISO/IEC 14496-12 §8.8.7)
TFHD_BASE_DATA_OFFSET = 0x000001
TFHD_SAMPLE_DESCRIPTION_INDEX = 0x000002
TFHD_DEFAULT_DURATION = 0x000008
TFHD_DEFAULT_SIZE = 0x000010
TFHD_DEFAULT_FLAGS = 0x000020
TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
# trun flags (§8.8.8)
TRUN_DATA_OFFSET = 0x000001
TRUN_FIRST_SAMPLE_FLAGS = 0x000004
TRUN_SAMPLE_DURATION = 0x000100
TRUN_SAMPLE_SIZE = 0x000200
TRUN_SAMPLE_FLAGS = 0x000400
TRUN_SAMPLE_CTO = 0x000800

Reader = Callable[[int, int], bytes]


@dataclass(frozen=True, slots=True)
class ScannedFragment:
    """One whole fragment: ``moof`` at ``offset``, ``size`` bytes with its ``mdat``."""

    offset: int
    size: int
    decode_time: int  # tfdt, in ticks of the track's timescale
    duration: int  # ticks: the sum of its sample durations
    samples: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What :func:`scan` found. ``problem`` is ``None`` when the whole input is a valid file."""

    size: int
    timescale: int  # 0 when the init segment is not whole
    init_end: int  # end of ftyp + moov, 0 when they are not whole
    fragments: tuple[ScannedFragment, ...]
    problem: str | None

    @property
    def good_end(self) -> int:
        """Length of the longest prefix ending on a whole fragment (0: nothing to keep)."""
        return self.fragments[-1].end if self.fragments else 0

    @property
    def frames(self) -> int:
        return sum(f.samples for f in self.fragments)

    @property
    def valid(self) -> bool:
        """The whole input is a segment file with at least one fragment."""
        return self.problem is None and bool(self.fragments)

    def ticks_to_ns(self, ticks: int) -> int:
        """Ticks of the track's timescale to ns, rounded half up (exact integer arithmetic)."""
        if self.timescale <= 0:
            raise ValueError("no timescale: the init segment is not whole")
        return (2 * ticks * NS_PER_SECOND + self.timescale) // (2 * self.timescale)

    def end_ticks(self) -> int:
        """Decode time just after the last whole fragment (0 when there is none)."""
        last = self.fragments[-1] if self.fragments else None
        return last.decode_time + last.duration if last else 0


class _Bad(Exception):
    """Internal: the fragment being read is not whole or not consistent (message = why)."""


def _u32(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 4], "big")


def _u64(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 8], "big")


def _children(buf: bytes, start: int, end: int) -> list[tuple[str, int, int, int]]:
    """``(type, offset, header_size, size)`` of the boxes in ``buf[start:end]``; raises ``_Bad``."""
    out = []
    pos = start
    while pos < end:
        if end - pos < BOX_HEADER_SIZE:
            raise _Bad(f"truncated box header at {pos}")
        size = _u32(buf, pos)
        box_type = buf[pos + 4 : pos + 8].decode("latin-1")
        header = BOX_HEADER_SIZE
        if size == 1:
            if end - pos < LARGESIZE_HEADER_SIZE:
                raise _Bad(f"truncated largesize header at {pos}")
            size = _u64(buf, pos + 8)
            header = LARGESIZE_HEADER_SIZE
        if size < header or pos + size > end:
            raise _Bad(f"box {box_type!r} at {pos} has bad size {size}")
        out.append((box_type, pos, header, size))
        pos += size
    return out


def _find(children: list[tuple[str, int, int, int]], box_type: str) -> list[tuple[str, int, int, int]]:
    return [c for c in children if c[0] == box_type]


@dataclass(slots=True)
class _Track:
    track_id: int = 0
    timescale: int = 0
    default_duration: int = 0  # trex
    default_size: int = 0


def _parse_moov(buf: bytes, header_size: int) -> _Track:
    """Track id and timescale of the first ``trak``, defaults from its ``trex``; raises ``_Bad``."""
    track = _Track()
    moov = _children(buf, header_size, len(buf))
    traks = _find(moov, "trak")
    if not traks:
        raise _Bad("moov has no trak")
    _, t_off, t_hdr, t_size = traks[0]
    trak = _children(buf, t_off + t_hdr, t_off + t_size)
    tkhd = _find(trak, "tkhd")
    mdia = _find(trak, "mdia")
    if not tkhd or not mdia:
        raise _Bad("trak lacks tkhd or mdia")
    _, k_off, k_hdr, k_size = tkhd[0]
    if k_size < k_hdr + 4 + 20:
        raise _Bad("short tkhd")
    version = buf[k_off + k_hdr]
    track.track_id = _u32(buf, k_off + k_hdr + 4 + (16 if version == 1 else 8))
    _, m_off, m_hdr, m_size = mdia[0]
    mdhd = _find(_children(buf, m_off + m_hdr, m_off + m_size), "mdhd")
    if not mdhd:
        raise _Bad("mdia lacks mdhd")
    _, d_off, d_hdr, d_size = mdhd[0]
    version = buf[d_off + d_hdr] if d_size > d_hdr else 0
    at = d_off + d_hdr + 4 + (16 if version == 1 else 8)
    if d_size < at - d_off + 4:
        raise _Bad("short mdhd")
    track.timescale = _u32(buf, at)
    if track.timescale == 0:
        raise _Bad("mdhd timescale is 0")
    for _, x_off, x_hdr, x_size in _find(moov, "mvex"):
        for _, r_off, r_hdr, r_size in _find(_children(buf, x_off + x_hdr, x_off + x_size), "trex"):
            body = r_off + r_hdr + 4
            if r_size >= r_hdr + 4 + 20 and _u32(buf, body) == track.track_id:
                track.default_duration = _u32(buf, body + 8)
                track.default_size = _u32(buf, body + 12)
    return track


def _parse_moof(buf: bytes, track: _Track, mdat_payload: int, mdat_header: int) -> tuple[int, int, int, int]:
    """``(sequence, decode_time, duration, samples)`` of a ``moof`` (``buf``, from offset 0)
    whose ``mdat`` payload is ``mdat_payload`` bytes; raises ``_Bad`` if inconsistent."""
    moof_size = len(buf)
    kids = _children(buf, BOX_HEADER_SIZE, moof_size)
    mfhd = _find(kids, "mfhd")
    trafs = _find(kids, "traf")
    if len(mfhd) != 1 or len(trafs) != 1:
        raise _Bad("moof needs one mfhd and one traf")
    _, f_off, f_hdr, f_size = mfhd[0]
    if f_size < f_hdr + 8:
        raise _Bad("short mfhd")
    sequence = _u32(buf, f_off + f_hdr + 4)
    _, t_off, t_hdr, t_size = trafs[0]
    traf = _children(buf, t_off + t_hdr, t_off + t_size)
    tfhd, tfdt, truns = _find(traf, "tfhd"), _find(traf, "tfdt"), _find(traf, "trun")
    if len(tfhd) != 1 or len(tfdt) != 1 or not truns:
        raise _Bad("traf needs one tfhd, one tfdt and a trun")
    # tfhd
    _, h_off, h_hdr, h_size = tfhd[0]
    pos, end = h_off + h_hdr, h_off + h_size
    if end - pos < 8:
        raise _Bad("short tfhd")
    flags = _u32(buf, pos) & 0xFFFFFF
    if _u32(buf, pos + 4) != track.track_id:
        raise _Bad("tfhd names another track")
    pos += 8
    default_duration, default_size = track.default_duration, track.default_size
    base_offset: int | None = None
    for flag, width in (
        (TFHD_BASE_DATA_OFFSET, 8),
        (TFHD_SAMPLE_DESCRIPTION_INDEX, 4),
        (TFHD_DEFAULT_DURATION, 4),
        (TFHD_DEFAULT_SIZE, 4),
        (TFHD_DEFAULT_FLAGS, 4),
    ):
        if flags & flag:
            if end - pos < width:
                raise _Bad("short tfhd")
            value = int.from_bytes(buf[pos : pos + width], "big")
            if flag == TFHD_BASE_DATA_OFFSET:
                base_offset = value
            elif flag == TFHD_DEFAULT_DURATION:
                default_duration = value
            elif flag == TFHD_DEFAULT_SIZE:
                default_size = value
            pos += width
    if base_offset is not None:
        raise _Bad("explicit base-data-offset (not written by csud)")
    # tfdt
    _, d_off, d_hdr, d_size = tfdt[0]
    version = buf[d_off + d_hdr] if d_size > d_hdr else 0
    need = 4 + (8 if version == 1 else 4)
    if d_size < d_hdr + need:
        raise _Bad("short tfdt")
    body = d_off + d_hdr + 4
    decode_time = _u64(buf, body) if version == 1 else _u32(buf, body)
    # truns: the data of each follows the previous one's (contiguous in the mdat)
    data_start = moof_size + mdat_header  # relative to the moof (default-base-is-moof)
    expected_offset = data_start
    samples = duration = 0
    for _, r_off, r_hdr, r_size in truns:
        pos, end = r_off + r_hdr, r_off + r_size
        if end - pos < 8:
            raise _Bad("short trun")
        flags = _u32(buf, pos) & 0xFFFFFF
        count = _u32(buf, pos + 4)
        pos += 8
        if count == 0 or samples + count > MAX_SAMPLES:
            raise _Bad(f"trun sample count {count} out of range")
        offset = expected_offset
        if flags & TRUN_DATA_OFFSET:
            if end - pos < 4:
                raise _Bad("short trun")
            offset = int.from_bytes(buf[pos : pos + 4], "big", signed=True)
            pos += 4
        if offset != expected_offset:
            raise _Bad(f"trun data offset {offset} is not the mdat payload ({expected_offset})")
        if flags & TRUN_FIRST_SAMPLE_FLAGS:
            pos += 4
        per_sample = [
            f
            for f in (TRUN_SAMPLE_DURATION, TRUN_SAMPLE_SIZE, TRUN_SAMPLE_FLAGS, TRUN_SAMPLE_CTO)
            if flags & f
        ]
        if end - pos < count * 4 * len(per_sample):
            raise _Bad("trun sample table overruns its box")
        if not flags & TRUN_SAMPLE_SIZE and default_size == 0:
            raise _Bad("no sample size")
        run_bytes = 0 if flags & TRUN_SAMPLE_SIZE else count * default_size
        run_ticks = 0 if flags & TRUN_SAMPLE_DURATION else count * default_duration
        stride = 4 * len(per_sample)
        size_at = per_sample.index(TRUN_SAMPLE_SIZE) * 4 if flags & TRUN_SAMPLE_SIZE else -1
        dur_at = per_sample.index(TRUN_SAMPLE_DURATION) * 4 if flags & TRUN_SAMPLE_DURATION else -1
        for i in range(count):
            entry = pos + i * stride
            if size_at >= 0:
                run_bytes += _u32(buf, entry + size_at)
            if dur_at >= 0:
                run_ticks += _u32(buf, entry + dur_at)
        samples += count
        duration += run_ticks
        expected_offset += run_bytes
    if expected_offset - data_start != mdat_payload:
        raise _Bad(f"samples hold {expected_offset - data_start} bytes, mdat {mdat_payload}")
    return sequence, decode_time, duration, samples


def scan(read: Reader, size: int) -> ScanResult:
    """Scan a segment file of ``size`` bytes through ``read(offset, n)`` (see the module doc).

    ``read`` may return fewer bytes than asked (a file that shrank): that reads as truncation.
    Never raises; exceptions from ``read`` itself propagate.
    """
    size = max(0, size)
    fragments: list[ScannedFragment] = []

    def header(at: int) -> tuple[str, int, int] | None:
        """``(type, header_size, box_size)`` of the box at ``at``, ``None`` if truncated or bad."""
        raw = read(at, min(LARGESIZE_HEADER_SIZE, size - at))
        if len(raw) < BOX_HEADER_SIZE:
            return None
        box_size, box_type = _u32(raw, 0), raw[4:8].decode("latin-1")
        hdr = BOX_HEADER_SIZE
        if box_size == 1:
            if len(raw) < LARGESIZE_HEADER_SIZE:
                return None
            box_size, hdr = _u64(raw, 8), LARGESIZE_HEADER_SIZE
        if box_size < hdr:
            return None
        return box_type, hdr, box_size

    def result(timescale: int, init_end: int, problem: str | None) -> ScanResult:
        return ScanResult(size, timescale, init_end, tuple(fragments), problem)

    # ftyp, moov
    first = header(0) if size else None
    if first is None or first[0] != "ftyp" or first[2] > MAX_INIT_SIZE or first[2] > size:
        return result(0, 0, "no whole ftyp box at the start")
    pos = first[2]
    second = header(pos) if pos < size else None
    if second is None or second[0] != "moov" or second[2] > MAX_INIT_SIZE or pos + second[2] > size:
        return result(0, 0, "no whole moov box after ftyp")
    moov = read(pos, second[2])
    if len(moov) != second[2]:
        return result(0, 0, "moov box cut short")
    try:
        track = _parse_moov(moov, second[1])
    except _Bad as e:
        return result(0, 0, f"moov: {e}")
    pos += second[2]
    init_end = pos
    last_sequence = -1
    last_decode_time = -1
    while pos < size:
        moof_h = header(pos)
        if moof_h is None or moof_h[0] != "moof":
            return result(track.timescale, init_end, f"no whole moof box at {pos}")
        _, moof_hdr, moof_size = moof_h
        if moof_hdr != BOX_HEADER_SIZE or moof_size > MAX_MOOF_SIZE or pos + moof_size > size:
            return result(track.timescale, init_end, f"moof at {pos} is cut short or too large")
        mdat_at = pos + moof_size
        mdat_h = header(mdat_at) if mdat_at < size else None
        if mdat_h is None or mdat_h[0] != "mdat" or mdat_at + mdat_h[2] > size:
            return result(track.timescale, init_end, f"the mdat of the moof at {pos} is not whole")
        moof = read(pos, moof_size)
        if len(moof) != moof_size:
            return result(track.timescale, init_end, f"moof at {pos} cut short")
        try:
            sequence, decode_time, duration, samples = _parse_moof(
                moof, track, mdat_h[2] - mdat_h[1], mdat_h[1]
            )
        except _Bad as e:
            return result(track.timescale, init_end, f"moof at {pos}: {e}")
        if sequence <= last_sequence or decode_time <= last_decode_time:
            return result(track.timescale, init_end, f"moof at {pos} goes back in sequence or time")
        last_sequence, last_decode_time = sequence, decode_time
        fragment_size = moof_size + mdat_h[2]
        fragments.append(ScannedFragment(pos, fragment_size, decode_time, duration, samples))
        pos += fragment_size
    return result(track.timescale, init_end, None if fragments else "no fragment")


def scan_bytes(data: bytes | bytearray | memoryview) -> ScanResult:
    """:func:`scan` over bytes in memory."""
    view = bytes(data)
    return scan(lambda offset, n: view[offset : offset + max(0, n)], len(view))
