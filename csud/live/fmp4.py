"""Fragmented MP4 for live viewing: an init segment (ftyp+moov) and one moof+mdat per frame.

Pure: bytes in, bytes out; no I/O, no clock. The recorder's writer muxes with PyAV once per GOP;
live viewing cannot wait a GOP, so this module builds the few boxes Media Source Extensions need
by hand (ISO/IEC 14496-12 and 14496-15), once per frame, shared by every viewer of a camera.

B-frames (decode order differs from presentation order): :class:`DecodeClock` gives each frame,
as it arrives, a decode time in decode order and a composition offset (pts - dts), which
:func:`fragment` writes in a version 1 ``trun`` (signed offsets). The segmenter can derive its
decode times from a whole GOP; live viewing cannot wait a GOP, so the clock predicts them.

What is deliberately left out: audio, edit lists, sample groups.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

from csud.media import h264, h265

TIMESCALE = 90_000  # RTP's video clock; sample times are carried in it
MOVIE_TIMESCALE = 1000
TRACK_ID = 1
NAL_LENGTH_SIZE = 4
SAMPLE_FLAGS_SYNC = 0x0200_0000  # sample_depends_on = 2 (an I picture)
SAMPLE_FLAGS_NON_SYNC = 0x0101_0000  # sample_depends_on = 1, sample_is_non_sync_sample
TFHD_DEFAULT_BASE_IS_MOOF = 0x02_0000
TRUN_DATA_OFFSET = 0x000001
TRUN_SAMPLE_DURATION = 0x000100
TRUN_SAMPLE_SIZE = 0x000200
TRUN_SAMPLE_FLAGS = 0x000400
TRUN_SAMPLE_COMPOSITION_TIME_OFFSET = 0x000800
TRUN_FLAGS = TRUN_DATA_OFFSET | TRUN_SAMPLE_DURATION | TRUN_SAMPLE_SIZE | TRUN_SAMPLE_FLAGS
TRUN_FLAGS_CTO = TRUN_FLAGS | TRUN_SAMPLE_COMPOSITION_TIME_OFFSET
RTP_WRAP = 1 << 32
MAX_FRAME_TICKS = 5 * TIMESCALE  # a larger step (camera reboot, clock step) counts as one frame
DEFAULT_INTERVAL_TICKS = TIMESCALE // 25  # until the stream shows its own frame interval
MAX_GOP_TRACKED = 1024  # pts of the GOP kept to learn the decode delay (beyond: no more learning)
BOX_HEADER_SIZE = 8
FULL_BOX_HEADER_SIZE = BOX_HEADER_SIZE + 4
_UNITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", BOX_HEADER_SIZE + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """What an init segment says about the one video track."""

    codec: str  # "h264" | "hevc" (the segmenter's codec names)
    codec_string: str  # RFC 6381, what MediaSource.isTypeSupported() is asked
    width: int
    height: int
    init: bytes  # ftyp + moov


def avc_config(sps: bytes, pps: Sequence[bytes]) -> bytes:
    """AVCDecoderConfigurationRecord (14496-15 5.3.3.1) for one SPS and its PPSs."""
    info = h264.parse_sps(sps)
    out = bytearray([1, sps[1], sps[2], sps[3], 0xFC | (NAL_LENGTH_SIZE - 1), 0xE0 | 1])
    out += struct.pack(">H", len(sps)) + sps
    out.append(len(pps))
    for p in pps:
        out += struct.pack(">H", len(p)) + p
    if info.profile_idc in (100, 110, 122, 144):  # the high profiles carry chroma and bit depth
        out += bytes([0xFC | info.chroma_format_idc, 0xF8, 0xF8, 0])  # 8-bit; no SPS extensions
    return bytes(out)


def hevc_config(vps: bytes, sps: bytes, pps: Sequence[bytes]) -> bytes:
    """HEVCDecoderConfigurationRecord (14496-15 8.3.3.1)."""
    info = h265.parse_sps(sps)
    out = bytearray([1, (info.profile_space << 6) | (info.tier_flag << 5) | info.profile_idc])
    out += struct.pack(">I", info.profile_compatibility_flags)
    out += info.constraint_flags.to_bytes(6, "big")
    out.append(info.level_idc)
    out += struct.pack(">H", 0xF000)  # min_spatial_segmentation_idc 0
    out.append(0xFC)  # parallelismType unknown
    out.append(0xFC | info.chroma_format_idc)
    out.append(0xF8 | (info.bit_depth_luma - 8))
    out.append(0xF8 | (info.bit_depth_chroma - 8))
    out += struct.pack(">H", 0)  # avgFrameRate unknown
    out.append((min(info.max_sub_layers, 7) << 3) | (1 << 2) | (NAL_LENGTH_SIZE - 1))
    arrays = [(h265.NAL_VPS, [vps]), (h265.NAL_SPS, [sps]), (h265.NAL_PPS, list(pps))]
    out.append(len(arrays))
    for nal_type, nals in arrays:
        out.append(0x80 | nal_type)  # array_completeness: every set is in the record
        out += struct.pack(">H", len(nals))
        for nal in nals:
            out += struct.pack(">H", len(nal)) + nal
    return bytes(out)


def _visual_sample_entry(kind: bytes, width: int, height: int, config: bytes) -> bytes:
    return box(
        kind,
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),  # pre_defined, reserved
        struct.pack(">HH", width, height),
        struct.pack(">II", 0x00480000, 0x00480000),  # 72 dpi
        bytes(4),
        struct.pack(">H", 1),  # frame_count
        bytes(32),  # compressorname
        struct.pack(">Hh", 0x18, -1),  # depth, pre_defined
        config,
    )


def init_segment(codec: str, parameter_sets: Sequence[bytes]) -> TrackInfo:
    """ftyp + moov for one video track. ``parameter_sets``: the stream's VPS (H.265), SPS, PPS
    NAL units without start codes. ``ValueError`` if a needed set is missing or malformed."""
    if codec == "h264":
        sps = [n for n in parameter_sets if n and n[0] & 0x1F == h264.NAL_SPS]
        pps = [n for n in parameter_sets if n and n[0] & 0x1F == h264.NAL_PPS]
        if not sps or not pps:
            raise ValueError("H.264 init segment needs an SPS and a PPS")
        info: h264.SpsInfo | h265.H265SpsInfo = h264.parse_sps(sps[0])
        entry = _visual_sample_entry(b"avc1", info.width, info.height, box(b"avcC", avc_config(sps[0], pps)))
        brand = b"avc1"
    elif codec == "hevc":

        def of(t: int) -> list[bytes]:
            return [n for n in parameter_sets if len(n) >= 2 and (n[0] >> 1) & 0x3F == t]

        vps, sps, pps = of(h265.NAL_VPS), of(h265.NAL_SPS), of(h265.NAL_PPS)
        if not vps or not sps or not pps:
            raise ValueError("H.265 init segment needs a VPS, an SPS and a PPS")
        info = h265.parse_sps(sps[0])
        entry = _visual_sample_entry(
            b"hvc1", info.width, info.height, box(b"hvcC", hevc_config(vps[0], sps[0], pps))
        )
        brand = b"hvc1"
    else:
        raise ValueError(f"no live viewing for codec {codec!r}")
    width, height = info.width, info.height
    ftyp = box(b"ftyp", b"iso5", struct.pack(">I", 512), b"iso5", b"iso6", b"mp41", brand)
    mvhd = full_box(
        b"mvhd", 0, 0,
        struct.pack(">IIII", 0, 0, MOVIE_TIMESCALE, 0),  # creation, modification, timescale, duration
        struct.pack(">IH", 0x00010000, 0x0100), bytes(10),  # rate 1.0, volume 1.0, reserved
        _UNITY_MATRIX, bytes(24), struct.pack(">I", TRACK_ID + 1),
    )  # fmt: skip
    tkhd = full_box(
        b"tkhd", 0, 0x000003,  # enabled, in movie
        struct.pack(">IIIII", 0, 0, TRACK_ID, 0, 0), bytes(8),
        struct.pack(">hhHH", 0, 0, 0, 0), _UNITY_MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )  # fmt: skip
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, 0, 0x55C4, 0))  # 'und'
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"csud live\x00")
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    empty_table = struct.pack(">I", 0)
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), entry),
        full_box(b"stts", 0, 0, empty_table),
        full_box(b"stsc", 0, 0, empty_table),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, empty_table),
    )
    minf = box(b"minf", full_box(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
    trak = box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, minf))
    trex = full_box(b"trex", 0, 0, struct.pack(">IIIII", TRACK_ID, 1, 0, 0, 0))
    moov = box(b"moov", mvhd, trak, box(b"mvex", trex))
    return TrackInfo(codec, info.codec_string, width, height, ftyp + moov)


def fragment(
    sequence: int,
    decode_time: int,
    duration: int,
    nals: Sequence[bytes],
    keyframe: bool,
    composition_offset: int = 0,
) -> bytes:
    """moof + mdat holding one sample: ``nals`` (no start codes) length-prefixed.

    ``decode_time``, ``duration`` and ``composition_offset`` (pts - dts, signed) are in
    :data:`TIMESCALE` units; ``sequence`` counts from 1. A zero offset is not written (``trun``
    version 0, as for a stream without B-frames); any other is, in a version 1 ``trun``.
    """
    sample = b"".join(struct.pack(">I", len(nal)) + nal for nal in nals)
    flags = SAMPLE_FLAGS_SYNC if keyframe else SAMPLE_FLAGS_NON_SYNC
    mfhd = full_box(b"mfhd", 0, 0, struct.pack(">I", sequence))
    tfhd = full_box(b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", TRACK_ID))
    tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", decode_time))
    fields = 16 if composition_offset else 12  # one sample's duration, size, flags (, offset)
    trun_size = FULL_BOX_HEADER_SIZE + 4 + 4 + fields  # + count, data_offset
    moof_size = BOX_HEADER_SIZE + len(mfhd) + BOX_HEADER_SIZE + len(tfhd) + len(tfdt) + trun_size
    data_offset = moof_size + BOX_HEADER_SIZE
    if composition_offset:
        body = struct.pack(">IiIIIi", 1, data_offset, duration, len(sample), flags, composition_offset)
        trun = full_box(b"trun", 1, TRUN_FLAGS_CTO, body)
    else:
        trun = full_box(
            b"trun", 0, TRUN_FLAGS, struct.pack(">IiIII", 1, data_offset, duration, len(sample), flags)
        )
    return box(b"moof", mfhd, box(b"traf", tfhd, tfdt, trun)) + box(b"mdat", sample)


class DecodeClock:
    """Decode and presentation times, in :data:`TIMESCALE` ticks, of frames arriving in decode
    order with their RTP timestamps (presentation times). Pure and O(log GOP) per frame.

    - pts: the RTP timestamp, unwrapped (so pts mod 2^32 is the RTP timestamp); a step of more
      than :data:`MAX_FRAME_TICKS`, or a keyframe that does not come after every earlier frame
      (the camera's clock went back), counts as one frame interval instead.
    - dts: ``key_pts - delay + i * interval`` for the i-th frame of a GOP in decode order (for a
      regular stream, the GOP's pts in rank order minus the decode delay, as the segmenter's), but
      never after the frame's own pts and always after the previous dts (strictly increasing).
    - ``interval``: the smallest gap between presentation-order neighbours in the last GOP (or
      in this one, when smaller); the sample duration.
    - ``delay``: the decode delay, the largest that any reordered frame (one presented before a
      frame decoded earlier) has needed so far, or the recorder's (``reorder_ticks``), if larger.
      Until it has been learned (the first B-frame), a few offsets may be negative: allowed in a
      version 1 ``trun``, and dts stay strictly increasing. Without B-frames it stays 0 and
      dts == pts (composition offset 0) as long as frames are regularly spaced.
    """

    def __init__(self, interval: int = DEFAULT_INTERVAL_TICKS) -> None:
        self.interval = interval
        self.delay = 0
        self._last_rtp: int | None = None
        self._last_pts = 0
        self._max_pts = 0
        self._last_dts = -1
        self._key_pts = 0
        self._index = 0  # decode index in the GOP (its keyframe is 0)
        self._gop: list[int] = []  # the GOP's pts so far, sorted
        self._gop_interval = 0  # smallest positive neighbour gap in the GOP (0: none yet)

    def next(self, rtp_timestamp: int, keyframe: bool, reorder_ticks: int = 0) -> tuple[int, int]:
        """(dts, composition offset pts - dts) of the next frame in decode order."""
        if self._last_rtp is None:
            pts = self._max_pts = rtp_timestamp
        else:
            step = (rtp_timestamp - self._last_rtp + RTP_WRAP // 2) % RTP_WRAP - RTP_WRAP // 2
            pts = self._last_pts + step
            if abs(pts - self._max_pts) > MAX_FRAME_TICKS or (keyframe and pts <= self._max_pts):
                pts = self._max_pts + self.interval
        self._last_rtp, self._last_pts = rtp_timestamp, pts
        self._max_pts = max(self._max_pts, pts)
        if reorder_ticks > self.delay:
            self.delay = reorder_ticks
        if keyframe or not self._gop:  # (a stream may start on a non-key frame: a GOP of sorts)
            if self._gop_interval:
                self.interval = self._gop_interval
            self._key_pts, self._index, self._gop, self._gop_interval = pts, 0, [pts], 0
            target = pts - self.delay
        else:
            self._index += 1
            self._learn(pts)
            target = self._key_pts - self.delay + self._index * self.interval
        dts = max(self._last_dts + 1, min(target, pts))
        self._last_dts = dts
        return dts, pts - dts

    def _learn(self, pts: int) -> None:
        gop = self._gop
        if len(gop) >= MAX_GOP_TRACKED:
            return
        if pts > gop[-1]:
            rank = len(gop)
            gop.append(pts)
        else:
            rank = bisect_left(gop, pts)
            gop.insert(rank, pts)
        left = pts - gop[rank - 1] if rank else 0
        right = gop[rank + 1] - pts if rank + 1 < len(gop) else 0
        gap = min(left, right) if left and right else left or right  # 0: a repeated pts
        if gap > 0:
            if not self._gop_interval or gap < self._gop_interval:
                self._gop_interval = gap
            if gap < self.interval:
                self.interval = gap
        if rank < self._index:  # presented before frames decoded earlier: a B-frame
            needed = self._key_pts + self._index * self.interval - pts
            if needed > self.delay:
                self.delay = needed
