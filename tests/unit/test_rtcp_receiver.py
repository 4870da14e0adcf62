"""RtcpReceiver: sender reports in, receiver reports out; the camera clock offset."""

from __future__ import annotations

import pytest

from csud.media.rtcp import RtcpReceiver, clock_offset_ns, ntp_middle_32
from csud.media.rtp import build_sender_report, parse_rtcp_packets, unix_ns_to_ntp
from csud.recording.timeline import Timeline

NS = 1_000_000_000


def test_receiver_report_carries_loss_and_last_sender_report() -> None:
    rx = RtcpReceiver(local_ssrc=0xC5D)
    sr_ntp = unix_ns_to_ntp(1_700_000_000 * NS)
    sr = rx.on_rtcp(build_sender_report(0xCAFE, sr_ntp, 90000, 10, 1000), now_ns=5 * NS)
    assert sr is not None and sr.rtp_timestamp == 90000
    data = rx.receiver_report(0xCAFE, highest_seq=99, received=90, lost=10, now_ns=5 * NS + NS // 2)
    (rr,) = parse_rtcp_packets(data)
    block = rr.reports[0]
    assert rr.ssrc == 0xC5D and block.ssrc == 0xCAFE
    assert (block.cumulative_lost, block.highest_seq) == (10, 99)
    assert block.fraction_lost == 10 * 256 // 100
    assert block.lsr == ntp_middle_32(sr_ntp)
    assert block.dlsr == 65536 // 2
    # Two more intervals of 30000 packets, none lost: the 16-bit sequence number wraps.
    for n in (1, 2):
        seq = (99 + 30000 * n) % 65536
        data = rx.receiver_report(0xCAFE, seq, received=90 + 30000 * n, lost=10, now_ns=6 * NS)
        block = parse_rtcp_packets(data)[0].reports[0]
        assert block.highest_seq == 99 + 30000 * n and block.fraction_lost == 0


def test_receiver_report_before_any_sender_report() -> None:
    block = parse_rtcp_packets(RtcpReceiver(1).receiver_report(2, 5, 6, 0, now_ns=0))[0].reports[0]
    assert (block.lsr, block.dlsr, block.fraction_lost) == (0, 0, 0)


def test_malformed_rtcp_raises_value_error() -> None:
    with pytest.raises(ValueError):
        RtcpReceiver(1).on_rtcp(b"\x80\xc8\x00\x06abc", now_ns=0)


def test_clock_offset_against_the_timeline() -> None:
    timeline = Timeline()
    arrival = 1_800_000_000 * NS
    timeline.map(1000, arrival)  # anchors RTP 1000 on the server's arrival time
    assert timeline.project(1000 + 90000) == arrival + NS
    camera_clock = arrival + NS + 3 * NS // 2  # the camera's clock is 1.5 s ahead
    sr = RtcpReceiver(1).on_rtcp(build_sender_report(7, unix_ns_to_ntp(camera_clock), 91000, 0, 0), arrival)
    assert sr is not None
    server = timeline.project(sr.rtp_timestamp)
    assert server is not None
    assert clock_offset_ns(sr, server) == 3 * NS // 2


def test_project_before_anchor_and_across_wrap() -> None:
    timeline = Timeline()
    assert timeline.project(5) is None
    timeline.map(2**32 - 90000, 10 * NS)
    assert timeline.project(0) == 11 * NS  # one second later, across the 32-bit wrap
    assert timeline.project(2**32 - 180000) == 9 * NS  # a second before
