"""The media side of a simulated camera: one :class:`Session` per client sends the clip's frames.

A session patches the shared frame blobs with its own sequence numbers, RTP timestamps and
SSRC, writes them once (TCP-interleaved on its connection, or UDP through the server), sends
RTCP sender reports on the clock, and counts what it sent. A :class:`Camera` groups the
sessions playing one camera and keeps the counters of the ended ones.

What a session needs of the server and of its RTSP connection is spelled out as the
:class:`Host` and :class:`Link` protocols, so that this module imports neither (the server
and the connection import it).
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

from csud.media.rtp import build_sender_report, unix_ns_to_ntp
from csud.sim.options import SimOptions
from csud.sim.packets import RTP_CLOCK_RATE, SEQ_MOD, TS_MOD, PacketizedFrame, patch_frame

SESSION_HISTORY = 64
NS_PER_SECOND = 1_000_000_000


class Link(Protocol):
    """What a session needs of its RTSP connection (:class:`csud.sim.protocol.RtspConnection`)."""

    transport: asyncio.Transport | None
    closing: bool
    sessions: dict[str, Session]

    def write(self, data: bytes) -> None: ...

    def close(self, abort: bool = False) -> None: ...


class Host(Protocol):
    """What a session and a camera need of the server (:class:`csud.sim.server.SimServer`)."""

    options: SimOptions
    fps: int

    def loop_time(self) -> float: ...

    def send_udp(self, blob: bytes | bytearray, dest: tuple[str, int]) -> None: ...

    def send_udp_rtcp(self, report: bytes, dest: tuple[str, int]) -> None: ...

    @property
    def connections(self) -> Collection[Link]: ...


@dataclass(slots=True)
class SessionCounters:
    frames_sent: int = 0
    frames_sent_from_first_keyframe: int = 0
    frames_dropped: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    sender_reports_sent: int = 0
    rtcp_received: int = 0

    def add(self, other: SessionCounters) -> None:
        self.frames_sent += other.frames_sent
        self.frames_sent_from_first_keyframe += other.frames_sent_from_first_keyframe
        self.frames_dropped += other.frames_dropped
        self.packets_sent += other.packets_sent
        self.bytes_sent += other.bytes_sent
        self.sender_reports_sent += other.sender_reports_sent
        self.rtcp_received += other.rtcp_received

    def as_dict(self) -> dict[str, int]:
        return {
            "frames_sent": self.frames_sent,
            "frames_sent_from_first_keyframe": self.frames_sent_from_first_keyframe,
            "frames_dropped": self.frames_dropped,
            "packets_sent": self.packets_sent,
            "bytes_sent": self.bytes_sent,
            "sender_reports_sent": self.sender_reports_sent,
            "rtcp_received": self.rtcp_received,
        }


class Session:
    """One RTSP session: one camera's track sent over one connection."""

    __slots__ = (
        "camera",
        "connection",
        "counters",
        "first_frame_index",
        "first_frame_keyframe",
        "frame_number",
        "frames_before_first_keyframe",
        "id",
        "last_activity",
        "next_sr_ns",
        "payload_octets",
        "rtcp_channel",
        "rtp_channel",
        "seq",
        "seq_start",
        "ssrc",
        "state",
        "ts_start",
        "udp_rtcp_dest",
        "udp_rtp_dest",
        "waiting_for_keyframe",
    )

    def __init__(self, camera: Camera, connection: Link, channels: tuple[int, int], now: float):
        self.id = secrets.token_hex(8)
        self.camera = camera
        self.connection = connection
        self.rtp_channel, self.rtcp_channel = channels
        self.ssrc = secrets.randbits(32)
        self.seq_start = secrets.randbits(16)
        self.ts_start = secrets.randbits(32)
        self.seq = self.seq_start
        self.frame_number = 0  # frames sent or dropped: the RTP timestamp is derived from it
        self.state = "ready"
        self.last_activity = now
        self.next_sr_ns = 0
        self.waiting_for_keyframe = False
        self.first_frame_index: int | None = None
        self.first_frame_keyframe: bool | None = None
        self.frames_before_first_keyframe: int | None = None
        self.counters = SessionCounters()
        self.payload_octets = 0  # RTP payload bytes sent: the SR's octet count
        self.udp_rtp_dest: tuple[str, int] | None = None  # set when the client chose UDP
        self.udp_rtcp_dest: tuple[str, int] | None = None

    def rtp_timestamp(self, frame_number: int) -> int:
        return (self.ts_start + frame_number * RTP_CLOCK_RATE // self.camera.server.fps) % TS_MOD

    def restart_stream(self, ssrc: int, ts_start: int, seq: int, packet_count: int) -> int:
        """An encoder restart at the frame being sent: a new SSRC and RTP timestamp origin, and
        that frame's ``packet_count`` packets numbered from ``seq``. Returns its RTP timestamp."""
        self.ssrc = ssrc
        self.ts_start = ts_start % TS_MOD
        self.resequence(seq, packet_count)
        return self.rtp_timestamp(self.frame_number - 1)

    def resequence(self, seq: int, packet_count: int) -> None:
        """The frame being sent goes out as ``packet_count`` packets numbered from ``seq``
        (a fault replaced it): the next frame's sequence numbers follow those."""
        self.seq = (seq + packet_count) % SEQ_MOD

    def send_frame(self, frame: PacketizedFrame, wall_ns: int) -> None:
        """Send (or drop) ``frame`` as this session's next frame. The hot path."""
        if self.waiting_for_keyframe:
            if not frame.keyframe:
                return
            self.waiting_for_keyframe = False
        counters = self.counters
        if self.first_frame_index is None:
            self.first_frame_index = frame.index
            self.first_frame_keyframe = frame.keyframe
        timestamp = self.rtp_timestamp(self.frame_number)
        self.frame_number += 1
        seq = self.seq
        self.seq = (seq + frame.packet_count) % SEQ_MOD
        server = self.camera.server
        transport = self.connection.transport
        if transport is None or transport.get_write_buffer_size() > server.options.max_write_buffer:
            counters.frames_dropped += 1
            return
        if wall_ns >= self.next_sr_ns:
            # Reports follow the clock, not the frames: a camera whose encoder stalls (the frame
            # hook dropping frames) keeps sending them, as real ones do.
            self._send_sender_report(timestamp, wall_ns)
        patched = patch_frame(frame, seq, timestamp, self.ssrc, self.rtp_channel)
        hook = server.options.frame_hook
        data: bytes | bytearray = patched
        if hook is not None:  # the fault-injection point: rewrite, delay or drop the frame
            hooked = hook(self, frame, patched)
            if hooked is None:
                counters.frames_dropped += 1
                return
            data = hooked
        if self.udp_rtp_dest is None:
            transport.write(data)
        else:
            server.send_udp(data, self.udp_rtp_dest)
        if frame.keyframe and self.frames_before_first_keyframe is None:
            self.frames_before_first_keyframe = counters.frames_sent
        counters.frames_sent += 1
        if self.frames_before_first_keyframe is not None:
            counters.frames_sent_from_first_keyframe += 1
        counters.packets_sent += frame.packet_count
        counters.bytes_sent += len(frame.blob)
        self.payload_octets += frame.payload_octets

    def _send_sender_report(self, rtp_timestamp: int, wall_ns: int) -> None:
        server = self.camera.server
        self.next_sr_ns = wall_ns + int(server.options.sr_interval * NS_PER_SECOND)
        transport = self.connection.transport
        if transport is None:
            return
        counters = self.counters
        report = build_sender_report(
            self.ssrc,
            unix_ns_to_ntp(wall_ns),
            rtp_timestamp,
            counters.packets_sent % TS_MOD,
            self.payload_octets % TS_MOD,
        ) + _sdes_cname(self.ssrc, f"csud-sim@{self.camera.name}".encode())
        if self.udp_rtcp_dest is not None:
            server.send_udp_rtcp(report, self.udp_rtcp_dest)
        else:
            transport.write(b"$" + bytes((self.rtcp_channel,)) + len(report).to_bytes(2, "big") + report)
        counters.sender_reports_sent += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "ssrc": self.ssrc,
            "first_frame_index": self.first_frame_index,
            "first_frame_keyframe": self.first_frame_keyframe,
            "frames_before_first_keyframe": self.frames_before_first_keyframe,
            **self.counters.as_dict(),
        }


def _sdes_cname(ssrc: int, cname: bytes) -> bytes:
    """RTCP SDES with one CNAME item (RFC 3550 §6.5): a compound packet must carry one."""
    chunk = ssrc.to_bytes(4, "big") + bytes((1, len(cname))) + cname + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return bytes((0x81, 202)) + ((len(chunk) + 4) // 4 - 1).to_bytes(2, "big") + chunk


class Camera:
    __slots__ = (
        "closed_counters",
        "history",
        "index",
        "name",
        "phase",
        "playing",
        "server",
        "sessions_total",
    )

    def __init__(self, server: Host, index: int, phase: int) -> None:
        self.server = server
        self.index = index
        self.name = f"cam{index}"
        self.phase = phase
        self.playing: set[Session] = set()
        self.sessions_total = 0
        self.closed_counters = SessionCounters()
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=SESSION_HISTORY)
