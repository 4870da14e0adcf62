"""One camera's recording loop: session -> depacketizer -> timeline -> segmenter -> writer -> index.

The per-packet path is ``_on_packet``: one call into the depacketizer, and work per access unit
only when one is complete. Decisions (when a segment opens, what is dropped) are the pure
segmenter's; this module carries them out. The writer side is a separate task fed per GOP
through a queue bounded in bytes: when storage falls behind, whole GOPs are dropped and counted,
memory never grows.

The loop retries after every failure, with exponential backoff from 1 s to 60 s and jitter,
until the daemon stops it; a failure of one camera never reaches another.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csud.config import CameraConfig, CommuneConfig
from csud.errors import AuthError, StorageError, StreamError
from csud.log import get_logger
from csud.media import h264, h265
from csud.media.rtcp import RtcpReceiver, clock_offset_ns
from csud.media.units import AccessUnit, Gap, StreamReset
from csud.recording.segmenter import H264_RULES, H265_RULES, Close, Drop, Mux, Open, Segmenter
from csud.recording.timeline import Timeline
from csud.recording.writer import SegmentInfo, SegmentWriter
from csud.rtsp.client import RTCP_CHANNEL, RTP_CHANNEL, RtspSession, StreamDescription
from csud.store.index import Index
from csud.store.layout import segment_relpath, stagger_phase_ns
from csud.store.retention_plan import window_days

NS_PER_SECOND = 1_000_000_000
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
HEALTHY_SESSION_SECONDS = 30.0  # a session that recorded this long resets the backoff
WRITER_QUEUE_MAX_BYTES = 64 * 1024 * 1024
KEEPALIVE_MIN_SECONDS = 1.0
RTCP_REPORT_SECONDS = 5.0
INDEX_RETRY_INITIAL_SECONDS = 0.5
INDEX_RETRY_MAX_SECONDS = 5.0
REORDER_STEPS_FATAL = 3  # timestamps stepping back this often...
REORDER_WINDOW_FRAMES = 250  # ...within this many frames: B-frames


@dataclass
class CameraStats:
    """Plain counters, updated on the hot path and exported in aggregate by the metrics task."""

    up: bool = False
    bytes_received: int = 0
    frames_received: int = 0
    frames_recorded: int = 0
    lost_packets: int = 0
    malformed_packets: int = 0
    malformed_rtcp: int = 0
    auth_failures: int = 0
    foreign_packets: int = 0  # other payload types on the RTP channel
    reconnects: int = 0
    failures: int = 0
    segments_written: int = 0
    bytes_written: int = 0
    last_frame_ns: int = 0
    last_error: str = ""
    clock_offset_seconds: float = 0.0
    dropped_frames: dict[str, int] = field(default_factory=dict)
    storage_errors: int = 0  # failed opens, writes, syncs (csud_storage_write_errors_total)
    segment_write_seconds: list[float] = field(default_factory=list)  # drained by metrics
    # For `csud status` and the last-segment gauge; set by the writer task, once per segment.
    last_segment_relpath: str = ""
    last_segment_end_ns: int = 0
    created_ns: int = field(default_factory=time.time_ns)  # when this recorder was built


class Backoff:
    """Exponential backoff with full jitter: uniform in [base/2, base], base doubling to the cap."""

    def __init__(
        self,
        initial: float = BACKOFF_INITIAL_SECONDS,
        maximum: float = BACKOFF_MAX_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self._base = initial
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self._base = self.initial

    def next_delay(self) -> float:
        delay = self._rng.uniform(self._base / 2, self._base)
        self._base = min(self._base * 2, self.maximum)
        return delay


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
        frame_sink: Callable[[AccessUnit, str, list[bytes], int], None] | None = None,
    ) -> None:
        self.frame_sink = frame_sink  # live viewing: once per complete access unit, never awaited
        self.camera = camera
        self.udp_bind = udp_bind
        self.commune = commune
        self.root = root
        self.segment_ns = segment_seconds * NS_PER_SECOND
        self.index = index
        self._password = password
        self.stats = CameraStats()
        self.log = get_logger(camera=camera.id, commune=commune.id)
        self._backoff = Backoff()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queued_bytes = 0
        self._overloaded = False
        self._writer_failed = False
        self._new_pipeline(None)

    # -- pipeline state (pure objects), rebuilt for every session --------------------------

    def _new_pipeline(self, description: StreamDescription | None) -> None:
        """Fresh pure state for a new session: depacketizer, timeline, segmenter for its codec."""
        sets = list(description.parameter_sets) if description else []
        encoding = description.encoding if description else "H264"
        self._depack: h264.H264Depacketizer | h265.H265Depacketizer
        self._parse_sps: Callable[[bytes], h264.SpsInfo | h265.H265SpsInfo]
        if encoding == "H264":
            self._depack = h264.H264Depacketizer(sets)
            self._rules, self._parse_sps = H264_RULES, h264.parse_sps
        elif encoding == "H265":
            fmtp = description.fmtp if description else {}
            try:
                self._depack = h265.H265Depacketizer(
                    sets,
                    max_don_diff=int(fmtp.get("sprop-max-don-diff", "0") or 0),
                    depack_buf_nalus=int(fmtp.get("sprop-depack-buf-nalus", "0") or 0),
                )
            except ValueError as exc:
                raise StreamError(f"unsupported H.265 stream: {exc}") from None
            self._rules, self._parse_sps = H265_RULES, h265.parse_sps
        else:
            raise StreamError(f"unsupported codec {encoding} (H264 and H265 are recorded)")
        self._timeline = Timeline()
        self._segmenter = Segmenter(
            self.segment_ns, stagger_phase_ns(self.camera.id, self.segment_ns), rules=self._rules
        )
        self._payload_type = -1
        self._rtcp = RtcpReceiver(random.getrandbits(32))
        self._reorder_since = self._reorder_steps = 0
        self._fatal: StreamError | None = None  # set by the packet path, raised by _supervise
        self._sps: bytes | None = None
        self._pps: bytes | None = None
        self._size = (0, 0)
        self._sync_params()

    def _sync_params(self) -> None:
        sps, pps = self._depack.sps, self._depack.pps
        if sps == self._sps and pps == self._pps:
            return
        self._sps, self._pps = sps, pps
        vps = getattr(self._depack, "vps", None)  # H.265 only
        if sps is not None:
            try:
                info = self._parse_sps(sps)
                self._size = (info.width, info.height)
            except ValueError as exc:
                self.log.warning("sps_unparsable", error=str(exc))
        self._param_sets = [n for n in (vps, sps, pps) if n]
        self._segmenter.parameter_sets(self._param_sets)

    # -- hot path --------------------------------------------------------------------------

    def _on_packet(self, channel: int, buf: bytes, start: int, end: int) -> None:
        if channel != RTP_CHANNEL:
            if channel == RTCP_CHANNEL:
                self._on_rtcp(buf, start, end)
            return
        stats = self.stats
        if end - start > 1 and (buf[start + 1] & 0x7F) != self._payload_type:
            stats.foreign_packets += 1
            return
        depack = self._depack
        try:
            depack.feed(buf, start, end)
        except ValueError as exc:
            stats.malformed_packets += 1
            if stats.malformed_packets & (stats.malformed_packets - 1) == 0:  # 1, 2, 4, 8... logged
                self.log.warning("rtp_malformed", error=str(exc), count=stats.malformed_packets)
        if depack.events:
            self._on_events(depack.take_events())

    def _on_rtcp(self, buf: bytes, start: int, end: int) -> None:
        """A sender report: export the camera clock's offset from ours (never used for time)."""
        try:
            report = self._rtcp.on_rtcp(bytes(buf[start:end]), time.time_ns())
        except ValueError as exc:
            self.stats.malformed_rtcp += 1
            if self.stats.malformed_rtcp & (self.stats.malformed_rtcp - 1) == 0:
                self.log.warning("rtcp_malformed", error=str(exc), count=self.stats.malformed_rtcp)
            return
        if report is None or report.ssrc != self._depack.ssrc:
            return
        server_ns = self._timeline.project(report.rtp_timestamp)
        if server_ns is not None:
            self.stats.clock_offset_seconds = clock_offset_ns(report, server_ns) / NS_PER_SECOND

    def _send_receiver_report(self, session: RtspSession) -> None:
        depack = self._depack
        ssrc, highest = depack.ssrc, depack.highest_seq
        if ssrc is None or highest is None:
            return
        report = self._rtcp.receiver_report(
            ssrc, highest, depack.packets, depack.lost_packets, time.time_ns()
        )
        session.send_rtcp(report)

    def _on_events(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, AccessUnit):
                self._on_access_unit(event)
            elif isinstance(event, Gap):
                self.stats.lost_packets += event.lost_packets
                self._apply(self._segmenter.gap(event.reason))
            elif isinstance(event, StreamReset):
                self.log.warning("stream_reset", reason=event.reason)
                self._timeline.reset()

    def _on_access_unit(self, au: AccessUnit) -> None:
        stats = self.stats
        stats.frames_received += 1
        now_ns = time.time_ns()
        stats.last_frame_ns = now_ns
        if au.keyframe and (self._depack.sps is not self._sps or self._depack.pps is not self._pps):
            self._sync_params()
        if self.frame_sink is not None:
            self.frame_sink(au, self._rules.codec, self._param_sets, now_ns)
        if self._writer_failed:
            self._writer_failed = False
            self._apply(self._segmenter.gap("storage_error"))
        if self._overloaded:
            if self._queued_bytes > WRITER_QUEUE_MAX_BYTES // 2:
                self._count_drop("overload", 1)
                return
            self._overloaded = False
        elif self._queued_bytes > WRITER_QUEUE_MAX_BYTES:
            self._overloaded = True
            self.log.warning("writer_overloaded", queued_bytes=self._queued_bytes)
            self._apply(self._segmenter.gap("overload"))
            self._count_drop("overload", 1)
            return
        pts_ns, discontinuity = self._timeline.map(au.rtp_timestamp, now_ns)
        if discontinuity and self._timeline.last_reason == "reorder":
            self._on_reordered_timestamps(stats.frames_received)
        self._apply(self._segmenter.push(au, pts_ns, discontinuity))

    def _on_reordered_timestamps(self, frame_number: int) -> None:
        """Timestamps stepping back within a second, again and again: B-frames, which csud does
        not record (every step back would cut the GOP; ~90 % of the frames would be lost
        silently). The camera is failed loudly instead: its reason shows in the log, in
        ``csud status`` and as csud_camera_up 0, until it is configured without B-frames."""
        if frame_number - self._reorder_since > REORDER_WINDOW_FRAMES:
            self._reorder_since, self._reorder_steps = frame_number, 0
        self._reorder_steps += 1
        if self._reorder_steps >= REORDER_STEPS_FATAL and self._fatal is None:
            self._fatal = StreamError(
                "camera sends B-frames (RTP timestamps out of order), which csud does not "
                "record: configure the stream without B-frames"
            )

    def _apply(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Drop):
                self._count_drop(action.reason, action.frames)
                continue
            if isinstance(action, Mux):
                self._queued_bytes += sum(len(f.data) for f in action.frames)
            elif isinstance(action, Open):
                action = (action, self._size, self._rules.codec)
            self._queue.put_nowait(action)

    def _count_drop(self, reason: str, frames: int) -> None:
        if frames:
            self.stats.dropped_frames[reason] = self.stats.dropped_frames.get(reason, 0) + frames

    # -- writer task ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Carry out Open/Mux/Close in order. Ends on a ``None`` sentinel.

        Storage errors come in episodes (a full disk fails every open and write until space
        returns): each error is counted, but only the first of an episode is logged, and
        ``storage_recovered`` when a write or close succeeds again ends it.
        """
        writer: SegmentWriter | None = None
        frames = 0
        episode_errors = 0  # storage errors since the last successful write
        episode_started = 0.0
        while True:
            item = await self._queue.get()
            if item is None:
                break
            wrote = False  # a write or close reached the disk: ends a storage-error episode
            try:
                if isinstance(item, tuple):
                    opened, (width, height), codec = item
                    relpath = segment_relpath(self.commune.id, self.camera.id, opened.start_ns)
                    writer = await SegmentWriter.open(
                        self.root, relpath, opened.start_ns, width, height, codec=codec
                    )
                    frames = 0
                elif isinstance(item, Mux):
                    self._queued_bytes -= sum(len(f.data) for f in item.frames)
                    if writer is not None:
                        await writer.write(item.frames)
                        frames += len(item.frames)
                        wrote = True
                    else:  # the segment failed to open or was closed by a storage error
                        self._count_drop("storage_error", len(item.frames))
                elif isinstance(item, Close) and writer is not None:
                    started = time.perf_counter()
                    info = await writer.close(item.end_ns, item.drop_tail)
                    writer = None
                    wrote = True
                    if info is not None:
                        await self._index_segment(info)
                        self.stats.segment_write_seconds.append(time.perf_counter() - started)
                        self.log.info(
                            "segment_closed",
                            path=info.relpath,
                            frames=info.frames,
                            bytes=info.bytes,
                            seconds=round((info.end_ns - info.start_ns) / NS_PER_SECOND, 3),
                        )
            except Exception as exc:  # a storage episode, whatever raised it: the task must live on
                if not isinstance(exc, StorageError):
                    self.log.exception("writer_error")
                    exc = StorageError(f"{type(exc).__name__}: {exc}")
                episode_errors += 1
                if episode_errors == 1:
                    episode_started = time.monotonic()
                    self.log.error("storage_error", error=str(exc))
                self.stats.storage_errors += 1
                self.stats.last_error = str(exc)
                from csud.service import metrics  # not the hot path: one increment per failed segment

                metrics.storage_write_errors.labels(self.camera.id, self.commune.id).inc()
                if writer is not None:
                    # ENOSPC/EIO: keep the segment up to its last whole fragment, indexed; the
                    # segmenter restarts at the next keyframe, so recording resumes with space.
                    failed, writer = writer, None
                    try:
                        salvaged = await failed.close_at_last_fragment()
                        if salvaged is not None:
                            await self._index_segment(salvaged)
                            self.log.warning(
                                "segment_closed_at_last_fragment",
                                path=salvaged.relpath,
                                frames=salvaged.frames,
                            )
                        self._count_drop("storage_error", frames - (salvaged.frames if salvaged else 0))
                    except StorageError as salvage_exc:  # the .partial stays for startup recovery
                        if episode_errors == 1:
                            self.log.error("segment_salvage_failed", error=str(salvage_exc))
                        await failed.abort()
                self._writer_failed = True
                continue
            if episode_errors and wrote:
                self.log.warning(
                    "storage_recovered",
                    errors=episode_errors,
                    seconds=round(time.monotonic() - episode_started, 3),
                )
                episode_errors = 0
        if writer is not None:  # the pipeline always closes before the sentinel; be safe anyway
            await writer.abort()

    async def _index_segment(self, info: SegmentInfo) -> None:
        """Insert the row of a published segment, retrying until the index takes it.

        The file is already durable under its final name: its row must never be abandoned (a
        busy or briefly failing index only delays it; were the daemon killed meanwhile, startup
        recovery indexes the file).
        """
        delay = INDEX_RETRY_INITIAL_SECONDS
        while True:
            try:
                await self.index.add_segment(
                    self.camera.id, self.commune.id, info,
                    retention_days=window_days(self.commune.retention_days, self.camera.retention_days),
                )  # fmt: skip
                break
            except Exception as exc:
                self.log.error("index_insert_retry", path=info.relpath, error=str(exc), delay_seconds=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, INDEX_RETRY_MAX_SECONDS)
        stats = self.stats
        stats.segments_written += 1
        stats.last_segment_relpath = info.relpath
        stats.last_segment_end_ns = info.end_ns
        stats.bytes_written += info.bytes
        stats.frames_recorded += info.frames

    # -- session loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Record until ``stop`` is set; retry after each failure with backoff."""
        writer_task = asyncio.create_task(self._write_loop(), name=f"writer:{self.camera.id}")
        try:
            while not stop.is_set():
                started = time.monotonic()
                frames_before = self.stats.frames_received
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
                    self.stats.up = False
                    self._apply(self._segmenter.stop())
                if stop.is_set():
                    break
                healthy = time.monotonic() - started > HEALTHY_SESSION_SECONDS
                if healthy and self.stats.frames_received > frames_before:
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                self.stats.reconnects += 1
                self.log.info("reconnect_scheduled", delay_seconds=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            self._queue.put_nowait(None)
            await writer_task

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
            self.stats.up = True
            self.log.info("session_started", url=cam.display_url, payload_type=description.payload_type)
            await self._supervise(session, stop, description.session_timeout_seconds)
        finally:
            await session.close()

    def _prepare(self, description: StreamDescription) -> None:
        """Ready the pipeline for the described stream, before PLAY (see RtspSession.start)."""
        self._new_pipeline(description)
        self._payload_type = description.payload_type

    async def _supervise(self, session: RtspSession, stop: asyncio.Event, timeout_seconds: int) -> None:
        """Keep-alive within the session timeout; fail on stall; return when asked to stop."""
        keepalive_every = max(KEEPALIVE_MIN_SECONDS, timeout_seconds / 2)
        last_keepalive = last_report = time.monotonic()
        stall = self.camera.stall_seconds
        closed = session.closed
        bytes_before = self.stats.bytes_received
        # A stall is judged on RTP packets, not on bytes: a camera whose encoder died may still
        # send RTCP reports and answer keep-alives. Watching the counter costs the hot path nothing.
        depack = self._depack  # the session's own: its packet counter is the progress measure
        packets_seen, progress_at = depack.packets, time.monotonic()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({closed, stopping}, timeout=min(1.0, stall / 2))
                if stopping in done:
                    return
                if closed in done:
                    closed.result()  # raises the connection's error, if any
                    raise StreamError("camera closed the connection")
                if self._fatal is not None:
                    raise self._fatal
                self.stats.bytes_received = bytes_before + session.bytes_received
                now = time.monotonic()
                if depack.packets != packets_seen:
                    packets_seen, progress_at = depack.packets, now
                elif now - progress_at > stall:
                    raise StreamError(f"no RTP packet for {stall:g} s (stall)")
                if now - last_report >= RTCP_REPORT_SECONDS:
                    # Some cameras end a session that sends no receiver reports.
                    last_report = now
                    self._send_receiver_report(session)
                if now - last_keepalive >= keepalive_every:
                    last_keepalive = now
                    await session.keep_alive()
        finally:
            stopping.cancel()


class IndexService:
    """The index, used from one dedicated thread so SQLite never blocks the event loop."""

    def __init__(self, index: Index) -> None:
        import concurrent.futures

        self.index = index
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="csud-index")

    async def add_segment(
        self, camera: str, commune: str, info: Any, retention_days: int | None = None
    ) -> int:
        loop = asyncio.get_running_loop()
        row_id: int = await loop.run_in_executor(
            self._executor,
            lambda: self.index.add_segment(
                camera, commune, info, time.time_ns(), retention_days=retention_days
            ),
        )
        return row_id

    async def check_writable(self) -> None:
        """Raise ``StorageError`` unless the index takes its write lock now (``/healthz``).

        Runs on the index thread, behind any queued segment inserts: a thread that is stuck
        shows as a timeout in the caller, which is what the health check wants to see.
        """
        await asyncio.get_running_loop().run_in_executor(self._executor, self.index.check_writable)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.index.close()
