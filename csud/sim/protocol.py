"""The simulator's RTSP side: one :class:`RtspConnection` per client, answering its requests.

OPTIONS, DESCRIBE, SETUP (``RTP/AVP/TCP``; the client's interleaved channels, or the first
free pair; or UDP with ``client_port``), PLAY (``RTP-Info`` gives the first packet's seq and
rtptime), GET_PARAMETER (keep-alive) and TEARDOWN (200, then the connection closes once it
holds no session). 404 for a path other than ``/camK[/trackID=0]``, 454 for an unknown
session, 455 for a method in the wrong state, 461 for a transport it cannot serve, 501 for
other methods; bytes that are not RTSP get 400 and that connection is closed. Any request
refreshes the sessions of its connection. With credentials configured, every method but
OPTIONS needs them (the server checks them). The fault hooks of :class:`SimOptions`
(``request_hook``, ``response_hook``) are called here.

What a connection needs of the server is the :class:`Server` protocol, so that this module
does not import :mod:`csud.sim.server` (which imports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Callable
from typing import Protocol, cast
from urllib.parse import urlsplit

import structlog

from csud.sim.options import Reply, SimOptions
from csud.sim.rtsp import (
    InterleavedFrame,
    MalformedRequest,
    Request,
    RequestReader,
    format_response,
    parse_transport,
)
from csud.sim.session import Camera, Session

log = structlog.get_logger("csud.sim")

PUBLIC_METHODS = "OPTIONS, DESCRIBE, SETUP, PLAY, GET_PARAMETER, TEARDOWN"
TRACK_CONTROL = "trackID=0"
_CAMERA_PATH = re.compile(r"^/cam([1-9][0-9]{0,5})(?:/(.*))?$")


class Server(Protocol):
    """What a connection needs of the server (:class:`csud.sim.server.SimServer`)."""

    options: SimOptions
    cameras: list[Camera]
    udp_ports: tuple[int, int]
    malformed_connections: int
    client_responses: int
    teardowns: int

    def loop_time(self) -> float: ...

    def connection_opened(self, connection: RtspConnection) -> None: ...

    def connection_closed(self, connection: RtspConnection) -> None: ...

    def authorized(self, request: Request) -> bool | None: ...

    def challenge(self, stale: bool = False) -> str: ...

    def find_session(self, session_id: str) -> Session | None: ...

    def new_session(
        self, camera: Camera, connection: RtspConnection, channels: tuple[int, int]
    ) -> Session: ...

    def end_session(self, session: Session) -> None: ...

    def session_header(self, session: Session) -> tuple[str, str]: ...

    def camera_url(self, camera: Camera | int) -> str: ...

    def sdp(self, camera: Camera) -> str: ...


class RtspConnection(asyncio.Protocol):
    """One client connection: parses requests, answers them, owns the sessions it set up."""

    def __init__(self, server: Server) -> None:
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
        self.server.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        for session in list(self.sessions.values()):
            self.server.end_session(session)
        self.sessions.clear()
        self.server.connection_closed(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            items = self.reader.feed(data)
        except MalformedRequest as exc:
            self.server.malformed_connections += 1
            log.info("sim.malformed_request", reason=str(exc))
            self.write(format_response(400, None))
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
            self.write(response)
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
            authorized = server.authorized(request)
            if not authorized:
                return 401, [("WWW-Authenticate", server.challenge(stale=authorized is None))], b""
        session: Session | None = None
        session_header = request.header("session")
        if session_header is not None:
            session_id = session_header.split(";", 1)[0].strip()
            session = server.find_session(session_id)
            if session is None:
                return 454, [], b""
            session.last_activity = now
        return _HANDLERS[method](self, request, session)

    def camera_for(self, request: Request) -> tuple[Camera | None, str]:
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
        camera, _ = self.camera_for(request)
        if camera is None:
            return 404, [], b""
        body = self.server.sdp(camera).encode()
        headers = [("Content-Type", "application/sdp")]
        if self.server.options.content_base:
            headers.insert(0, ("Content-Base", self.server.camera_url(camera) + "/"))
        return 200, headers, body

    def _setup(self, request: Request, session: Session | None) -> Reply:
        camera, rest = self.camera_for(request)
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
            session = self.server.new_session(camera, self, channels)
        transport = (
            f"RTP/AVP/TCP;unicast;interleaved={channels[0]}-{channels[1]};ssrc={session.ssrc:08X};mode=play"
        )
        return 200, [("Transport", transport), self.server.session_header(session)], b""

    def _setup_udp(self, camera: Camera, session: Session | None, client_port: tuple[int, int]) -> Reply:
        if session is not None:
            return 459, [], b""  # one track per session: a second SETUP is not supported over UDP
        if self.transport is None:
            return 500, [], b""
        peer = self.transport.get_extra_info("peername")[0]
        session = self.server.new_session(camera, self, (0, 1))
        session.udp_rtp_dest = (peer, client_port[0])
        session.udp_rtcp_dest = (peer, client_port[1])
        rtp_port, rtcp_port = self.server.udp_ports
        transport = (
            f"RTP/AVP;unicast;client_port={client_port[0]}-{client_port[1]};"
            f"server_port={rtp_port}-{rtcp_port};ssrc={session.ssrc:08X};mode=play"
        )
        return 200, [("Transport", transport), self.server.session_header(session)], b""

    def _free_channels(self) -> tuple[int, int]:
        used = {s.rtp_channel for s in self.sessions.values()}
        channel = 0
        while channel in used:
            channel += 2
        return channel, channel + 1

    def _play(self, request: Request, session: Session | None) -> Reply:
        camera, _ = self.camera_for(request)
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
            [("Range", "npt=0.000-"), ("RTP-Info", rtp_info), self.server.session_header(session)],
            b"",
        )

    def _get_parameter(self, request: Request, session: Session | None) -> Reply:
        headers = [self.server.session_header(session)] if session is not None else []
        return 200, headers, b""

    def _teardown(self, request: Request, session: Session | None) -> Reply:
        if session is None:
            return 455, [], b""
        if session.connection is not self:
            return 454, [], b""
        self.server.teardowns += 1
        self.server.end_session(session)
        return 200, [], b""

    # --- output ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self, abort: bool = False) -> None:
        self.closing = True
        for session in list(self.sessions.values()):
            self.server.end_session(session)
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


Handler = Callable[[RtspConnection, Request, "Session | None"], Reply]
_HANDLERS: dict[str, Handler] = {
    "OPTIONS": RtspConnection._options,
    "DESCRIBE": RtspConnection._describe,
    "SETUP": RtspConnection._setup,
    "PLAY": RtspConnection._play,
    "GET_PARAMETER": RtspConnection._get_parameter,
    "TEARDOWN": RtspConnection._teardown,
}
