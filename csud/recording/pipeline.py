"""One camera's recording, as a sans-IO state machine: bytes and time in, commands out.

In the manner of aioquic's ``QuicConnection``: the pipeline never reads a clock, opens a socket
or awaits anything. Its shell (:mod:`csud.recording.recorder`) moves bytes in and carries the
commands out; it asks :meth:`RecordingPipeline.next_deadline` when to call
:meth:`RecordingPipeline.on_timer` next.

Inputs, with ``now`` always passed in (``now_ns``: the server's wall clock, UTC ns, the time
frames are stamped with; ``now``: monotonic seconds, for timers):

- :meth:`~RecordingPipeline.describe` (the session's SDP), :meth:`~RecordingPipeline.session_started`
  (PLAY answered) and :meth:`~RecordingPipeline.session_ended` (whatever ended it);
- :meth:`~RecordingPipeline.on_packet` (one interleaved frame or UDP datagram, by offsets: the
  hot path) and :meth:`~RecordingPipeline.feed` (raw TCP bytes, interleaved framing included);
- :meth:`~RecordingPipeline.on_timer`;
- from the writer: :meth:`~RecordingPipeline.writer_took` and
  :meth:`~RecordingPipeline.storage_failed`.

Outputs: typed commands. To the writer, in order: :class:`Open`, :class:`Mux`, :class:`Close`
(from the segmenter; the shell adds :class:`Stop` at the very end). To the session:
:class:`Connect`, :class:`KeepAlive`, :class:`SendRtcp`, :class:`Fail`. To the log: :class:`Log`.

The data flow inside (docs/architecture.md): RTP -> depacketizer (codec from :mod:`csud.media.codec`)
-> access units -> timeline (pts on the server clock) -> [tap] -> segmenter -> writer commands.

Invariants:

- The per-packet path makes no object beyond the depacketizer's; a packet that completes no
  access unit returns a shared empty tuple.
- Writer memory is bounded by one :class:`~csud.recording.budget.MemoryBudget`, shared by the
  daemon's cameras: at each keyframe the GOP starting there is admitted or not (the budget's
  fair-share rule); a refused GOP is dropped whole (``overload``, counted in
  ``stats.gops_dropped``), the segment is cut before it.
- Every access unit received is either handed to the segmenter or counted as dropped.
- Timers: a keep-alive every half session timeout (at least 1 s), an RTCP receiver report every
  5 s, and a stall (no RTP packet for ``stall_seconds``) fails the session. After a session ends,
  the next :class:`Connect` comes after an exponential backoff with jitter (1 s to 60 s), reset
  by a session that recorded frames for 30 s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from csud.errors import StreamError
from csud.media.codec import H264, Codec, codec_for_encoding
from csud.media.depacketizer import RtpDepacketizer
from csud.media.rtcp import RtcpReceiver, clock_offset_ns
from csud.media.units import AccessUnit, Gap, MediaEvent, StreamReset
from csud.recording.budget import MemoryBudget
from csud.recording.segmenter import Action, Close, Drop, Mux, Open, Segmenter
from csud.recording.stats import CameraStats
from csud.recording.timeline import Timeline
from csud.rtsp.interleave import InterleavedDemux

__all__ = [
    "Backoff",
    "Close",
    "Command",
    "Connect",
    "Fail",
    "KeepAlive",
    "Log",
    "Mux",
    "Open",
    "RecordingPipeline",
    "SendRtcp",
    "Stop",
    "WriterCommand",
]

NS_PER_SECOND = 1_000_000_000
# The channels csud asks for in SETUP (interleaved=0-1); UDP datagrams are given the same numbers.
RTP_CHANNEL = 0
RTCP_CHANNEL = 1
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
HEALTHY_SESSION_SECONDS = 30.0  # a session that recorded this long resets the backoff
WRITER_QUEUE_MAX_BYTES = 64 * 1024 * 1024
KEEPALIVE_MIN_SECONDS = 1.0
RTCP_REPORT_SECONDS = 5.0
STALL_CHECK_MAX_SECONDS = 1.0  # progress is sampled at least this often (half the stall, if less)


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stop:
    """The writer's last command: abort whatever is still open and end."""


@dataclass(frozen=True, slots=True)
class Connect:
    """Start a session now (the backoff, if any, has elapsed)."""


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """Send an RTSP keep-alive (the session timeout is half gone)."""


@dataclass(frozen=True, slots=True)
class SendRtcp:
    """Send this RTCP compound packet (a receiver report) to the camera."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Fail:
    """End the session with this reason (a stall, or a stream csud cannot record)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    """Log ``event`` at ``level`` ("info", "warning", "error") with ``fields``."""

    level: str
    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


WriterCommand = Open | Mux | Close | Stop
Command = Open | Mux | Close | Connect | KeepAlive | SendRtcp | Fail | Log
NO_COMMANDS: tuple[Command, ...] = ()

# A callback receiving each complete access unit, in decode order, right after the segmenter has
# taken it: live viewing attaches here (RecordingPipeline.tap). Arguments: the access unit, the
# codec key ("h264" or "h265"), the parameter sets in force (in the codec's order, in-band changes
# of this very unit included), the time its last packet was received (server clock, ns) and the
# decode delay the segmenter has learned (Segmenter.reorder_ns: > 0 once B-frames were seen).
# A tap that raises is detached (logged as frame_tap_failed): recording goes on.
FrameTap = Callable[[AccessUnit, str, tuple[bytes, ...], int, int], None]


class RandomSource(Protocol):
    """The two calls of :class:`random.Random` the pipeline makes (injected: tests seed it)."""

    def uniform(self, a: float, b: float) -> float: ...

    def getrandbits(self, k: int, /) -> int: ...


class Backoff:
    """Exponential backoff with full jitter: uniform in [base/2, base], base doubling to the cap."""

    def __init__(
        self,
        rng: RandomSource,
        initial: float = BACKOFF_INITIAL_SECONDS,
        maximum: float = BACKOFF_MAX_SECONDS,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self._base = initial
        self._rng = rng

    def reset(self) -> None:
        self._base = self.initial

    def next_delay(self) -> float:
        delay = self._rng.uniform(self._base / 2, self._base)
        self._base = min(self._base * 2, self.maximum)
        return delay


# -- the machine ---------------------------------------------------------------------------

_WAITING = "waiting"  # for the backoff to elapse (or, at first, for the first timer)
_CONNECTING = "connecting"  # Connect emitted; the shell is setting the session up
_PLAYING = "playing"


class RecordingPipeline:
    """One camera's recording state: see the module docstring."""

    def __init__(
        self,
        segment_ns: int,
        phase_ns: int,
        stall_seconds: float,
        rng: RandomSource,
        stats: CameraStats | None = None,
        max_queued_bytes: int | None = None,
        budget: MemoryBudget | None = None,
        budget_key: str = "camera",
    ) -> None:
        self.segment_ns = segment_ns
        self.phase_ns = phase_ns
        self.stall_seconds = stall_seconds
        self.stats = stats if stats is not None else CameraStats()
        self.max_queued_bytes = WRITER_QUEUE_MAX_BYTES if max_queued_bytes is None else max_queued_bytes
        self.queued_bytes = 0  # muxed frame bytes handed to the writer and not yet taken
        # Shared by the daemon's cameras; a pipeline built alone gets its own.
        self.budget = budget if budget is not None else MemoryBudget(self.max_queued_bytes)
        self.budget_key = budget_key
        self._gop_bytes = 0  # bytes of the GOP in progress
        self._last_gop_bytes = 0  # the last complete GOP's: the estimate admitted at a keyframe
        self._shedding = False  # the GOP in progress was refused by the budget
        self.tap: FrameTap | None = None
        self._rng = rng
        self._backoff = Backoff(rng)
        self._commands: list[Command] = []
        self._writer_failed = False
        self._state = _WAITING
        self._connect_at = float("-inf")
        self._attempt_at = 0.0
        self._frames_at_attempt = 0
        self._demux = InterleavedDemux(self._on_binary, self._on_message)
        self._feed_now_ns = 0
        self._new_session(H264, (), {}, -1)

    # -- session lifecycle ---------------------------------------------------------------------

    def describe(
        self,
        encoding: str,
        payload_type: int,
        parameter_sets: Sequence[bytes] = (),
        fmtp: Mapping[str, str] | None = None,
    ) -> None:
        """The session's SDP: fresh depacketizer, timeline and segmenter for its codec.

        Raises :class:`StreamError` for a stream csud does not record."""
        try:
            codec = codec_for_encoding(encoding)
        except ValueError as exc:
            raise StreamError(str(exc)) from None
        try:
            self._new_session(codec, parameter_sets, fmtp or {}, payload_type)
        except ValueError as exc:
            raise StreamError(f"unsupported {codec.name} stream: {exc}") from None

    def session_started(self, now: float, session_timeout_seconds: float) -> None:
        """PLAY was answered: media flows; the session's timers start."""
        self._state = _PLAYING
        self.stats.up = True
        self._keepalive_every = max(KEEPALIVE_MIN_SECONDS, session_timeout_seconds / 2)
        self._keepalive_at = self._report_at = now
        self._check_every = min(STALL_CHECK_MAX_SECONDS, self.stall_seconds / 2)
        self._check_at = now
        self._packets_seen, self._progress_at = self._depack.packets, now

    def session_ended(self, now: float, stopping: bool = False) -> list[Command]:
        """The session is over (failed, closed or stopped): close the segment in flight and,
        unless ``stopping``, schedule the next :class:`Connect` after a backoff."""
        self.stats.up = False
        self._apply(self._segmenter.stop())
        if not stopping:
            healthy = now - self._attempt_at > HEALTHY_SESSION_SECONDS
            if healthy and self.stats.frames_received > self._frames_at_attempt:
                self._backoff.reset()
            delay = self._backoff.next_delay()
            self.stats.reconnects += 1
            self._connect_at = now + delay
            self._log("info", "reconnect_scheduled", delay_seconds=round(delay, 2))
        self._state = _WAITING
        return self._take()

    # -- timers --------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must next be called (monotonic seconds); None: not before an input."""
        if self._state == _WAITING:
            return self._connect_at
        if self._state == _PLAYING:
            return min(
                self._check_at + self._check_every,
                self._report_at + RTCP_REPORT_SECONDS,
                self._keepalive_at + self._keepalive_every,
            )
        return None

    def on_timer(self, now: float, now_ns: int) -> list[Command]:
        """Whatever is due at ``now``: a connection, a stall verdict, a report, a keep-alive."""
        if self._state == _WAITING:
            if now >= self._connect_at:
                self._state = _CONNECTING
                self._attempt_at = now
                self._frames_at_attempt = self.stats.frames_received
                self._commands.append(Connect())
            return self._take()
        if self._state != _PLAYING:
            return self._take()
        if now >= self._check_at + self._check_every:
            self._check_at = now
            if self._fatal is not None:
                self._commands.append(Fail(self._fatal))
                return self._take()
            depack = self._depack
            if depack.packets != self._packets_seen:
                self._packets_seen, self._progress_at = depack.packets, now
            elif now - self._progress_at > self.stall_seconds:
                # Judged on RTP packets, not bytes: a camera whose encoder died may still send
                # RTCP reports and answer keep-alives.
                self._commands.append(Fail(f"no RTP packet for {self.stall_seconds:g} s (stall)"))
                return self._take()
        if now - self._report_at >= RTCP_REPORT_SECONDS:
            # Some cameras end a session that sends no receiver reports.
            self._report_at = now
            report = self._receiver_report(now_ns)
            if report is not None:
                self._commands.append(SendRtcp(report))
        if now - self._keepalive_at >= self._keepalive_every:
            self._keepalive_at = now
            self._commands.append(KeepAlive())
        return self._take()

    # -- media in --------------------------------------------------------------------------------

    def feed(self, data: bytes | memoryview, now_ns: int) -> list[Command]:
        """TCP bytes as they came off the socket: interleaved ``$`` frames (RTSP messages among
        them are skipped: the RTSP client answers those)."""
        self._feed_now_ns = now_ns
        self._demux.feed(bytes(data))
        return self._take()

    def on_packet(self, channel: int, buf: bytes, start: int, end: int, now_ns: int) -> Sequence[Command]:
        """One interleaved frame (or UDP datagram) in ``buf[start:end]``; ``buf`` is not kept."""
        if channel != RTP_CHANNEL:
            if channel == RTCP_CHANNEL:
                self._on_rtcp(buf, start, end, now_ns)
                return self._take()
            return NO_COMMANDS
        stats = self.stats
        if end - start > 1 and (buf[start + 1] & 0x7F) != self._payload_type:
            stats.foreign_packets += 1
            return NO_COMMANDS
        depack = self._depack
        try:
            depack.feed(buf, start, end)
        except ValueError as exc:
            stats.malformed_packets += 1
            if stats.malformed_packets & (stats.malformed_packets - 1) == 0:  # 1, 2, 4, 8... logged
                self._log("warning", "rtp_malformed", error=str(exc), count=stats.malformed_packets)
        if depack.events:
            self._on_events(depack.take_events(), now_ns)
        if self._commands:
            return self._take()
        return NO_COMMANDS

    # -- from the writer -------------------------------------------------------------------------

    def writer_took(self, nbytes: int) -> None:
        """The writer dequeued a :class:`Mux` of ``nbytes`` frame bytes."""
        self.queued_bytes -= nbytes
        self.budget.release(self.budget_key, nbytes)

    def storage_failed(self) -> None:
        """The writer lost the open segment: the next access unit starts over at a keyframe."""
        self._writer_failed = True

    # -- inspection --------------------------------------------------------------------------------

    @property
    def codec(self) -> Codec:
        return self._codec

    @property
    def depacketizer(self) -> RtpDepacketizer:
        return self._depack

    @property
    def segmenter(self) -> Segmenter:
        return self._segmenter

    # -- internals ---------------------------------------------------------------------------------

    def _new_session(
        self, codec: Codec, parameter_sets: Iterable[bytes], fmtp: Mapping[str, str], payload_type: int
    ) -> None:
        self._depack = codec.depacketizer(fmtp=fmtp)
        self._codec = codec
        self._timeline = Timeline()
        self._segmenter = Segmenter(self.segment_ns, self.phase_ns, codec=codec)
        self._segmenter.parameter_sets(list(parameter_sets))
        self._payload_type = payload_type
        self._rtcp = RtcpReceiver(self._rng.getrandbits(32))
        self._fatal: str | None = None  # set by the packet path, reported by the next timer

    def _take(self) -> list[Command]:
        commands = self._commands
        self._commands = []
        return commands

    def _log(self, level: str, event: str, **fields: Any) -> None:
        self._commands.append(Log(level, event, fields))

    def _on_binary(self, channel: int, buf: bytes, start: int, end: int) -> None:
        commands = self.on_packet(channel, buf, start, end, self._feed_now_ns)  # may swap the list
        self._commands.extend(commands)

    def _on_message(self, message: bytes) -> None:
        """An RTSP message amid the media (a keep-alive answer): the RTSP client's business."""

    def _on_rtcp(self, buf: bytes, start: int, end: int, now_ns: int) -> None:
        """A sender report: export the camera clock's offset from ours (never used for time)."""
        stats = self.stats
        try:
            report = self._rtcp.on_rtcp(bytes(buf[start:end]), now_ns)
        except ValueError as exc:
            stats.malformed_rtcp += 1
            if stats.malformed_rtcp & (stats.malformed_rtcp - 1) == 0:
                self._log("warning", "rtcp_malformed", error=str(exc), count=stats.malformed_rtcp)
            return
        if report is None or report.ssrc != self._depack.ssrc:
            return
        server_ns = self._timeline.project(report.rtp_timestamp)
        if server_ns is not None:
            stats.clock_offset_seconds = clock_offset_ns(report, server_ns) / NS_PER_SECOND

    def _receiver_report(self, now_ns: int) -> bytes | None:
        depack = self._depack
        ssrc, highest = depack.ssrc, depack.highest_seq
        if ssrc is None or highest is None:
            return None
        return self._rtcp.receiver_report(ssrc, highest, depack.packets, depack.lost_packets, now_ns)

    def _on_events(self, events: list[MediaEvent], now_ns: int) -> None:
        for event in events:
            if isinstance(event, AccessUnit):
                self._on_access_unit(event, now_ns)
            elif isinstance(event, Gap):
                self.stats.lost_packets += event.lost_packets
                self._apply(self._segmenter.gap(event.reason))
            elif isinstance(event, StreamReset):
                self._log("warning", "stream_reset", reason=event.reason)
                self._timeline.reset()

    def _on_access_unit(self, au: AccessUnit, now_ns: int) -> None:
        stats = self.stats
        stats.frames_received += 1
        stats.last_frame_ns = now_ns
        if self._writer_failed:
            self._writer_failed = False
            self._apply(self._segmenter.gap("storage_error"))
        timeline = self._timeline
        pts_ns, discontinuity = timeline.map(au.rtp_timestamp, now_ns, au.keyframe)
        if au.keyframe:
            stats.clock_drift_ppm = timeline.drift_ppm
            stats.arrival_jitter_seconds = timeline.jitter_ns / NS_PER_SECOND
            if discontinuity:
                stats.time_discontinuities += 1
                self._log("info", "time_discontinuity", reason=timeline.last_reason)
            if not self._admit_gop():
                return
        elif self._shedding:
            stats.count_drop("overload", 1)
            return
        self._gop_bytes += au.size
        actions = self._segmenter.push(au, pts_ns, discontinuity)  # learns in-band parameter sets
        if self.tap is not None:
            segmenter = self._segmenter
            codec = segmenter.codec.encoding.lower()
            try:
                self.tap(au, codec, segmenter.current_parameter_sets, now_ns, segmenter.reorder_ns)
            except Exception as exc:  # a live viewing bug must not stop the recording: detach it
                self.tap = None
                self._log("error", "frame_tap_failed", error=f"{type(exc).__name__}: {exc}")
        self._apply(actions)

    def _admit_gop(self) -> bool:
        """At a keyframe: may the GOP starting here be queued? (The one memory budget's rule:
        refused only when this camera is over its fair share and the shared pool is full.)"""
        self._last_gop_bytes, self._gop_bytes = self._gop_bytes or self._last_gop_bytes, 0
        budget = self.budget
        if budget.admit(self.budget_key, self._last_gop_bytes):
            if self._shedding:
                self._shedding = False
                self._log("warning", "memory_budget_recovered", gops_dropped=self.stats.gops_dropped)
            return True
        if not self._shedding:
            self._shedding = True
            self._log(
                "warning",
                "memory_budget_exceeded",
                queued_bytes=budget.used(self.budget_key),
                fair_share_bytes=budget.fair_share_bytes,
            )
            self._apply(self._segmenter.gap("overload"))
        self.stats.gops_dropped += 1
        self.stats.count_drop("overload", 1)
        return False

    def _apply(self, actions: list[Action]) -> None:
        commands = self._commands
        for action in actions:
            if isinstance(action, Drop):
                self.stats.count_drop(action.reason, action.frames)
                continue
            if isinstance(action, Mux):
                nbytes = sum(len(f.data) for f in action.frames)
                self.queued_bytes += nbytes
                self.budget.charge(self.budget_key, nbytes)
            commands.append(action)
