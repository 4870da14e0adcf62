"""Camera faults for the simulator: what hostile or broken cameras do, on demand.

``csud simulate --fault SPEC`` (repeatable), tests and ``scripts/soak.py`` use the same
:class:`FaultInjector`. A spec is::

    [CAMERAS=]KIND[:ARG][@START[+DURATION]]

- ``CAMERAS``: ``cam2``, ``2``, ``2,5``, ``2-4`` or ``cam2,cam7`` (default: every camera);
- ``START``: seconds after the simulator started (default 0); ``DURATION``: seconds the fault
  lasts (default: until the simulator stops). Examples: ``--fault cam2=loss:5``,
  ``--fault 3-4=stall:20@10``, ``--fault cam1=401-loop@5+30``, ``--fault reboot@12``.

Kinds (ARG default in brackets). *Events* happen once per targeted camera, on its first frame
at or after START; *conditions* hold from START for DURATION:

=============  =========  ===================================================================
kind           type       what the camera does
=============  =========  ===================================================================
loss[:P]       condition  drops P % [5] of its RTP packets, chosen at random, inside frames
stall[:N]      condition  sends no RTP for N s [15] (the connection stays open and answers
                          requests; sender reports go on), then carries on
fu-close       event      sends half of a frame cut in the middle of an FU-A packet, then
                          closes the connection
reboot         event      new SSRC, RTP timestamp and sequence number jumps (encoder restart)
garbage[:N]    event      N random bytes [2048] on the interleaved connection between frames
len65535[:M]   event      an interleaved header announcing 65535 bytes followed by fewer, then
                          M = ``stall`` [default: nothing more on that session] or ``close``
slow-rtsp[:MS] condition  RTSP responses trickle out one byte every MS ms [100]
401-loop       condition  every request but OPTIONS gets 401 and a fresh challenge, whatever
                          the credentials
sps-change     condition  switches, at a keyframe, to a clip of another resolution (new SPS and
                          PPS in-band), and back at a keyframe when the fault ends
=============  =========  ===================================================================

``slow-rtsp`` and ``401-loop`` close the camera's open connections when they start, so the
client has to come back through them (a real camera shows them after a reboot). ``stall`` is a
condition whose DURATION defaults to ARG.

Plumbing: :meth:`FaultInjector.prepare` (awaited by :func:`csud.sim.server.serve` when
``SimOptions.faults`` is set) encodes the second clip if needed and installs three hooks:
``frame_hook`` (per frame and session: drop, rewrite or cut it), ``request_hook`` (answer a
request instead of the server) and ``response_hook`` (send a response some other way). The
simulator's counters stay truthful: a frame the hook drops is ``frames_dropped``, a frame it
cuts or thins is still ``frames_sent`` (the client may have received part of it).
Randomness comes from one ``random.Random(seed)``: a run is reproducible.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from csud.sim.clip import load_clip
from csud.sim.options import SimOptions
from csud.sim.packets import (
    INTERLEAVED_HEADER_SIZE,
    PacketizedFrame,
    packetize_clip,
    patch_frame,
)
from csud.sim.protocol import RtspConnection
from csud.sim.rtsp import Request
from csud.sim.session import Host, Link, Session

EVENTS = ("fu-close", "reboot", "garbage", "len65535")
CONDITIONS = ("loss", "stall", "slow-rtsp", "401-loop", "sps-change")
KINDS = EVENTS + CONDITIONS
DEFAULT_ARGS: dict[str, float | str | None] = {
    "loss": 5.0,
    "stall": 15.0,
    "garbage": 2048.0,
    "slow-rtsp": 100.0,
    "len65535": "stall",
}
LEN65535_SENT_BYTES = 1000  # of the 65535 announced
_SPEC = re.compile(
    r"^(?:(?P<cams>[A-Za-z0-9,\-]+)=)?(?P<kind>[a-z0-9\-]+)(?::(?P<arg>[^@]+))?"
    r"(?:@(?P<start>[0-9.]+)(?:\+(?P<duration>[0-9.]+))?)?$"
)
# RTP header fields inside an interleaved blob (after the 4-byte "$" header).
_SEQ_AT = INTERLEAVED_HEADER_SIZE + 2
_TS_AT = INTERLEAVED_HEADER_SIZE + 4


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault: ``kind`` with ``arg`` on ``cameras`` (1-based; ``None``: all), from ``start`` s
    for ``duration`` s (``None``: to the end; events ignore it)."""

    kind: str
    arg: float | str | None = None
    cameras: frozenset[int] | None = None
    start: float = 0.0
    duration: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (one of {', '.join(KINDS)})")
        if self.kind == "len65535":
            if self.arg not in ("stall", "close"):
                raise ValueError("len65535 takes 'stall' or 'close'")
        elif isinstance(self.arg, str) or (self.arg is not None and self.arg < 0):
            raise ValueError(f"bad argument {self.arg!r} for fault {self.kind}")
        if self.kind == "loss" and not 0 <= float(self.arg or 0) <= 100:
            raise ValueError("loss is a percentage, 0 to 100")
        if self.start < 0 or (self.duration is not None and self.duration < 0):
            raise ValueError("fault start and duration must be >= 0")

    @property
    def event(self) -> bool:
        return self.kind in EVENTS

    def end(self) -> float | None:
        """Seconds after the start of the simulator when a condition stops (``None``: never)."""
        if self.kind == "stall" and self.duration is None:
            return self.start + float(self.arg or 0)
        return None if self.duration is None else self.start + self.duration

    def targets(self, camera: int) -> bool:
        return self.cameras is None or camera in self.cameras


def _parse_cameras(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip().removeprefix("cam")
        lo, sep, hi = part.partition("-")
        hi = hi.removeprefix("cam")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad camera list {text!r} (e.g. cam2, 2,5 or 2-4)")
        first, last = int(lo), int(hi) if sep else int(lo)
        if first < 1 or last < first:
            raise ValueError(f"bad camera range {part!r}")
        out.update(range(first, last + 1))
    return frozenset(out)


def parse_fault(text: str) -> FaultSpec:
    """``[CAMERAS=]KIND[:ARG][@START[+DURATION]]`` (see the module doc); ``ValueError`` if bad."""
    m = _SPEC.match(text.strip())
    if m is None:
        raise ValueError(f"bad fault {text!r}: expected [CAMERAS=]KIND[:ARG][@START[+DURATION]]")
    kind = m.group("kind")
    raw = m.group("arg")
    arg: float | str | None = DEFAULT_ARGS.get(kind)
    if raw is not None:
        if kind == "len65535":
            arg = raw
        else:
            try:
                arg = float(raw)
            except ValueError:
                raise ValueError(f"bad argument {raw!r} for fault {kind}") from None
    try:
        start = float(m.group("start") or 0)
        duration = float(m.group("duration")) if m.group("duration") else None
    except ValueError:
        raise ValueError(f"bad time in fault {text!r}") from None
    cams = _parse_cameras(m.group("cams")) if m.group("cams") else None
    return FaultSpec(kind, arg, cams, start, duration)


@dataclass(eq=False)
class _Active:
    """A fault with absolute loop times and its per-camera and per-session bookkeeping."""

    spec: FaultSpec
    start: float
    end: float | None
    fired: set[int] = field(default_factory=set)  # cameras an event has happened to
    kicked: bool = False
    dead_sessions: set[str] = field(default_factory=set)  # len65535: nothing more for these

    def on(self, now: float) -> bool:
        return self.start <= now and (self.end is None or now < self.end)


@dataclass
class FaultStats:
    """Per fault kind: events fired, frames dropped, frames thinned or rewritten, connections closed."""

    fired: int = 0
    frames_dropped: int = 0
    frames_altered: int = 0
    connections_closed: int = 0
    requests_refused: int = 0
    responses_slowed: int = 0


class FaultInjector:
    """Applies :class:`FaultSpec` s to a simulator (see the module doc)."""

    def __init__(self, specs: Iterable[FaultSpec] = (), seed: int = 0) -> None:
        self._pending = list(specs)
        self._active: list[_Active] = []
        self.rng = random.Random(seed)
        self.t0: float | None = None
        self.stats: dict[str, FaultStats] = {k: FaultStats() for k in KINDS}
        self._alt: tuple[PacketizedFrame, ...] = ()
        self._alt_pos: dict[str, int] = {}  # session id -> position in the alt clip while switched
        self._trickles: dict[int, _Trickle] = {}
        self._options: SimOptions | None = None

    @classmethod
    def from_text(cls, specs: Iterable[str], seed: int = 0) -> FaultInjector:
        return cls([parse_fault(s) for s in specs], seed)

    # -- set-up ------------------------------------------------------------------------------

    async def prepare(self, options: SimOptions) -> None:
        """Encode the second clip if an ``sps-change`` may happen, and install the hooks."""
        self._options = options
        self.t0 = asyncio.get_running_loop().time()
        for spec in self._pending:
            self._activate(spec, self.t0 + spec.start)
        self._pending.clear()
        if any(a.spec.kind == "sps-change" for a in self._active):
            await self.load_alt_clip()
        previous = options.frame_hook
        if previous is not None and previous is not self._frame_hook:
            raise ValueError("SimOptions.frame_hook is taken: faults need it")
        options.frame_hook = self._frame_hook
        options.request_hook = self._request_hook
        options.response_hook = self._response_hook

    async def load_alt_clip(self) -> None:
        """The ``sps-change`` clip: same rate and GOP, three quarters of the size (even)."""
        if self._alt or self._options is None:
            return
        options = self._options
        params = options.clip_params()
        width = max(16, (params.width * 3 // 4) & ~1)
        height = max(16, (params.height * 3 // 4) & ~1)
        alt = dataclasses.replace(params, width=width, height=height)
        clip = await asyncio.to_thread(
            load_clip,
            alt,
            inband_parameter_sets=True,
            cache_dir=options.clip_cache_dir,
            use_cache=options.use_clip_cache,
        )
        payload_type = getattr(options, "payload_type", 96)
        self._alt = packetize_clip(clip, options.mtu_payload, payload_type)

    def inject(
        self,
        kind: str,
        arg: float | str | None = None,
        cameras: Iterable[int] | None = None,
        duration: float | None = None,
        delay: float = 0.0,
    ) -> FaultSpec:
        """Start a fault now (plus ``delay``) on a running simulator; returns its spec."""
        if self.t0 is None:
            raise RuntimeError("prepare() the injector (serve the simulator) first")
        if arg is None:
            arg = DEFAULT_ARGS.get(kind)
        now = asyncio.get_running_loop().time()
        spec = FaultSpec(
            kind, arg, frozenset(cameras) if cameras is not None else None, now - self.t0 + delay, duration
        )
        if kind == "sps-change" and not self._alt:
            raise RuntimeError("sps-change needs load_alt_clip() first")
        self._activate(spec, now + delay)
        return spec

    def clear(self) -> None:
        """End every fault now (conditions stop; sessions cut by len65535 stay cut)."""
        now = asyncio.get_running_loop().time()
        for active in self._active:
            if active.end is None or active.end > now:
                active.end = now

    def _activate(self, spec: FaultSpec, start: float) -> None:
        end_rel = spec.end()
        end = None if end_rel is None else start + (end_rel - spec.start)
        self._active.append(_Active(spec, start, end))

    def active_kinds(self, camera: int, now: float) -> list[str]:
        return [a.spec.kind for a in self._active if a.spec.targets(camera) and a.on(now)]

    # -- frame hook --------------------------------------------------------------------------

    def _frame_hook(
        self, session: Session, frame: PacketizedFrame, wire: bytearray
    ) -> bytes | bytearray | None:
        server = session.camera.server
        now = server.loop_time()
        camera = session.camera.index
        data: bytes | bytearray = wire
        # Ended faults are forgotten, except len65535's dead sessions.
        for active in self._active:
            spec = active.spec
            if session.id in active.dead_sessions:
                self.stats[spec.kind].frames_dropped += 1
                return None
            if not spec.targets(camera):
                continue
            if spec.event:
                if now < active.start or camera in active.fired:
                    continue
                result = self._event(active, session, frame, data)
                if result is _NOT_YET:
                    continue
                active.fired.add(camera)
                self.stats[spec.kind].fired += 1
                data = result
                continue
            if not active.on(now):
                if spec.kind == "sps-change" and session.id in self._alt_pos:
                    data = self._sps_change(session, frame, data, switched_on=False)
                continue
            kind = spec.kind
            if kind in ("slow-rtsp", "401-loop"):
                if not active.kicked:
                    active.kicked = True
                    self.stats[kind].fired += 1
                    self._kick(server, spec)
                continue
            if kind == "stall":
                self.stats[kind].frames_dropped += 1
                return None
            if kind == "loss":
                data = self._lose(data, float(spec.arg or 0))
            elif kind == "sps-change":
                data = self._sps_change(session, frame, data, switched_on=True)
        return data

    def _event(
        self, active: _Active, session: Session, frame: PacketizedFrame, data: bytes | bytearray
    ) -> Any:
        kind = active.spec.kind
        stats = self.stats[kind]
        connection = session.connection
        loop = asyncio.get_running_loop()
        if kind == "reboot":
            ssrc = self.rng.getrandbits(32)
            ts_start = session.ts_start + self.rng.randrange(1 << 24, 1 << 31)
            seq = self.rng.getrandbits(16)
            timestamp = session.restart_stream(ssrc, ts_start, seq, frame.packet_count)
            stats.frames_altered += 1
            return patch_frame(frame, seq, timestamp, ssrc, session.rtp_channel)
        if session.udp_rtp_dest is not None:
            return data  # the other events are about the TCP connection: nothing to do over UDP
        if kind == "garbage":
            stats.frames_altered += 1
            size = int(float(active.spec.arg or 0))
            return self.rng.randbytes(size) + bytes(data)
        if kind == "len65535":
            header = b"$" + bytes((session.rtp_channel,)) + b"\xff\xff"
            stats.frames_altered += 1
            if active.spec.arg == "close":
                loop.call_soon(self._close, connection, kind)
            else:
                active.dead_sessions.add(session.id)
            return header + self.rng.randbytes(LEN65535_SENT_BYTES)
        if kind == "fu-close":
            offsets = frame.packet_offsets
            if len(offsets) < 3:
                return _NOT_YET  # wait for a frame cut in at least three FU-A packets
            middle = offsets[len(offsets) // 2]
            following = offsets[len(offsets) // 2 + 1]
            cut = middle + (following - middle) // 2  # in the middle of an FU-A packet
            stats.frames_altered += 1
            loop.call_soon(self._close, connection, kind)
            return bytes(data[:cut])
        raise AssertionError(kind)

    def _lose(self, data: bytes | bytearray, percent: float) -> bytearray:
        out = bytearray()
        offset, end = 0, len(data)
        dropped = False
        while offset + INTERLEAVED_HEADER_SIZE <= end:
            length = data[offset + 2] << 8 | data[offset + 3]
            stop = offset + INTERLEAVED_HEADER_SIZE + length
            if self.rng.random() * 100 >= percent:
                out += data[offset:stop]
            else:
                dropped = True
            offset = stop
        if dropped:
            self.stats["loss"].frames_altered += 1
        return out

    def _sps_change(
        self, session: Session, frame: PacketizedFrame, data: bytes | bytearray, switched_on: bool
    ) -> bytes | bytearray:
        pos = self._alt_pos.get(session.id)
        if frame.keyframe:
            if switched_on and pos is None:
                pos = 0
                self.stats["sps-change"].fired += 1
            elif not switched_on and pos is not None:
                del self._alt_pos[session.id]
                return data
        if pos is None or not self._alt:
            return data
        alt = self._alt[pos % len(self._alt)]
        self._alt_pos[session.id] = pos + 1
        seq = data[_SEQ_AT] << 8 | data[_SEQ_AT + 1]
        timestamp = int.from_bytes(data[_TS_AT : _TS_AT + 4], "big")
        session.resequence(seq, alt.packet_count)
        self.stats["sps-change"].frames_altered += 1
        return patch_frame(alt, seq, timestamp, session.ssrc, session.rtp_channel)

    def _kick(self, server: Host, spec: FaultSpec) -> None:
        for connection in list(server.connections):
            if any(spec.targets(s.camera.index) for s in connection.sessions.values()):
                asyncio.get_running_loop().call_soon(self._close, connection, spec.kind)

    def _close(self, connection: Link, kind: str) -> None:
        if connection.transport is not None and not connection.closing:
            self.stats[kind].connections_closed += 1
            connection.close()

    # -- RTSP hooks --------------------------------------------------------------------------

    def _camera_of(self, connection: RtspConnection, request: Request) -> int | None:
        camera, _ = connection.camera_for(request)
        if camera is not None:
            return camera.index
        for session in connection.sessions.values():
            return session.camera.index
        return None

    def _request_hook(
        self, connection: RtspConnection, request: Request
    ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """401-loop: refuse every request but OPTIONS, whatever the credentials."""
        if request.method == "OPTIONS":
            return None
        camera = self._camera_of(connection, request)
        if camera is None:
            return None
        now = connection.server.loop_time()
        if "401-loop" in self.active_kinds(camera, now):
            self.stats["401-loop"].requests_refused += 1
            return 401, [("WWW-Authenticate", connection.server.challenge())], b""
        return None

    def _response_hook(self, connection: RtspConnection, request: Request, response: bytes) -> bool:
        """slow-rtsp: trickle the response; True when the hook sends it."""
        trickle = self._trickles.get(id(connection))
        if trickle is None or trickle.done:
            camera = self._camera_of(connection, request)
            now = connection.server.loop_time()
            active = next(
                (
                    a
                    for a in self._active
                    if a.spec.kind == "slow-rtsp"
                    and camera is not None
                    and a.spec.targets(camera)
                    and a.on(now)
                ),
                None,
            )
            if active is None:
                return False
            trickle = _Trickle(connection, float(active.spec.arg or 0) / 1000)
            self._trickles = {k: t for k, t in self._trickles.items() if not t.done}
            self._trickles[id(connection)] = trickle
        self.stats["slow-rtsp"].responses_slowed += 1
        trickle.add(response)
        return True

    def close(self) -> None:
        for trickle in self._trickles.values():
            trickle.cancel()
        self._trickles.clear()


_NOT_YET = object()


class _Trickle:
    """Writes queued bytes to a connection one byte every ``interval`` s, in order."""

    def __init__(self, connection: RtspConnection, interval: float) -> None:
        self.connection = connection
        self.interval = interval
        self.buffer = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.done = False

    def add(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self.buffer:
                transport = self.connection.transport
                if transport is None or transport.is_closing():
                    break
                transport.write(bytes(self.buffer[:1]))
                del self.buffer[:1]
                await asyncio.sleep(self.interval)
        finally:
            self.done = True

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
