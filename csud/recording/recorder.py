"""One camera's recorder: the asyncio shell around :class:`~csud.recording.pipeline.RecordingPipeline`.

It moves bytes and carries out commands, nothing else: RTP frames from the RTSP session go into
the pipeline (with the injected clock's ``now_ns``); writer commands go, in order, through an
unbounded queue (the pipeline bounds it in bytes) to the writer task
(:class:`~csud.recording.sink.SegmentSink`); session commands (connect, keep-alive, RTCP
report, fail) are carried out here; one timer is armed at the pipeline's next deadline.

The loop retries after every failure, with the pipeline's backoff, until the daemon stops it;
a failure of one camera never reaches another.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from pathlib import Path

from csud.config import CameraConfig, CommuneConfig
from csud.errors import AuthError, StreamError
from csud.log import get_logger
from csud.recording.budget import MemoryBudget
from csud.recording.clock import SYSTEM_CLOCK, Clock
from csud.recording.pipeline import (
    Command,
    Connect,
    Fail,
    FrameTap,
    KeepAlive,
    Log,
    RandomSource,
    RecordingPipeline,
    SendRtcp,
    Stop,
    WriterCommand,
)
from csud.recording.sink import IndexService, SegmentSink
from csud.recording.stats import CameraStats
from csud.rtsp.client import RtspSession, StreamDescription
from csud.store.layout import stagger_phase_ns
from csud.store.retention_plan import window_days

__all__ = ["NS_PER_SECOND", "CameraRecorder", "CameraStats", "IndexService"]

NS_PER_SECOND = 1_000_000_000
SHUTDOWN_DRAIN_SECONDS = 2.0  # at stop, the writer drains its queue this long at most


class CameraRecorder:
    def __init__(
        self,
        camera: CameraConfig,
        commune: CommuneConfig,
        root: Path,
        segment_seconds: int,
        index: IndexService,
        password: str | None,
        udp_bind: str = "0.0.0.0",
        clock: Clock = SYSTEM_CLOCK,
        rng: RandomSource | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.camera = camera
        self.commune = commune
        self.root = root
        self.index = index
        self.udp_bind = udp_bind
        self._password = password
        self.clock = clock
        self.stats = CameraStats(created_ns=clock.now_ns())
        self.log = get_logger(camera=camera.id, commune=commune.id)
        segment_ns = segment_seconds * NS_PER_SECOND
        self.pipeline = RecordingPipeline(
            segment_ns,
            stagger_phase_ns(camera.id, segment_ns),
            camera.stall_seconds,
            rng if rng is not None else random.Random(),
            self.stats,
            budget=budget,  # shared by the daemon's recorders (one memory budget)
            budget_key=camera.id,
        )
        self._queue: asyncio.Queue[WriterCommand] = asyncio.Queue()
        window = window_days(commune.retention_days, camera.retention_days)
        self._sink = SegmentSink(root, camera.id, commune.id, index, self.pipeline, clock, self.log, window)
        self._on_packet = self._packet_handler()

    def set_tap(self, tap: FrameTap | None) -> None:
        """Receive each complete access unit (live viewing, :data:`FrameTap`); None detaches."""
        self.pipeline.tap = tap

    async def run(self, stop: asyncio.Event) -> None:
        """Record until ``stop`` is set; retry after each failure with backoff."""
        self.pipeline.budget.register(self.camera.id)
        writer_task = asyncio.create_task(self._sink.run(self._queue), name=f"writer:{self.camera.id}")
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                deadline = self.pipeline.next_deadline()
                if deadline is not None and deadline > self.clock.monotonic():
                    await asyncio.wait({stopping}, timeout=deadline - self.clock.monotonic())
                    if stop.is_set():
                        break
                for command in self.pipeline.on_timer(self.clock.monotonic(), self.clock.now_ns()):
                    if isinstance(command, Connect):
                        await self._attempt(stop)
                    else:
                        self._execute(command)
        finally:
            stopping.cancel()
            self._queue.put_nowait(Stop())
            self._sink.drain_by = self.clock.monotonic() + SHUTDOWN_DRAIN_SECONDS
            await writer_task
            self.pipeline.budget.unregister(self.camera.id)

    async def _attempt(self, stop: asyncio.Event) -> None:
        try:
            await self._record_once(stop)
        except AuthError as exc:
            self.stats.auth_failures += 1
            self._failed(exc, "auth_failed")
        except StreamError as exc:
            self._failed(exc, "stream_failed")
        except Exception as exc:  # the one broad except: one camera never kills the daemon
            self.log.exception("camera_task_error")
            self._failed(exc, "internal_error")
        finally:
            self._execute_all(self.pipeline.session_ended(self.clock.monotonic(), stopping=stop.is_set()))

    def _failed(self, exc: BaseException, event: str) -> None:
        self.stats.failures += 1
        self.stats.last_error = str(exc) or type(exc).__name__
        self.log.warning(event, error=self.stats.last_error)

    async def _record_once(self, stop: asyncio.Event) -> None:
        cam = self.camera
        session = RtspSession(
            cam.host,
            cam.port,
            cam.url,
            cam.username,
            self._password,
            self._on_packet,
            transport=cam.transport,
            udp_bind=self.udp_bind,
        )
        try:
            description = await session.start(self._prepare)
            self.pipeline.session_started(self.clock.monotonic(), description.session_timeout_seconds)
            self.log.info("session_started", url=cam.display_url, payload_type=description.payload_type)
            await self._supervise(session, stop)
        finally:
            await session.close()

    def _prepare(self, description: StreamDescription) -> None:
        """Ready the pipeline for the described stream, before PLAY (see RtspSession.start)."""
        self.pipeline.describe(
            description.encoding, description.payload_type, description.parameter_sets, description.fmtp
        )

    def _packet_handler(self) -> Callable[[int, bytes, int, int], None]:
        """The hot path: one RTP/RTCP frame into the pipeline, commands carried out only when a
        unit completed. A closure over locals: no attribute lookup per packet."""
        on_packet, now_ns, execute_all = self.pipeline.on_packet, self.clock.now_ns, self._execute_all

        def on_frame(channel: int, buf: bytes, start: int, end: int) -> None:
            commands = on_packet(channel, buf, start, end, now_ns())
            if commands:
                execute_all(commands)

        return on_frame

    async def _supervise(self, session: RtspSession, stop: asyncio.Event) -> None:
        """Arm the pipeline's timer until the session closes, fails or is asked to stop."""
        closed = session.closed
        bytes_before = self.stats.bytes_received
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                deadline = self.pipeline.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self.clock.monotonic())
                done, _ = await asyncio.wait({closed, stopping}, timeout=timeout)
                if stopping in done:
                    return
                if closed in done:
                    closed.result()  # raises the connection's error, if any
                    raise StreamError("camera closed the connection")
                self.stats.bytes_received = bytes_before + session.bytes_received
                for command in self.pipeline.on_timer(self.clock.monotonic(), self.clock.now_ns()):
                    if isinstance(command, KeepAlive):
                        await session.keep_alive()
                    elif isinstance(command, SendRtcp):
                        session.send_rtcp(command.data)
                    elif isinstance(command, Fail):
                        raise StreamError(command.reason)
                    else:
                        self._execute(command)
        finally:
            stopping.cancel()

    def _execute_all(self, commands: Iterable[Command]) -> None:
        for command in commands:
            self._execute(command)

    def _execute(self, command: Command) -> None:
        """Writer commands to the writer task, log lines to the log; session commands are
        carried out where a session exists (``_supervise``)."""
        if isinstance(command, Log):
            getattr(self.log, command.level)(command.event, **command.fields)
        elif isinstance(command, Connect | KeepAlive | SendRtcp | Fail):
            self.log.error("command_out_of_session", command=type(command).__name__)
        else:
            self._queue.put_nowait(command)
