"""The receiving side of RTCP for one stream (RFC 3550 §6.4): sender reports in, receiver reports out.

Pure: no I/O, no clock (``now_ns`` is passed in). Wire formats live in :mod:`csud.media.rtp`;
this module keeps the little state that links them: the last sender report (for LSR/DLSR and for
the camera clock offset) and the counts at the previous report (for the interval loss fraction).

The camera's clock is compared, never trusted: :func:`clock_offset_ns` is what the metric
``csud_camera_clock_offset_seconds`` exports.

Left out on purpose: interarrival jitter (it needs an arrival time per packet, a clock read on
the hot path; the field is sent as 0, which RFC 3550 allows a receiver that does not compute it).
"""

from __future__ import annotations

from csud.media.rtp import (
    RTP_SEQ_MOD,
    ReportBlock,
    SenderReport,
    build_receiver_report,
    parse_rtcp,
)

NS_PER_SECOND = 1_000_000_000
DLSR_UNITS_PER_SECOND = 65536
FRACTION_LOST_ONE = 256  # fraction_lost is 8-bit fixed point


def ntp_middle_32(ntp64: int) -> int:
    """LSR field: the middle 32 bits of a 64-bit NTP timestamp."""
    return (ntp64 >> 16) & 0xFFFFFFFF


class RtcpReceiver:
    """RTCP state of one received stream; ``local_ssrc`` is csud's own SSRC in its reports."""

    __slots__ = (
        "_ext_highest",
        "_last_sr",
        "_last_sr_arrival_ns",
        "_prev_expected",
        "_prev_received",
        "local_ssrc",
        "sender_reports",
    )

    def __init__(self, local_ssrc: int) -> None:
        self.local_ssrc = local_ssrc & 0xFFFFFFFF
        self.sender_reports = 0
        self._last_sr: SenderReport | None = None
        self._last_sr_arrival_ns = 0
        self._ext_highest = -1  # extended highest sequence number at the last report
        self._prev_expected = 0
        self._prev_received = 0

    @property
    def last_sender_report(self) -> SenderReport | None:
        return self._last_sr

    def on_rtcp(self, data: bytes, now_ns: int) -> SenderReport | None:
        """Take one compound RTCP packet; return its sender report, if any. ValueError if malformed."""
        reports = parse_rtcp(data)
        if not reports:
            return None
        self._last_sr = reports[-1]
        self._last_sr_arrival_ns = now_ns
        self.sender_reports += 1
        return self._last_sr

    def receiver_report(
        self, media_ssrc: int, highest_seq: int, received: int, lost: int, now_ns: int
    ) -> bytes:
        """A receiver report about ``media_ssrc``.

        ``highest_seq`` is the 16-bit highest sequence number received; reports are assumed to
        come less than 32768 packets apart (every few seconds), which unwraps it. ``received``
        and ``lost`` are cumulative counts for the stream.
        """
        if self._ext_highest < 0:
            ext = highest_seq
        else:
            step = (highest_seq - self._ext_highest) % RTP_SEQ_MOD
            ext = self._ext_highest + (step if step < RTP_SEQ_MOD // 2 else 0)
        self._ext_highest = ext
        expected = received + lost
        expected_interval = expected - self._prev_expected
        lost_interval = expected_interval - (received - self._prev_received)
        self._prev_expected, self._prev_received = expected, received
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, lost_interval * FRACTION_LOST_ONE // expected_interval)
        lsr = dlsr = 0
        if self._last_sr is not None:
            lsr = ntp_middle_32(self._last_sr.ntp_timestamp)
            delay_ns = max(0, now_ns - self._last_sr_arrival_ns)
            dlsr = min(0xFFFFFFFF, delay_ns * DLSR_UNITS_PER_SECOND // NS_PER_SECOND)
        block = ReportBlock(
            ssrc=media_ssrc & 0xFFFFFFFF,
            fraction_lost=fraction,
            cumulative_lost=max(-(1 << 23), min((1 << 23) - 1, lost)),
            highest_seq=ext & 0xFFFFFFFF,
            jitter=0,
            lsr=lsr,
            dlsr=dlsr,
        )
        return build_receiver_report(self.local_ssrc, [block])


def clock_offset_ns(report: SenderReport, server_ns_for_rtp: int) -> int:
    """Camera clock minus server clock, from a sender report and the server time the timeline
    gives the same RTP timestamp. Positive: the camera's clock is ahead."""
    return report.unix_ns - server_ns_for_rtp
