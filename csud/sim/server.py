"""The camera simulator: an asyncio RTSP server serving ``/cam1`` .. ``/camN`` on 127.0.0.1.

``csud simulate`` runs :func:`main`; tests and benchmarks call :func:`serve`. Every camera
plays the same H.264 clip (:mod:`csud.sim.clip`), encoded once and packetized once
(:mod:`csud.sim.packets`), looped with continuous RTP timestamps and sequence numbers; each
camera starts at its own position in the clip, so keyframes are staggered across cameras as
they are in a real site. RTP goes over the RTSP connection (TCP interleaved) or, when the
client's SETUP asks for it, over UDP from one server socket pair (one datagram per packet).

One task clocks every session: it ticks at the frame rate against the loop clock (deadlines
``t0 + n / fps``, so there is no drift) and hands the due frame to every playing session,
which patches a copy of the frame's blob and writes it once. A client whose transport buffer
exceeds ``max_write_buffer`` bytes loses that frame (counted in ``frames_dropped``; its
sequence numbers still advance so the client sees the loss), so a slow client never grows the
simulator's memory. The per-session send path has one hook, ``SimOptions.frame_hook``
(``(session, frame, wire_bytes) -> bytes | None``; ``None`` drops the frame), where faults
plug in, with ``request_hook`` and ``response_hook`` for the RTSP ones: ``SimOptions.faults``
(``csud simulate --fault [CAMERAS=]KIND[:ARG][@START[+DURATION]]``, e.g. ``cam2=loss:5``)
installs all three; the kinds and the syntax are documented in :mod:`csud.sim.faults`.

RTSP: OPTIONS, DESCRIBE, SETUP (``RTP/AVP/TCP``; the client's interleaved channels, or the
first free pair), PLAY (``RTP-Info`` gives the first packet's seq and rtptime), GET_PARAMETER
(keep-alive) and TEARDOWN (200, then the connection closes once it holds no session). 404 for
a path other than ``/camK[/trackID=0]``, 454 for an unknown session, 455 for a method in the
wrong state, 461 for UDP, 501 for other methods; bytes that are not RTSP get 400 and that
connection is closed. Any request refreshes the sessions of its connection; a session without
one for ``session_timeout`` seconds is torn down (RTCP receiver reports are counted, and do
not refresh it). With credentials configured, every method but OPTIONS needs them (Digest
MD5 with or without ``qop=auth``, realm ``csud-sim``, or Basic); the password is never logged.
RTCP sender reports (with an SDES CNAME) go out on the RTCP channel after a session's first
frame and then every ``sr_interval`` seconds.

Stats (:meth:`SimServer.stats`, and the ``--stats-file`` JSON, rewritten atomically every
``stats_interval`` seconds and at exit)::

    {
      "port": 8554, "fps": 25, "clip_frames": 100, "gop_frames": 25, "uptime_seconds": 12.3,
      "connections_active": 2, "connections_total": 3, "malformed_connections": 1,
      "auth_failures": 1, "sessions_timed_out": 0, "teardowns": 1, "ticks": 307, "clock_resets": 0,
      "totals": {<the camera counters below, summed over cameras>},
      "cameras": {
        "cam1": {
          "sessions_active": 1,      # sessions set up and not torn down
          "sessions_total": 2,       # sessions ever set up
          "frames_sent": 250,        # frames written (every packet of the frame), all sessions
          "frames_sent_from_first_keyframe": 240,  # per session, frames from its first keyframe on
          "frames_dropped": 0,       # frames skipped for a slow client (or by the frame hook)
          "packets_sent": 3100, "bytes_sent": 3900000,  # RTP, with the 4-byte interleaved framing
          "sender_reports_sent": 3, "rtcp_received": 2,
          "sessions": [              # the active ones and the last 64 ended ones, oldest first
            {"id": "9f2c...", "state": "playing",   # ready | playing | closed
             "first_frame_index": 10,               # clip position of the first frame sent
             "first_frame_keyframe": false,
             "frames_before_first_keyframe": 15,    # null until a keyframe has been sent
             "frames_sent": 250, "frames_sent_from_first_keyframe": 235, "frames_dropped": 0,
             "packets_sent": 3100, "bytes_sent": 3900000, "sender_reports_sent": 3,
             "rtcp_received": 2, "ssrc": 305419896}
          ]
        }
      }
    }

A recorder test compares ``frames_sent_from_first_keyframe`` with the frames it recorded:
a receiver can only start at a keyframe, so that is the count it can account for.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import structlog

from csud.media.rtp import build_sender_report, unix_ns_to_ntp
from csud.sim.clip import Clip, ClipParams, load_clip
from csud.sim.faults import FaultInjector
from csud.sim.packets import (
    DEFAULT_MTU_PAYLOAD,
    PAYLOAD_TYPE,
    RTP_CLOCK_RATE,
    SEQ_MOD,
    TS_MOD,
    PacketizedFrame,
    packetize_clip,
    patch_frame,
)
from csud.sim.rtsp import (
    InterleavedFrame,
    MalformedRequest,
    Request,
    RequestReader,
    basic_challenge,
    check_basic,
    check_digest,
    digest_challenge,
    format_response,
    parse_transport,
)

log = structlog.get_logger("csud.sim")

PUBLIC_METHODS = "OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN"
TRACK_CONTROL = "trackID=0"
MAX_WRITE_BUFFER = 8 * 1024 * 1024
MAX_CLOCK_LAG_SECONDS = 1.0  # further behind than this, the ticker re-anchors instead of bursting
MAX_NONCES = 4096
SESSION_HISTORY = 64
NS_PER_SECOND = 1_000_000_000
_CAMERA_PATH = re.compile(r"^/cam([1-9][0-9]{0,5})(?:/(.*))?$")

Reply = tuple[int, list[tuple[str, str]], bytes]  # status, headers, body
FrameHook = Callable[["Session", PacketizedFrame, bytearray], "bytes | bytearray | None"]
# Fault hooks (csud.sim.faults): answer a request instead of the server; send a response otherwise.
RequestHook = Callable[["RtspConnection", Request], "Reply | None"]
ResponseHook = Callable[["RtspConnection", Request, bytes], bool]  # True: the hook sent it


@dataclass(slots=True)
class SimOptions:
    cameras: int = 1
    port: int = 8554  # 0: any free port (read it back from SimServer.port)
    host: str = "127.0.0.1"
    fps: int = 25
    bitrate: int = 4_000_000  # bit/s
    gop_seconds: float = 1.0
    width: int = 1280
    height: int = 720
    username: str | None = None  # auth is on when both username and password are set
    password: str | None = field(default=None, repr=False)
    auth: Literal["digest", "basic"] = "digest"
    digest_qop: bool = False  # advertise qop="auth" in the Digest challenge
    inband_parameter_sets: bool = True  # False: SPS/PPS only in the SDP
    session_timeout: float = 60.0  # seconds without a request before a session is torn down
    sr_interval: float = 5.0  # seconds between RTCP sender reports, per session
    max_write_buffer: int = MAX_WRITE_BUFFER  # per connection; beyond it frames are dropped
    socket_send_buffer: int | None = None  # SO_SNDBUF of client sockets (None: the kernel's)
    stats_file: Path | None = None
    stats_interval: float = 1.0
    mtu_payload: int = DEFAULT_MTU_PAYLOAD
    stagger_cameras: bool = True  # each camera starts at its own clip position
    play_from_keyframe: bool = False  # hold a new session's first frame until a keyframe is due
    clip_cache_dir: Path | None = None
    use_clip_cache: bool = True
    frame_hook: FrameHook | None = field(default=None, repr=False)
    request_hook: RequestHook | None = field(default=None, repr=False)
    response_hook: ResponseHook | None = field(default=None, repr=False)
    faults: FaultInjector | None = field(default=None, repr=False)  # installs the three hooks
    # Camera quirks, for the recorder's tests:
    payload_type: int = PAYLOAD_TYPE  # dynamic payload type in the SDP and the RTP headers
    control: Literal["relative", "absolute", "star"] = "relative"  # the media's a=control
    content_base: bool = True  # send Content-Base with DESCRIBE
    nonce_lifetime: float | None = None  # Digest nonces expire (401 stale=TRUE) after this
    server_request_interval: float | None = None  # send GET_PARAMETER to playing clients

    @property
    def auth_enabled(self) -> bool:
        return self.username is not None and self.password is not None

    def clip_params(self) -> ClipParams:
        return ClipParams(
            width=self.width,
            height=self.height,
            fps=self.fps,
            bitrate=self.bitrate,
            gop_seconds=self.gop_seconds,
        )


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

    def __init__(self, camera: Camera, connection: RtspConnection, channels: tuple[int, int], now: float):
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

    def __init__(self, server: SimServer, index: int, phase: int) -> None:
        self.server = server
        self.index = index
        self.name = f"cam{index}"
        self.phase = phase
        self.playing: set[Session] = set()
        self.sessions_total = 0
        self.closed_counters = SessionCounters()
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=SESSION_HISTORY)


class RtspConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them, owns the sessions it set up."""

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader()
        self.sessions: dict[str, Session] = {}
        self.closing = False

    # --- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                send_buffer = self.server.options.socket_send_buffer
                if send_buffer is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        self.server._connections.add(self)
        self.server._connections_total += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        for session in list(self.sessions.values()):
            self.server._end_session(session)
        self.sessions.clear()
        self.server._connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            items = self.reader.feed(data)
        except MalformedRequest as exc:
            self.server._malformed_connections += 1
            log.info("sim.malformed_request", reason=str(exc))
            self._write(format_response(400, None))
            self.close()
            return
        for item in items:
            if self.closing:
                return
            if isinstance(item, InterleavedFrame):
                self._on_interleaved(item)
            else:
                self._on_request(item)

    # --- requests ----------------------------------------------------------------------

    def _on_interleaved(self, frame: InterleavedFrame) -> None:
        for session in self.sessions.values():
            if frame.channel == session.rtcp_channel:
                session.counters.rtcp_received += 1
                return

    def _on_request(self, request: Request) -> None:
        if request.method.startswith("RTSP/"):  # a client's answer to our own request
            self.server.client_responses += 1
            return
        cseq = request.header("cseq")
        status: int
        headers: list[tuple[str, str]]
        body: bytes
        try:
            if cseq is None:
                status, headers, body = 400, [], b""
            elif request.version != "RTSP/1.0":
                status, headers, body = 505, [], b""
            else:
                status, headers, body = self._dispatch(request)
        except Exception:  # one bad request must never take the simulator down
            log.exception("sim.request_failed", method=request.method)
            status, headers, body = 500, [], b""
        response = format_response(status, cseq, headers, body)
        response_hook = self.server.options.response_hook
        if response_hook is None or not response_hook(self, request, response):
            self._write(response)
        if request.method == "TEARDOWN" and status == 200 and not self.sessions:
            self.close()

    def _dispatch(self, request: Request) -> Reply:
        server = self.server
        method = request.method
        if method not in _HANDLERS:
            return 501, [("Public", PUBLIC_METHODS)], b""
        request_hook = server.options.request_hook
        if request_hook is not None:
            reply = request_hook(self, request)
            if reply is not None:
                return reply
        now = server.loop_time()
        # Any request keeps the sessions of this connection alive.
        for own in self.sessions.values():
            own.last_activity = now
        if method != "OPTIONS":
            authorized = server._authorized(request)
            if not authorized:
                return 401, [("WWW-Authenticate", server._challenge(stale=authorized is None))], b""
        session: Session | None = None
        session_header = request.header("session")
        if session_header is not None:
            session_id = session_header.split(";", 1)[0].strip()
            session = server._sessions.get(session_id)
            if session is None:
                return 454, [], b""
            session.last_activity = now
        return _HANDLERS[method](self, request, session)

    def _camera_for(self, request: Request) -> tuple[Camera | None, str]:
        """The camera the URI names and the rest of its path (``""`` or the track control)."""
        uri = request.uri
        path = urlsplit(uri).path if "://" in uri else uri
        match = _CAMERA_PATH.match(path)
        if not match:
            return None, ""
        index = int(match.group(1))
        if not 1 <= index <= len(self.server.cameras):
            return None, ""
        return self.server.cameras[index - 1], (match.group(2) or "").strip("/")

    def _options(self, request: Request, session: Session | None) -> Reply:
        return 200, [("Public", PUBLIC_METHODS)], b""

    def _describe(self, request: Request, session: Session | None) -> Reply:
        camera, _ = self._camera_for(request)
        if camera is None:
            return 404, [], b""
        body = self.server.sdp(camera).encode()
        headers = [("Content-Type", "application/sdp")]
        if self.server.options.content_base:
            headers.insert(0, ("Content-Base", self.server.camera_url(camera) + "/"))
        return 200, headers, body

    def _setup(self, request: Request, session: Session | None) -> Reply:
        camera, rest = self._camera_for(request)
        if camera is None or rest not in ("", TRACK_CONTROL):
            return 404, [], b""
        transport_header = request.header("transport")
        if not transport_header:
            return 400, [], b""
        try:
            specs = parse_transport(transport_header)
        except ValueError:
            return 400, [], b""
        tcp = next((s for s in specs if s.tcp), None)
        udp = next((s for s in specs if not s.tcp and s.client_port), None)
        if tcp is None and udp is None:
            return 461, [], b""
        if tcp is None and udp is not None:
            return self._setup_udp(camera, session, udp.client_port or (0, 0))
        assert tcp is not None
        channels = tcp.interleaved or self._free_channels()
        if session is not None:
            if session.connection is not self or session.camera is not camera:
                return 459, [], b""
            if session.state == "playing":
                return 455, [("Allow", "PLAY, GET_PARAMETER, TEARDOWN")], b""
            session.rtp_channel, session.rtcp_channel = channels
        else:
            session = self.server._new_session(camera, self, channels)
        transport = (
            f"RTP/AVP/TCP;unicast;interleaved={channels[0]}-{channels[1]};ssrc={session.ssrc:08X};mode=play"
        )
        return 200, [("Transport", transport), self.server._session_header(session)], b""

    def _setup_udp(self, camera: Camera, session: Session | None, client_port: tuple[int, int]) -> Reply:
        if session is not None:
            return 459, [], b""  # one track per session: a second SETUP is not supported over UDP
        if self.transport is None:
            return 500, [], b""
        peer = self.transport.get_extra_info("peername")[0]
        session = self.server._new_session(camera, self, (0, 1))
        session.udp_rtp_dest = (peer, client_port[0])
        session.udp_rtcp_dest = (peer, client_port[1])
        rtp_port, rtcp_port = self.server.udp_ports
        transport = (
            f"RTP/AVP;unicast;client_port={client_port[0]}-{client_port[1]};"
            f"server_port={rtp_port}-{rtcp_port};ssrc={session.ssrc:08X};mode=play"
        )
        return 200, [("Transport", transport), self.server._session_header(session)], b""

    def _free_channels(self) -> tuple[int, int]:
        used = {s.rtp_channel for s in self.sessions.values()}
        channel = 0
        while channel in used:
            channel += 2
        return channel, channel + 1

    def _play(self, request: Request, session: Session | None) -> Reply:
        camera, _ = self._camera_for(request)
        if camera is None:
            return 404, [], b""
        if session is None:
            return 455, [("Allow", "OPTIONS, DESCRIBE, SETUP")], b""
        if session.connection is not self:
            return 454, [], b""
        if session.state != "playing":
            session.state = "playing"
            session.waiting_for_keyframe = self.server.options.play_from_keyframe
            camera.playing.add(session)
        url = self.server.camera_url(session.camera) + "/" + TRACK_CONTROL
        rtp_info = f"url={url};seq={session.seq};rtptime={session.rtp_timestamp(session.frame_number)}"
        return (
            200,
            [("Range", "npt=0.000-"), ("RTP-Info", rtp_info), self.server._session_header(session)],
            b"",
        )

    def _get_parameter(self, request: Request, session: Session | None) -> Reply:
        headers = [self.server._session_header(session)] if session is not None else []
        return 200, headers, b""

    def _teardown(self, request: Request, session: Session | None) -> Reply:
        if session is None:
            return 455, [], b""
        if session.connection is not self:
            return 454, [], b""
        self.server._teardowns += 1
        self.server._end_session(session)
        return 200, [], b""

    # --- output ------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, abort: bool = False) -> None:
        self.closing = True
        for session in list(self.sessions.values()):
            self.server._end_session(session)
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


class _RtcpCounter(asyncio.DatagramProtocol):
    """Counts the receiver reports UDP clients send to the server's RTCP port."""

    def __init__(self, server: SimServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server.udp_rtcp_received += 1


Handler = Callable[[RtspConnection, Request, "Session | None"], Reply]
_HANDLERS: dict[str, Handler] = {
    "OPTIONS": RtspConnection._options,
    "DESCRIBE": RtspConnection._describe,
    "SETUP": RtspConnection._setup,
    "PLAY": RtspConnection._play,
    "GET_PARAMETER": RtspConnection._get_parameter,
    "TEARDOWN": RtspConnection._teardown,
}


class SimServer:
    """A running simulator. Create it with :func:`serve`; stop it with :meth:`close`."""

    def __init__(self, options: SimOptions, clip: Clip, frames: tuple[PacketizedFrame, ...]) -> None:
        if options.cameras < 1:
            raise ValueError(f"cameras must be at least 1, not {options.cameras}")
        self.options = options
        self.clip = clip
        self.frames = frames
        self.fps = options.fps
        self.port = 0
        step = 7 if options.stagger_cameras else 0  # 7 is prime to usual GOP lengths
        self.cameras = [
            Camera(self, k, ((k - 1) * step) % len(frames)) for k in range(1, options.cameras + 1)
        ]
        self._sessions: dict[str, Session] = {}
        self._connections: set[RtspConnection] = set()
        self._connections_total = 0
        self._malformed_connections = 0
        self._auth_failures = 0
        self._sessions_timed_out = 0
        self._teardowns = 0  # sessions ended by the client's TEARDOWN
        self._ticks = 0
        self._clock_resets = 0
        self._nonces: collections.OrderedDict[str, float] = collections.OrderedDict()  # nonce: issued
        self.stale_nonces = 0  # right answers to expired nonces, refused with stale=TRUE
        self.client_responses = 0  # answers to our own requests (server_request_interval)
        self.server_requests_sent = 0
        self._listener: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._sdp_session_id = secrets.randbits(31)
        self._udp_rtp: asyncio.DatagramTransport | None = None
        self._udp_rtcp: asyncio.DatagramTransport | None = None
        self.udp_ports = (0, 0)
        self.udp_rtcp_received = 0

    def loop_time(self) -> float:
        return self._loop.time()

    def send_udp(self, blob: bytes | bytearray, dest: tuple[str, int]) -> None:
        """Send each RTP packet of an interleaved frame blob as its own datagram."""
        udp = self._udp_rtp
        if udp is None:
            return
        view = memoryview(blob)
        offset, end = 0, len(blob)
        while offset + 4 <= end:
            length = blob[offset + 2] << 8 | blob[offset + 3]
            udp.sendto(view[offset + 4 : offset + 4 + length], dest)
            offset += 4 + length

    def send_udp_rtcp(self, report: bytes, dest: tuple[str, int]) -> None:
        if self._udp_rtcp is not None:
            self._udp_rtcp.sendto(report, dest)

    # --- lifecycle -----------------------------------------------------------------------

    async def _start(self) -> None:
        self._listener = await self._loop.create_server(
            lambda: RtspConnection(self), self.options.host, self.options.port, reuse_address=True
        )
        self.port = self._listener.sockets[0].getsockname()[1]
        # One UDP socket pair serves every UDP session (server_port in SETUP's reply).
        host = self.options.host
        self._udp_rtp, _ = await self._loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(host, 0)
        )
        self._udp_rtcp, _ = await self._loop.create_datagram_endpoint(
            lambda: _RtcpCounter(self), local_addr=(host, 0)
        )
        self.udp_ports = (
            self._udp_rtp.get_extra_info("sockname")[1],
            self._udp_rtcp.get_extra_info("sockname")[1],
        )
        self._tasks.append(asyncio.create_task(self._ticker(), name="csud-sim-ticker"))
        if self.options.server_request_interval:
            self._tasks.append(asyncio.create_task(self._server_requests(), name="csud-sim-requests"))
        if self.options.stats_file is not None:
            self._tasks.append(asyncio.create_task(self._stats_writer(), name="csud-sim-stats"))
        log.info("sim.listening", port=self.port, cameras=len(self.cameras), first=self.urls()[0])

    async def close(self) -> None:
        """Stop sending, close every connection and the listening socket; write final stats."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None:
            self._listener.close()
        for udp in (self._udp_rtp, self._udp_rtcp):
            if udp is not None:
                udp.close()
        for connection in list(self._connections):
            transport = connection.transport
            # A client that stopped reading would hold close() forever: abort those.
            connection.close(abort=transport is not None and transport.get_write_buffer_size() > 0)
        if self._listener is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._listener.wait_closed(), 2.0)
        await asyncio.sleep(0)  # let connection_lost callbacks run
        if self.options.faults is not None:
            self.options.faults.close()
        if self.options.stats_file is not None:
            self._write_stats_file()
        log.info("sim.closed", port=self.port)

    async def __aenter__(self) -> SimServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the clock -------------------------------------------------------------------------

    async def _server_requests(self) -> None:
        """Some cameras send requests to the client on the interleaved connection."""
        interval = self.options.server_request_interval or 1.0
        cseq = 0
        while True:
            await asyncio.sleep(interval)
            for session in list(self._sessions.values()):
                if session.state != "playing" or session.udp_rtp_dest is not None:
                    continue
                cseq += 1
                url = self.camera_url(session.camera)
                request = f"GET_PARAMETER {url} RTSP/1.0\r\nCSeq: {cseq}\r\nSession: {session.id}\r\n\r\n"
                session.connection._write(request.encode())
                self.server_requests_sent += 1

    async def _ticker(self) -> None:
        """Send frame n of every camera at ``t0 + n / fps``; check session timeouts each second."""
        loop = self._loop
        period = 1.0 / self.fps
        n_frames = len(self.frames)
        frames = self.frames
        t0 = loop.time()
        tick = 0
        next_timeout_check = t0 + 1.0
        while not self._closed:
            deadline = t0 + tick * period
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time()
            if now - deadline > MAX_CLOCK_LAG_SECONDS:
                # Far behind (suspended, overloaded): keep frames consecutive, give up the lost time.
                t0 = now - tick * period
                deadline = now
                self._clock_resets += 1
            wall_ns = time.time_ns() - int((now - deadline) * NS_PER_SECOND)
            for camera in self.cameras:
                if camera.playing:
                    frame = frames[(tick + camera.phase) % n_frames]
                    for session in tuple(camera.playing):
                        session.send_frame(frame, wall_ns)
            tick += 1
            self._ticks = tick
            if now >= next_timeout_check:
                next_timeout_check = now + 1.0
                self._expire_sessions(now)

    def _expire_sessions(self, now: float) -> None:
        timeout = self.options.session_timeout
        for session in list(self._sessions.values()):
            if now - session.last_activity > timeout:
                self._sessions_timed_out += 1
                log.info("sim.session_timeout", camera=session.camera.name, session=session.id)
                connection = session.connection
                self._end_session(session)
                if not connection.sessions:
                    connection.close()

    # --- sessions --------------------------------------------------------------------------

    def _new_session(self, camera: Camera, connection: RtspConnection, channels: tuple[int, int]) -> Session:
        session = Session(camera, connection, channels, self.loop_time())
        self._sessions[session.id] = session
        connection.sessions[session.id] = session
        camera.sessions_total += 1
        return session

    def _end_session(self, session: Session) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        session.connection.sessions.pop(session.id, None)
        camera = session.camera
        camera.playing.discard(session)
        session.state = "closed"
        camera.closed_counters.add(session.counters)
        camera.history.append(session.as_dict())

    def _session_header(self, session: Session) -> tuple[str, str]:
        return "Session", f"{session.id};timeout={round(self.options.session_timeout)}"

    # --- auth ------------------------------------------------------------------------------

    def _challenge(self, stale: bool = False) -> str:
        if self.options.auth == "basic":
            return basic_challenge()
        nonce = secrets.token_hex(16)
        self._nonces[nonce] = self.loop_time()
        while len(self._nonces) > MAX_NONCES:
            self._nonces.popitem(last=False)
        return digest_challenge(nonce, self.options.digest_qop, stale)

    def _authorized(self, request: Request) -> bool | None:
        """True: authorized; False: refused; None: right answer to an expired nonce (stale)."""
        options = self.options
        if options.username is None or options.password is None:
            return True
        header = request.header("authorization")
        if header is None:
            return False
        if options.auth == "basic":
            ok = check_basic(header, options.username, options.password)
        else:
            lifetime, now = options.nonce_lifetime, self.loop_time()
            live = {n for n, t in self._nonces.items() if lifetime is None or now - t < lifetime}
            ok = check_digest(header, request.method, options.username, options.password, live)
            if not ok and check_digest(
                header, request.method, options.username, options.password, self._nonces
            ):
                self.stale_nonces += 1
                return None
        if not ok:
            self._auth_failures += 1
        return ok

    # --- description -----------------------------------------------------------------------

    def camera_url(self, camera: Camera | int) -> str:
        """``rtsp://host:port/camK`` (no trailing slash, no credentials)."""
        name = camera.name if isinstance(camera, Camera) else f"cam{camera}"
        return f"rtsp://{self.options.host}:{self.port}/{name}"

    def urls(self) -> list[str]:
        return [self.camera_url(c) for c in self.cameras]

    def sdp(self, camera: Camera) -> str:
        clip = self.clip
        sprop = ",".join(base64.b64encode(ps).decode() for ps in (clip.sps, clip.pps))
        fmtp = f"packetization-mode=1;profile-level-id={clip.profile_level_id};sprop-parameter-sets={sprop}"
        pt = self.options.payload_type
        control = {
            "relative": TRACK_CONTROL,
            "absolute": f"{self.camera_url(camera)}/{TRACK_CONTROL}",
            "star": "*",
        }[self.options.control]
        lines = [
            "v=0",
            f"o=- {self._sdp_session_id} 1 IN IP4 {self.options.host}",
            f"s=csud-sim {camera.name}",
            f"c=IN IP4 {self.options.host}",
            "t=0 0",
            "a=tool:csud-sim",
            "a=range:npt=0-",
            "a=control:*",
            f"m=video 0 RTP/AVP {pt}",
            f"a=rtpmap:{pt} H264/{RTP_CLOCK_RATE}",
            f"a=fmtp:{pt} {fmtp}",
            f"a=framerate:{self.fps}",
            f"a=control:{control}",
        ]
        return "\r\n".join(lines) + "\r\n"

    # --- stats -----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters as documented in the module docstring; a fresh JSON-serialisable dict."""
        cameras: dict[str, Any] = {}
        totals = SessionCounters()
        sessions_active = sessions_total = 0
        for camera in self.cameras:
            counters = SessionCounters()
            counters.add(camera.closed_counters)
            active = [s for s in self._sessions.values() if s.camera is camera]
            for session in active:
                counters.add(session.counters)
            totals.add(counters)
            sessions_active += len(active)
            sessions_total += camera.sessions_total
            cameras[camera.name] = {
                "sessions_active": len(active),
                "sessions_total": camera.sessions_total,
                **counters.as_dict(),
                "sessions": [*camera.history, *(s.as_dict() for s in active)],
            }
        return {
            "port": self.port,
            "fps": self.fps,
            "clip_frames": len(self.frames),
            "gop_frames": self.clip.params.gop_frames,
            "uptime_seconds": round(self.loop_time() - self._started, 3),
            "connections_active": len(self._connections),
            "connections_total": self._connections_total,
            "malformed_connections": self._malformed_connections,
            "auth_failures": self._auth_failures,
            "sessions_timed_out": self._sessions_timed_out,
            "teardowns": self._teardowns,
            "stale_nonces": self.stale_nonces,
            "server_requests_sent": self.server_requests_sent,
            "client_responses": self.client_responses,
            "udp_rtcp_received": self.udp_rtcp_received,
            "ticks": self._ticks,
            "clock_resets": self._clock_resets,
            "totals": {
                "sessions_active": sessions_active,
                "sessions_total": sessions_total,
                **totals.as_dict(),
            },
            "cameras": cameras,
        }

    async def _stats_writer(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.options.stats_interval)
            self._write_stats_file()

    def _write_stats_file(self) -> None:
        path = self.options.stats_file
        if path is None:
            return
        try:
            _write_json_atomic(Path(path), self.stats())
        except OSError as exc:
            log.warning("sim.stats_write_failed", path=str(path), error=str(exc))


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def serve(options: SimOptions) -> SimServer:
    """Encode (or load from cache) the clip, packetize it, listen, and start the clock."""
    params = options.clip_params()
    clip = await asyncio.to_thread(
        load_clip,
        params,
        inband_parameter_sets=options.inband_parameter_sets,
        cache_dir=options.clip_cache_dir,
        use_cache=options.use_clip_cache,
    )
    frames = packetize_clip(clip, options.mtu_payload, options.payload_type)
    if options.faults is not None:
        await options.faults.prepare(options)
    server = SimServer(options, clip, frames)
    try:
        await server._start()
    except BaseException:
        await server.close()
        raise
    return server


# --- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csud simulate",
        description="Serve simulated RTSP/H.264 cameras rtsp://127.0.0.1:PORT/cam1..camN.",
    )
    parser.add_argument("--cameras", type=int, default=1, help="number of cameras (default 1)")
    parser.add_argument("--port", type=int, default=8554, help="TCP port on 127.0.0.1 (default 8554; 0: any)")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--bitrate", type=int, default=4_000_000, help="bit/s (default 4000000)")
    parser.add_argument("--gop-seconds", type=float, default=1.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--username")
    parser.add_argument(
        "--password", help="prefer --password-file or $CSUD_SIM_PASSWORD: argv is visible to every user"
    )
    parser.add_argument("--password-file", type=Path)
    parser.add_argument("--auth", choices=("digest", "basic"), default="digest")
    parser.add_argument("--no-inband-parameter-sets", action="store_true", help="SPS/PPS only in the SDP")
    parser.add_argument("--session-timeout", type=float, default=60.0)
    parser.add_argument("--stats-file", type=Path)
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="[CAMERAS=]KIND[:ARG][@START[+DURATION]]",
        help="inject a fault (repeatable), e.g. cam2=loss:5, 3=stall:20@10, reboot@12; see csud.sim.faults",
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the faults' randomness")
    return parser


def options_from_args(args: argparse.Namespace) -> SimOptions:
    password = args.password or os.environ.get("CSUD_SIM_PASSWORD")
    if args.password_file is not None:
        password = args.password_file.read_text().rstrip("\r\n")
    return SimOptions(
        cameras=args.cameras,
        port=args.port,
        fps=args.fps,
        bitrate=args.bitrate,
        gop_seconds=args.gop_seconds,
        width=args.width,
        height=args.height,
        username=args.username,
        password=password,
        auth=args.auth,
        inband_parameter_sets=not args.no_inband_parameter_sets,
        session_timeout=args.session_timeout,
        stats_file=args.stats_file,
        faults=FaultInjector.from_text(args.fault, args.fault_seed) if args.fault else None,
    )


async def _run(options: SimOptions, duration: float | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await serve(options)
    try:
        for url in server.urls():
            print(url, flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        await server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``csud simulate ...``: exit 0 on SIGTERM/SIGINT or after ``--duration``, 2 on bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
        options.clip_params()  # validates sizes and rates
        if options.cameras < 1 or not 0 <= options.port <= 65535:
            raise ValueError("--cameras must be >= 1 and --port within 0..65535")
        if (options.username is None) != (options.password is None):
            raise ValueError("--username and a password go together")
    except (ValueError, OSError) as exc:
        print(f"csud simulate: {exc}", file=sys.stderr)
        return 2
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_run(options, args.duration))
