"""One record per recorded codec: every fact the recording path needs about H.264 or H.265.

What belongs here: :class:`Codec` and its two instances, :data:`H264` and :data:`H265`: the
SDP encoding name, the PyAV/muxer codec name, the MP4 sample entry the muxer writes, how to read
a NAL unit's type, which types are keyframes, parameter sets (in the order a segment's first
keyframe carries them) and access unit delimiters, the SPS parser, and how to build the
depacketizer for a described stream. The RTP payload format (:class:`PayloadFormat`) stays in
``h264.py``/``h265.py`` with the type constants; this record points at it, so each fact has one
definition. What does not: the bitstream parsers themselves, sockets, clocks.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from csud.media import h264, h265
from csud.media.depacketizer import DEFAULT_CLOCK_RATE, PayloadFormat, RtpDepacketizer

__all__ = ["CODECS", "H264", "H265", "Codec", "SpsSize", "codec_for_encoding"]


class SpsSize(Protocol):
    """What the writer needs of a parsed SPS: the picture size."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...


@dataclass(frozen=True, slots=True, eq=False)
class Codec:
    """The facts of one video codec, as the recording path uses them (see the module doc)."""

    encoding: str  # SDP rtpmap encoding name: "H264", "H265"
    name: str  # for people: "H.264"
    av_name: str  # PyAV / FFmpeg codec name, given to the muxer: "h264", "hevc"
    sample_entry: str  # the MP4 sample entry the muxer writes (parameter sets in band)
    payload_format: PayloadFormat  # RFC 6184 / RFC 7798 packetization, NAL header layout
    param_types: tuple[int, ...]  # parameter sets, in the order a segment's first keyframe carries them
    sps_type: int  # its change rotates the segment
    aud_type: int  # access unit delimiters stay first in an access unit
    parse_sps: Callable[[bytes], SpsSize]
    _depacketizer: Callable[[int, Mapping[str, str]], RtpDepacketizer] = field(repr=False)

    @property
    def key_types(self) -> frozenset[int]:
        """NAL unit types that make an access unit a keyframe (decoding can start there)."""
        return self.payload_format.key_types

    def nal_type(self, nal: bytes) -> int:
        """The type of ``nal`` (a NAL unit without start code); -1 if empty."""
        return self.payload_format.nal_types[nal[0]] if nal else -1

    def depacketizer(
        self, clock_rate: int = DEFAULT_CLOCK_RATE, fmtp: Mapping[str, str] | None = None
    ) -> RtpDepacketizer:
        """A depacketizer for one stream (``ValueError`` if its SDP asks for what is not supported)."""
        return self._depacketizer(clock_rate, fmtp or {})


def _h265_depacketizer(clock_rate: int, fmtp: Mapping[str, str]) -> RtpDepacketizer:
    try:
        max_don_diff = int(fmtp.get("sprop-max-don-diff", "0") or 0)
        depack_buf_nalus = int(fmtp.get("sprop-depack-buf-nalus", "0") or 0)
    except ValueError:
        raise ValueError("sprop-max-don-diff or sprop-depack-buf-nalus is not an integer") from None
    return h265.H265Depacketizer(clock_rate, max_don_diff=max_don_diff, depack_buf_nalus=depack_buf_nalus)


H264: Final = Codec(
    encoding="H264",
    name="H.264",
    av_name="h264",
    sample_entry="avc1",
    payload_format=h264.PAYLOAD_FORMAT,
    param_types=(h264.NAL_SPS, h264.NAL_PPS),
    sps_type=h264.NAL_SPS,
    aud_type=h264.NAL_AUD,
    parse_sps=h264.parse_sps,
    _depacketizer=lambda clock_rate, _fmtp: h264.H264Depacketizer(clock_rate),
)

H265: Final = Codec(
    encoding="H265",
    name="H.265",
    av_name="hevc",
    sample_entry="hev1",
    payload_format=h265.PAYLOAD_FORMAT,
    param_types=(h265.NAL_VPS, h265.NAL_SPS, h265.NAL_PPS),
    sps_type=h265.NAL_SPS,
    aud_type=h265.NAL_AUD,
    parse_sps=h265.parse_sps,
    _depacketizer=_h265_depacketizer,
)

CODECS: Final = {codec.encoding: codec for codec in (H264, H265)}


def codec_for_encoding(encoding: str) -> Codec:
    """The codec of an SDP encoding name (case-insensitive); ``ValueError`` if not recorded."""
    codec = CODECS.get(encoding.upper())
    if codec is None:
        raise ValueError(f"unsupported codec {encoding} (H264 and H265 are recorded)")
    return codec
