"""The writer side of one camera: carries out ``Open | Mux | Close | Stop`` in order, indexes
each published segment, and survives storage errors.

What belongs here: the writer task (:class:`SegmentSink`) and the index thread
(:class:`IndexService`). What does not: deciding when a segment opens or what is dropped (the
pure segmenter, through :mod:`csud.recording.pipeline`), muxing and durability of one file
(:mod:`csud.recording.writer`).

Storage errors come in episodes (a full disk fails every open and write until space returns):
each error is counted, but only the first of an episode is logged, and ``storage_recovered``
when a write or close succeeds again ends it. A failed segment is kept up to its last whole
fragment, indexed, and the pipeline is told to start over at the next keyframe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from pathlib import Path
from typing import Any

from csud.errors import StorageError
from csud.recording.clock import SYSTEM_CLOCK, Clock
from csud.recording.pipeline import Close, Mux, Open, RecordingPipeline, WriterCommand
from csud.recording.stats import CameraStats
from csud.recording.writer import SegmentInfo, SegmentWriter
from csud.store.index import Index
from csud.store.layout import segment_relpath

NS_PER_SECOND = 1_000_000_000
INDEX_RETRY_INITIAL_SECONDS = 0.5
INDEX_RETRY_MAX_SECONDS = 5.0


class IndexService:
    """The index, used from one dedicated thread so SQLite never blocks the event loop."""

    def __init__(self, index: Index, clock: Clock = SYSTEM_CLOCK) -> None:
        self.index = index
        self._clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="csud-index")

    async def add_segment(
        self, camera: str, commune: str, info: Any, retention_days: int | None = None
    ) -> int:
        """Insert a segment's row; ``retention_days``: the window in force when it was written,
        stored with the row so that a later configuration can only shorten it (issue 12)."""
        now_ns = self._clock.now_ns()
        loop = asyncio.get_running_loop()
        row_id: int = await loop.run_in_executor(
            self._executor,
            functools.partial(
                self.index.add_segment, camera, commune, info, now_ns, retention_days=retention_days
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


class SegmentSink:
    """One camera's writer task: ``await sink.run(queue)`` until it takes :class:`Stop`."""

    def __init__(
        self,
        root: Path,
        camera: str,
        commune: str,
        index: IndexService,
        pipeline: RecordingPipeline,
        clock: Clock,
        log: Any,
        retention_days: int | None = None,
    ) -> None:
        self.root = root
        self.retention_days = retention_days  # the window in force, stored with each row
        self.camera = camera
        self.commune = commune
        self.index = index
        self.pipeline = pipeline
        self.stats: CameraStats = pipeline.stats
        self.clock = clock
        self.log = log
        self._writer: SegmentWriter | None = None
        self._frames = 0  # in the open segment
        self._episode_errors = 0  # storage errors since the last successful write
        self._episode_started = 0.0
        self._dropping = False  # the drain ran out of time: what is left is dropped
        self.drain_by: float | None = None
        """Monotonic deadline of the drain at shutdown (set by the shell when it stops)."""

    async def run(self, queue: asyncio.Queue[WriterCommand]) -> None:
        while True:
            command = await queue.get()
            if isinstance(command, Mux):
                self.pipeline.writer_took(sum(len(f.data) for f in command.frames))
            elif not isinstance(command, Open | Close):
                break  # Stop
            if self.drain_by is not None and self._over_drain():
                # SIGTERM must return in seconds even when storage is behind: past the drain
                # time, what is still queued is dropped (counted, reason "shutdown"); the open
                # segment is kept up to its last whole fragment and indexed. (A healthy writer
                # has at most a GOP or two queued: it is done long before.)
                if isinstance(command, Mux):
                    self.stats.count_drop("shutdown", len(command.frames))
                if self._writer is not None:
                    closing, self._writer = self._writer, None
                    await self._publish_whole_fragments(closing)
                continue
            try:
                wrote = await self._carry_out(command)
            except Exception as exc:  # a storage episode, whatever raised it: the task must live on
                await self._storage_error(exc)
                continue
            if self._episode_errors and wrote:
                self.log.warning(
                    "storage_recovered",
                    errors=self._episode_errors,
                    seconds=round(self.clock.monotonic() - self._episode_started, 3),
                )
                self._episode_errors = 0
        if self._writer is not None:  # the pipeline always closes before Stop; be safe anyway
            await self._writer.abort()

    def _over_drain(self) -> bool:
        """Past the drain time (once true, true until the end)."""
        if not self._dropping and self.drain_by is not None:
            self._dropping = self.clock.monotonic() > self.drain_by
        return self._dropping

    async def _carry_out(self, command: Open | Mux | Close) -> bool:
        """Whether a write or close reached the disk (which ends a storage-error episode)."""
        if isinstance(command, Open):
            width = height = 0
            try:
                size = command.codec.parse_sps(command.sps)
                width, height = size.width, size.height
            except (ValueError, IndexError) as exc:
                self.log.warning("sps_unparsable", error=str(exc))
            relpath = segment_relpath(self.commune, self.camera, command.start_ns)
            self._writer = await SegmentWriter.open(
                self.root,
                relpath,
                command.start_ns,
                width,
                height,
                codec=command.codec.av_name,
                reorder_ns=command.reorder_ns,
            )
            self._frames = 0
            return False
        if isinstance(command, Mux):
            if self._writer is None:  # the segment failed to open or was closed by a storage error
                self.stats.count_drop("storage_error", len(command.frames))
                return False
            await self._writer.write(command.frames)
            self._frames += len(command.frames)
            return True
        if self._writer is None:
            return False
        started = self.clock.monotonic()
        info = await self._writer.close(command.end_ns, command.drop_tail)
        self._writer = None
        if info is not None:
            await self._index_segment(info)
            self.stats.segment_write_seconds.append(self.clock.monotonic() - started)
            self.log.info(
                "segment_closed",
                path=info.relpath,
                frames=info.frames,
                bytes=info.bytes,
                seconds=round((info.end_ns - info.start_ns) / NS_PER_SECOND, 3),
            )
        return True

    async def _storage_error(self, exc: Exception) -> None:
        if not isinstance(exc, StorageError):
            self.log.exception("writer_error")
            exc = StorageError(f"{type(exc).__name__}: {exc}")
        self._episode_errors += 1
        if self._episode_errors == 1:
            self._episode_started = self.clock.monotonic()
            self.log.error("storage_error", error=str(exc))
        self.stats.storage_errors += 1  # csud_storage_write_errors_total, exported by metrics
        self.stats.last_error = str(exc)
        if self._writer is not None:
            # ENOSPC/EIO: keep the segment up to its last whole fragment, indexed; the
            # segmenter restarts at the next keyframe, so recording resumes with space.
            failed, self._writer = self._writer, None
            try:
                salvaged = await failed.close_at_last_fragment()
                if salvaged is not None:
                    await self._index_segment(salvaged)
                    self.log.warning(
                        "segment_closed_at_last_fragment", path=salvaged.relpath, frames=salvaged.frames
                    )
                self.stats.count_drop("storage_error", self._frames - (salvaged.frames if salvaged else 0))
            except StorageError as salvage_exc:  # the .partial stays for startup recovery
                if self._episode_errors == 1:
                    self.log.error("segment_salvage_failed", error=str(salvage_exc))
                await failed.abort()
        self.pipeline.storage_failed()

    async def _publish_whole_fragments(self, writer: SegmentWriter) -> None:
        """Close ``writer`` at its last whole fragment (the drain ran out of time) and index it."""
        try:
            salvaged = await writer.close_at_last_fragment()
        except StorageError as exc:  # the .partial stays for startup recovery
            self.log.error("segment_salvage_failed", error=str(exc))
            await writer.abort()
            return
        if salvaged is not None:
            await self._index_segment(salvaged)
        self.stats.count_drop("shutdown", self._frames - (salvaged.frames if salvaged else 0))

    async def _index_segment(self, info: SegmentInfo) -> None:
        """Insert the row of a published segment, retrying until the index takes it.

        The file is already durable under its final name: its row must never be abandoned (a
        busy or briefly failing index only delays it; were the daemon killed meanwhile, startup
        recovery indexes the file).
        """
        delay = INDEX_RETRY_INITIAL_SECONDS
        while True:
            try:
                await self.index.add_segment(self.camera, self.commune, info, self.retention_days)
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
