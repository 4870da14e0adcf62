"""H.264 over RTP (RFC 6184) and the few H.264 bitstream facts csud needs.

What belongs here: NAL unit type constants, :data:`PAYLOAD_FORMAT` (what RFC 6184 is, for
the machinery H.264 and H.265 share in :mod:`csud.media.depacketizer`), the receive-side
depacketizer built on it (a sans-IO state machine, the hot path of the daemon: RTP packets
in, :mod:`csud.media.units` events out), the send-side packetizer used by the camera
simulator, Annex B splitting and the SPS fields a recorder needs (picture size, profile,
level). What does not: sockets, clocks, timestamps mapped to wall time (``timeline.py``),
decoding, and any import of av/aiortsp/asyncio.

Supported packetization: single NAL unit packets, STAP-A and FU-A (packetization-mode 0
and 1, which is what IP cameras send). STAP-B, MTAP and FU-B (interleaved mode) are
refused with ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from csud.media.bits import BitReader as _BitReader
from csud.media.bits import unescape_rbsp
from csud.media.depacketizer import (
    DEFAULT_CLOCK_RATE,
    FU_HEADER_SIZE,
    NAL_SIZE_FIELD_SIZE,
    PayloadFormat,
    RtpDepacketizer,
)

# The memory bounds are part of this module's interface (explicit re-exports).
from csud.media.depacketizer import DEFAULT_MTU_PAYLOAD as DEFAULT_MTU_PAYLOAD
from csud.media.depacketizer import FU_END_BIT as FU_END_BIT
from csud.media.depacketizer import FU_START_BIT as FU_START_BIT
from csud.media.depacketizer import MAX_AU_NALS as MAX_AU_NALS
from csud.media.depacketizer import MAX_AU_SIZE as MAX_AU_SIZE
from csud.media.depacketizer import MAX_FU_FRAGMENTS as MAX_FU_FRAGMENTS
from csud.media.depacketizer import MAX_NAL_SIZE as MAX_NAL_SIZE
from csud.media.rtp import Buffer

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

FU_A_HEADER_SIZE = NAL_HEADER_SIZE + FU_HEADER_SIZE  # FU indicator + FU header

STAP_LENGTH_SIZE = NAL_SIZE_FIELD_SIZE
STAP_A_HEADER_SIZE = NAL_HEADER_SIZE
MAX_STAP_NAL_SIZE = (1 << (8 * STAP_LENGTH_SIZE)) - 1

# NAL types that can only appear at the start of an access unit, before its first slice
# (H.264 7.4.1.2.3). After a gap, decoding resumes at one of these or at a slice whose
# first_mb_in_slice is 0, i.e. where no slice of the picture can have been lost.
_AU_START_TYPES: Final = frozenset({NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD, 13, 14, 15, 16, 17, 18})
_SLICE_HEADER_TYPES: Final = frozenset({NAL_SLICE, NAL_SLICE_DPA, NAL_IDR})


def _stap_a_header(nals: Sequence[bytes]) -> bytes:
    # RFC 6184 §5.7.1: F is the OR of the aggregated F bits, NRI their maximum.
    f_nri = max(nal[0] & NAL_NRI_MASK for nal in nals) | (
        NAL_FORBIDDEN_BIT if any(nal[0] & NAL_FORBIDDEN_BIT for nal in nals) else 0
    )
    return bytes((f_nri | STAP_A,))


PAYLOAD_FORMAT: Final = PayloadFormat(
    nal_header_size=NAL_HEADER_SIZE,
    type_shift=0,
    type_mask=NAL_TYPE_MASK,
    min_single_type=NAL_SLICE,
    max_single_type=MAX_SINGLE_NAL_TYPE,
    fu_type=FU_A,
    fu_name="FU-A",
    max_fu_nal_type=NAL_TYPE_MASK,  # not checked: any type goes on to the decoder
    aggregation_type=STAP_A,
    aggregation_name="STAP-A",
    aggregated_too_short="STAP-A NAL unit length {size}",
    aggregation_header=_stap_a_header,
    nal_too_short="empty NAL unit",
    unsupported_types=UNSUPPORTED_NAL_TYPES,
    key_types=frozenset({NAL_IDR}),
    parameter_set_types=frozenset({NAL_SPS, NAL_PPS}),
    slice_types=_SLICE_HEADER_TYPES,
    picture_start_types=_AU_START_TYPES,
)


class H264Depacketizer(RtpDepacketizer):
    """RTP packets of one H.264 stream in, :class:`AccessUnit`/:class:`Gap`/:class:`StreamReset`
    events out (appended to ``self.events``; drain with :meth:`take_events`).

    The invariants of :class:`csud.media.depacketizer.RtpDepacketizer` hold, with H.264 terms:

    * An emitted :class:`AccessUnit` is complete as far as RTP can tell: no sequence gap, no
      malformed packet and no unfinished FU-A inside it, and it begins at a picture start.
      Anything else is discarded and announced by a :class:`Gap` before the next unit. Its
      ``keyframe`` is true when it holds an IDR slice.
    * After a :class:`Gap` (or at stream start, or after a :class:`StreamReset`) packets are
      dropped until one begins a picture (an SEI/SPS/PPS/AUD NAL unit, or a slice with
      ``first_mb_in_slice == 0``), so a unit that lost its first slices is never emitted.
    * Memory is bounded: one NAL unit <= ``MAX_NAL_SIZE``, one access unit <= ``MAX_AU_SIZE``
      and ``MAX_AU_NALS``; ``self.events`` grows only until the caller drains it.
    * Every ``ValueError`` from :meth:`feed` leaves the object usable and has already
      appended ``Gap(0, "malformed")``; the next packet is processed normally.
    """

    def __init__(self, clock_rate: int = DEFAULT_CLOCK_RATE) -> None:
        super().__init__(PAYLOAD_FORMAT, clock_rate)


# --- Packetizer (simulator side; not the hot path) -----------------------------------

# ``packetize_nal(nal, mtu_payload)``: the NAL unit alone if it fits, else FU-A fragments.
# ``packetize_au(nals, mtu_payload, aggregate)``: the payloads of one access unit, runs of
# small NAL units (typically SPS+PPS+SEI) aggregated into STAP-A packets.
packetize_nal = PAYLOAD_FORMAT.packetize_nal
packetize_au = PAYLOAD_FORMAT.packetize_au


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
