"""H.265/HEVC over RTP (RFC 7798) and the few H.265 bitstream facts csud needs.

The same shape as :mod:`csud.media.h264` (read that module's docstring first): NAL unit type
constants, :data:`PAYLOAD_FORMAT` (what RFC 7798 is, for the machinery shared with H.264 in
:mod:`csud.media.depacketizer`), the sans-IO depacketizer built on it (RTP packets in,
:mod:`csud.media.units` events out), a packetizer for tests and the simulator, and the SPS
fields a recorder needs (picture size after the conformance window, profile/tier/level,
chroma format, bit depths). No sockets, clocks, decoding, nor any import of
av/aiortsp/asyncio.

Supported packetization: single NAL unit packets, aggregation packets (AP, type 48) and
fragmentation units (FU, type 49), without decoding order numbers, i.e. what a camera sends
when ``sprop-max-don-diff`` is 0 (absent) and ``sprop-depack-buf-nalus`` is 0: transmission
order is decoding order. Streams that carry DONL/DOND fields are refused at construction,
PACI packets (type 50) and the unspecified types 51-63 per packet, all with ``ValueError``.

H.265 NAL unit header (2 bytes): F(1) Type(6) LayerId(6) TID(3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from csud.media.bits import BitReader, unescape_rbsp
from csud.media.depacketizer import (
    DEFAULT_CLOCK_RATE,
    DEFAULT_MTU_PAYLOAD,
    FU_HEADER_SIZE,
    MAX_AU_NALS,
    MAX_AU_SIZE,
    MAX_FU_FRAGMENTS,
    MAX_NAL_SIZE,
    NAL_SIZE_FIELD_SIZE,
    PayloadFormat,
    RtpDepacketizer,
)
from csud.media.depacketizer import FU_END_BIT as FU_END_BIT
from csud.media.depacketizer import FU_START_BIT as FU_START_BIT
from csud.media.rtp import Buffer

__all__ = [
    "DEFAULT_CLOCK_RATE",
    "DEFAULT_MTU_PAYLOAD",
    "MAX_AU_NALS",
    "MAX_AU_SIZE",
    "MAX_FU_FRAGMENTS",
    "MAX_NAL_SIZE",
    "PAYLOAD_FORMAT",
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
_LAYER_ID_MSB = 0x01
_TID_MASK = 0x07

FU_PACKET_HEADER_SIZE = NAL_HEADER_SIZE + FU_HEADER_SIZE  # payload header + FU header

AP_LENGTH_SIZE = NAL_SIZE_FIELD_SIZE
AP_HEADER_SIZE = NAL_HEADER_SIZE
MAX_AP_NAL_SIZE = (1 << (8 * AP_LENGTH_SIZE)) - 1

# NAL types that can only begin an access unit, before its first VCL NAL unit (H.265
# 7.4.2.4.4): AUD, VPS, SPS, PPS, prefix SEI and the reserved 41..44. After a gap decoding
# resumes at one of these or at a slice segment with first_slice_segment_in_pic_flag set.
_AU_START_TYPES: Final = frozenset({NAL_VPS, NAL_SPS, NAL_PPS, NAL_AUD, NAL_PREFIX_SEI, 41, 42, 43, 44})


def _layer_id(nal: bytes) -> int:
    return ((nal[0] & _LAYER_ID_MSB) << 5) | (nal[1] >> 3)


def _ap_header(nals: Sequence[bytes]) -> bytes:
    # RFC 7798 §4.4.2: F is the OR of the aggregated F bits, LayerId and TID their minimum.
    forbidden = NAL_FORBIDDEN_BIT if any(nal[0] & NAL_FORBIDDEN_BIT for nal in nals) else 0
    layer = min(map(_layer_id, nals))
    tid = min(nal[1] & _TID_MASK for nal in nals)
    return bytes((forbidden | (AP << NAL_TYPE_SHIFT) | (layer >> 5), ((layer & 0x1F) << 3) | tid))


PAYLOAD_FORMAT: Final = PayloadFormat(
    nal_header_size=NAL_HEADER_SIZE,
    type_shift=NAL_TYPE_SHIFT,
    type_mask=NAL_TYPE_MASK,
    min_single_type=NAL_TRAIL_N,
    max_single_type=MAX_SINGLE_NAL_TYPE,
    fu_type=FU,
    fu_name="FU",
    max_fu_nal_type=MAX_SINGLE_NAL_TYPE,
    aggregation_type=AP,
    aggregation_name="AP",
    aggregated_too_short="AP NAL unit length {size} is shorter than a NAL unit header",
    aggregation_header=_ap_header,
    nal_too_short="NAL unit of {size} bytes is shorter than its header",
    unsupported_types=UNSUPPORTED_NAL_TYPES,
    key_types=IRAP_TYPES,
    parameter_set_types=frozenset({NAL_VPS, NAL_SPS, NAL_PPS}),
    slice_types=frozenset(range(MAX_VCL_TYPE + 1)),
    picture_start_types=_AU_START_TYPES,
)


def nal_type(nal: Buffer) -> int:
    """The type of the NAL unit (or RTP payload) starting at ``nal[0]``; -1 if empty."""
    return (nal[0] >> NAL_TYPE_SHIFT) & NAL_TYPE_MASK if len(nal) else -1


class H265Depacketizer(RtpDepacketizer):
    """RTP packets of one H.265 stream in, :class:`AccessUnit`/:class:`Gap`/:class:`StreamReset`
    events out (appended to ``self.events``; drain with :meth:`take_events`).

    The invariants of :class:`csud.media.depacketizer.RtpDepacketizer` hold, with H.265 terms:

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

    ``max_don_diff``: the SDP's ``sprop-max-don-diff``; anything but 0 means the packets
    carry decoding order numbers, which this depacketizer refuses (``ValueError``).
    """

    def __init__(
        self,
        clock_rate: int = DEFAULT_CLOCK_RATE,
        max_don_diff: int = 0,
        depack_buf_nalus: int = 0,
    ) -> None:
        if max_don_diff or depack_buf_nalus:
            raise ValueError(
                f"H.265 RTP streams with decoding order numbers (DONL) are not supported: "
                f"sprop-max-don-diff {max_don_diff}, sprop-depack-buf-nalus {depack_buf_nalus}"
            )
        super().__init__(PAYLOAD_FORMAT, clock_rate)


# --- Packetizer (tests and simulator; not the hot path) --------------------------------

# ``packetize_nal(nal, mtu_payload)``: the NAL unit alone if it fits, else FU fragments.
# ``packetize_au(nals, mtu_payload, aggregate)``: the payloads of one access unit, runs of
# small NAL units (typically VPS+SPS+PPS+SEI) aggregated into APs.
packetize_nal = PAYLOAD_FORMAT.packetize_nal
packetize_au = PAYLOAD_FORMAT.packetize_au


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
