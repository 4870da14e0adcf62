"""The camera simulator: an asyncio RTSP server serving ``/cam1`` .. ``/camN`` on 127.0.0.1.

``csud simulate`` (:mod:`csud.sim.cli`) and tests and benchmarks call :func:`serve`. Every
camera plays the same H.264 clip (:mod:`csud.sim.clip`), encoded once and packetized once
(:mod:`csud.sim.packets`), looped with continuous RTP timestamps and sequence numbers; each
camera starts at its own position in the clip, so keyframes are staggered across cameras as
they are in a real site. RTP goes over the RTSP connection (TCP interleaved) or, when the
client's SETUP asks for it, over UDP from one server socket pair (one datagram per packet).

The parts: :mod:`csud.sim.options` (what to simulate, the hook types), :mod:`csud.sim.session`
(the sender of one client session), :mod:`csud.sim.protocol` (one RTSP connection and its
requests), this module (the server: shared state, the clock, credentials, SDP, stats) and
:mod:`csud.sim.faults` (hostile cameras on demand). Imports go one way, in that order.

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

RTSP (:mod:`csud.sim.protocol` lists the methods and answers): a session without a request
for ``session_timeout`` seconds is torn down (RTCP receiver reports are counted, and do not
refresh it). With credentials configured, every method but OPTIONS needs them (Digest MD5
with or without ``qop=auth``, realm ``csud-sim``, or Basic); the password is never logged.
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

import asyncio
import base64
import collections
import contextlib
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from csud.sim.clip import Clip, load_clip
from csud.sim.options import SimOptions
from csud.sim.packets import RTP_CLOCK_RATE, PacketizedFrame, packetize_clip
from csud.sim.protocol import TRACK_CONTROL, RtspConnection
from csud.sim.rtsp import Request, basic_challenge, check_basic, check_digest, digest_challenge
from csud.sim.session import NS_PER_SECOND, Camera, Session, SessionCounters

log = structlog.get_logger("csud.sim")

MAX_CLOCK_LAG_SECONDS = 1.0  # further behind than this, the ticker re-anchors instead of bursting
MAX_NONCES = 4096

__all__ = ["SimOptions", "SimServer", "serve"]  # SimOptions: where callers have always found it


class _RtcpCounter(asyncio.DatagramProtocol):
    """Counts the receiver reports UDP clients send to the server's RTCP port."""

    def __init__(self, server: SimServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server.udp_rtcp_received += 1


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
        self.malformed_connections = 0
        self._auth_failures = 0
        self._sessions_timed_out = 0
        self.teardowns = 0  # sessions ended by the client's TEARDOWN
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

    # --- connections (called by RtspConnection) -----------------------------------------

    @property
    def connections(self) -> frozenset[RtspConnection]:
        return frozenset(self._connections)

    def connection_opened(self, connection: RtspConnection) -> None:
        self._connections.add(connection)
        self._connections_total += 1

    def connection_closed(self, connection: RtspConnection) -> None:
        self._connections.discard(connection)

    def find_session(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

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
                session.connection.write(request.encode())
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
                self.end_session(session)
                if not connection.sessions:
                    connection.close()

    # --- sessions --------------------------------------------------------------------------

    def new_session(self, camera: Camera, connection: RtspConnection, channels: tuple[int, int]) -> Session:
        session = Session(camera, connection, channels, self.loop_time())
        self._sessions[session.id] = session
        connection.sessions[session.id] = session
        camera.sessions_total += 1
        return session

    def end_session(self, session: Session) -> None:
        if self._sessions.pop(session.id, None) is None:
            return
        session.connection.sessions.pop(session.id, None)
        camera = session.camera
        camera.playing.discard(session)
        session.state = "closed"
        camera.closed_counters.add(session.counters)
        camera.history.append(session.as_dict())

    def session_header(self, session: Session) -> tuple[str, str]:
        return "Session", f"{session.id};timeout={round(self.options.session_timeout)}"

    # --- auth ------------------------------------------------------------------------------

    def challenge(self, stale: bool = False) -> str:
        if self.options.auth == "basic":
            return basic_challenge()
        nonce = secrets.token_hex(16)
        self._nonces[nonce] = self.loop_time()
        while len(self._nonces) > MAX_NONCES:
            self._nonces.popitem(last=False)
        return digest_challenge(nonce, self.options.digest_qop, stale)

    def authorized(self, request: Request) -> bool | None:
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
            "malformed_connections": self.malformed_connections,
            "auth_failures": self._auth_failures,
            "sessions_timed_out": self._sessions_timed_out,
            "teardowns": self.teardowns,
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
