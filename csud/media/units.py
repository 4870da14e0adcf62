"""Small value types shared by the depacketizers, the timeline and the segmenter.

Pure: no I/O, no clock. A depacketizer turns RTP packets into the events below; the
segmenter turns them into writer actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ANNEXB_START_CODE = b"\x00\x00\x00\x01"


@dataclass(slots=True)
class AccessUnit:
    """One coded picture: every NAL unit that shares an RTP timestamp.

    ``nals`` hold NAL units without start codes. ``keyframe`` is true when the unit holds an
    IDR slice (H.264 type 5; H.265 types 16-21), i.e. decoding can start here.
    """

    rtp_timestamp: int
    nals: list[bytes]
    keyframe: bool
    size: int = 0  # payload bytes, sum of len(nal); kept by the depacketizer

    def annexb(self, prefix: list[bytes] | None = None) -> bytes:
        """The unit as an Annex B byte stream, optionally led by ``prefix`` NAL units (SPS, PPS)."""
        nals = [*prefix, *self.nals] if prefix else self.nals
        # One copy of each byte (not a start code + NAL temporary per unit, then the join).
        return ANNEXB_START_CODE + ANNEXB_START_CODE.join(nals) if nals else b""


@dataclass(slots=True, frozen=True)
class Gap:
    """Packets were lost (or a payload was malformed): the access unit in progress is gone.

    The segmenter drops the whole GOP it belongs to; nothing damaged is ever written.
    """

    lost_packets: int
    reason: str = "loss"  # "loss" | "malformed" | "reorder"


@dataclass(slots=True, frozen=True)
class StreamReset:
    """The source changed under us (new SSRC: a camera reboot). The timeline re-anchors."""

    reason: str
    details: dict[str, int] = field(default_factory=dict)


MediaEvent = AccessUnit | Gap | StreamReset
