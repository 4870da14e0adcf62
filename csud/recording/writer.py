"""Segment files: fragmented MP4 muxed by PyAV, hashed, written, synced and renamed.

Two layers:

- :class:`FragmentMuxer` is synchronous and runs in a worker thread. It wraps PyAV's MP4 muxer
  (``frag_keyframe+empty_moov+default_base_moof+skip_trailer``), stream copy only, into memory.
  Muxing keyframe K(k+1) makes the muxer emit GOP k's fragment (moof + mdat); after every call the
  bytes emitted so far are whole top-level boxes (checked). It tracks each fragment's start, byte
  offset in the file, size and frame count.
- :class:`SegmentWriter` is the asyncio shell, one per open segment. PyAV, SHA-256, fsync, rename
  and directory work all run off the event loop (the default executor or a given one); each GOP
  is muxed, hashed and written (``os.write``) in one executor call.

Durability (docs/storage.md, "Creating a segment"): write ``NAME.mp4.partial`` (hashing while
writing), fsync the file, rename to ``NAME.mp4``, fsync the directory; only then does the caller
insert the index row. An existing file is never overwritten.

After a failed write (ENOSPC, EIO), :meth:`SegmentWriter.close_at_last_fragment` keeps what is
whole: the file is truncated to its last complete fragment (the SHA-256 state is saved at each
fragment boundary, so the file is not read back), synced, renamed and returned for indexing.

A ``SegmentWriter`` is not re-entrant: await each call before making the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import aiofiles
import av

from csud.errors import StorageError
from csud.recording.segmenter import Frame
from csud.store.durable import drop_cached, fsync_dir, fsync_fd, makedirs_durable, open_footage
from csud.store.layout import partial_name
from csud.store.records import FragmentInfo, SegmentInfo

MP4_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+skip_trailer"
MP4_TIMESCALE = 90000
NS_PER_SECOND = 1_000_000_000
# 90 kHz ticks = ns * 90000 / 1e9 = ns * 9 / 100_000 (kept as integers: no float drift).
_TICKS_NUM = 9
_TICKS_DEN = 100_000
BOX_HEADER_SIZE = 8
BOX_LARGESIZE_HEADER_SIZE = BOX_HEADER_SIZE + 8
# fsync an open segment whenever this much was written since its last fsync: bounds what a
# failed fsync can cost (docs/storage.md, "When fsync fails"); ~16 s at 4 Mbit/s.
SYNC_EVERY_BYTES = 8 << 20

T = TypeVar("T")


def ns_to_ticks(delta_ns: int) -> int:
    """Round ``delta_ns`` to the nearest 1/90000 s tick (half up), exactly."""
    return (delta_ns * _TICKS_NUM * 2 + _TICKS_DEN) // (2 * _TICKS_DEN)


def iter_boxes(buf: bytes | memoryview) -> Iterator[tuple[str, int, int]]:
    """Yield ``(type, offset, size)`` of the top-level ISO BMFF boxes in ``buf``.

    Raises ``ValueError`` if ``buf`` does not end exactly at a box boundary.
    """
    view = memoryview(buf)
    offset = 0
    end = len(view)
    while offset < end:
        if end - offset < BOX_HEADER_SIZE:
            raise ValueError(f"truncated box header at offset {offset}")
        size = int.from_bytes(view[offset : offset + 4], "big")
        box_type = bytes(view[offset + 4 : offset + 8]).decode("latin-1")
        if size == 1:
            if end - offset < BOX_LARGESIZE_HEADER_SIZE:
                raise ValueError(f"truncated largesize box header at offset {offset}")
            size = int.from_bytes(view[offset + 8 : offset + 16], "big")
            if size < BOX_LARGESIZE_HEADER_SIZE:
                raise ValueError(f"bad largesize {size} of box {box_type!r} at offset {offset}")
        elif size == 0:
            size = end - offset  # box extends to the end of the file
        elif size < BOX_HEADER_SIZE:
            raise ValueError(f"bad size {size} of box {box_type!r} at offset {offset}")
        if offset + size > end:
            raise ValueError(f"box {box_type!r} at offset {offset} overruns the buffer ({size} bytes)")
        yield box_type, offset, size
        offset += size


class _Sink:
    """File-like object PyAV writes into (non-seekable): collects the emitted bytes."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


class FragmentMuxer:
    """Stream-copy muxer of one segment into fragmented MP4 bytes. Synchronous; not thread-safe.

    The first frame must be a keyframe carrying SPS and PPS in-band (PyAV builds the avcC from
    it). Timestamps are in 1/90000 s: pts = ``pts_ns - start_ns + reorder_ns``, dts =
    ``dts_ns - start_ns + reorder_ns`` (B-frames: the segment's decode delay ``reorder_ns`` keeps
    every dts at or above 0, the fragment's ``trun`` carries ``pts - dts`` as composition
    offsets). So the file's first pts is ``reorder_ns``, its first dts 0; a reader takes the
    first keyframe's pts as the segment start. A non-increasing dts is nudged one tick forward
    (and pts kept at or above it) so that the muxer never sees a non-monotonic dts.
    """

    def __init__(
        self, width: int, height: int, codec: str = "h264", rate: int = 25, reorder_ns: int = 0
    ) -> None:
        self._sink = _Sink()
        self._container: Any = av.open(self._sink, "w", format="mp4", options={"movflags": MP4_MOVFLAGS})
        self._stream: Any = self._container.add_mux_stream(codec, rate=rate, width=width, height=height)
        self._stream.time_base = Fraction(1, MP4_TIMESCALE)
        self._time_base = Fraction(1, MP4_TIMESCALE)
        self._last_ticks = -1  # the last dts
        self._reorder_ns = reorder_ns
        self._closed = False
        self.bytes_emitted = 0
        """Total bytes returned so far: the file offset of the next emitted byte."""
        self._gops: deque[list[int]] = deque()  # [start_ns, frames] of GOPs muxed, not yet emitted
        self._fragments: list[FragmentInfo] = []  # emitted, not yet taken
        self._open_fragment: list[int] | None = None  # [start_ns, offset, size, frames] growing

    def mux(self, frames: Sequence[Frame], start_ns: int) -> bytes:
        """Mux ``frames``; return the bytes the muxer emitted meanwhile (whole boxes)."""
        if self._closed:
            raise RuntimeError("FragmentMuxer is closed")
        origin_ns = start_ns - self._reorder_ns
        for frame in frames:
            pts = ns_to_ticks(frame.pts_ns - origin_ns)
            end_ticks = ns_to_ticks(frame.pts_ns + frame.duration_ns - origin_ns)
            dts = pts if frame.dts_ns is None else ns_to_ticks(frame.dts_ns - origin_ns)
            if dts <= self._last_ticks:
                dts = self._last_ticks + 1
            pts = max(pts, dts)
            packet = av.Packet(frame.data)
            packet.stream = self._stream
            packet.time_base = self._time_base
            packet.pts = pts
            packet.dts = dts
            packet.duration = max(end_ticks - pts, 1)
            packet.is_keyframe = frame.keyframe
            if frame.keyframe or not self._gops:
                self._gops.append([frame.pts_ns, 0])
            self._gops[-1][1] += 1
            self._container.mux_one(packet)
            self._last_ticks = dts
        return self._account(self._sink.take())

    def close(self) -> bytes:
        """Finish the file; return the last bytes (the fragment of the GOP in flight)."""
        if self._closed:
            return b""
        self._closed = True
        self._container.close()
        return self._account(self._sink.take())

    @property
    def pending_gop_start_ns(self) -> int | None:
        """Start of the oldest GOP muxed but not yet emitted: the end of the last emitted fragment."""
        return self._gops[0][0] if self._gops else None

    def take_fragments(self) -> list[FragmentInfo]:
        """Fragments completed since the last call, in file order."""
        out, self._fragments = self._fragments, []
        return out

    def _account(self, data: bytes) -> bytes:
        base = self.bytes_emitted
        for box_type, offset, size in iter_boxes(data):  # ValueError here = muxer contract broken
            if box_type == "moof":
                self._finish_fragment()
                if not self._gops:
                    raise RuntimeError("muxer emitted a fragment for no GOP")
                start_ns, frames = self._gops.popleft()
                self._open_fragment = [start_ns, base + offset, size, frames]
            elif self._open_fragment is not None:
                self._open_fragment[2] += size  # mdat (and anything else) of the same fragment
        # Each call emits whole fragments: what we have now is complete.
        self._finish_fragment()
        self.bytes_emitted += len(data)
        return data

    def _finish_fragment(self) -> None:
        if self._open_fragment is not None:
            self._fragments.append(FragmentInfo(*self._open_fragment))
            self._open_fragment = None


def _errno_name(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else "EUNKNOWN"


def _storage_error(op: str, relpath: str, e: OSError) -> StorageError:
    return StorageError(f"{op} {relpath}: {_errno_name(e)} ({e.strerror or e})")


def _check_relpath(relpath: str) -> PurePosixPath:
    p = PurePosixPath(relpath)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts):
        raise ValueError(f"segment path must be relative and normalised: {relpath!r}")
    return p


class SegmentWriter:
    """Writes one segment: ``open`` -> ``write``\\* -> ``close`` (or ``abort``). See the module doc."""

    def __init__(
        self,
        *,
        root: Path,
        relpath: str,
        start_ns: int,
        file: Any,
        muxer: FragmentMuxer,
        executor: Executor | None,
    ) -> None:
        self.root = root
        self.relpath = relpath
        self.start_ns = start_ns
        self._file = file
        self._muxer = muxer
        self._executor = executor
        self._hash = hashlib.sha256()
        self._size_bytes = 0
        self._fragments: list[FragmentInfo] = []
        self._finished = False
        self._failed = False
        self._published = False  # renamed to its final name
        self._abandoned = False  # aborted: the .partial is left to startup recovery (or removed)
        # The last point where the file ended on a fragment boundary (for close_at_last_fragment).
        self._good_size = 0
        self._good_hash = self._hash.copy()
        self._good_end_ns = start_ns

    @property
    def partial_path(self) -> Path:
        return self.root / partial_name(self.relpath)

    @property
    def final_path(self) -> Path:
        return self.root / self.relpath

    @property
    def size_bytes(self) -> int:
        """Bytes written to the file so far."""
        return self._size_bytes

    @classmethod
    async def open(
        cls,
        root: Path,
        relpath: str,
        start_ns: int,
        width: int,
        height: int,
        *,
        codec: str = "h264",
        executor: Executor | None = None,
        reorder_ns: int = 0,
    ) -> SegmentWriter:
        """Create ``root/relpath.partial`` (and missing parent directories); never overwrite."""
        rel = _check_relpath(relpath)
        final = root / relpath
        partial = root / partial_name(relpath)
        loop = asyncio.get_running_loop()

        def prepare() -> None:
            makedirs_durable(root, rel.parent)
            if final.exists():
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final))

        try:
            await loop.run_in_executor(executor, prepare)
            file = await aiofiles.open(partial, "xb", buffering=0, executor=executor, opener=open_footage)
        except OSError as e:
            raise _storage_error("create", partial_name(relpath), e) from e
        try:
            muxer = await loop.run_in_executor(
                executor, functools.partial(FragmentMuxer, width, height, codec, reorder_ns=reorder_ns)
            )
        except BaseException:
            await file.close()
            await loop.run_in_executor(executor, partial.unlink)
            raise
        return cls(root=root, relpath=relpath, start_ns=start_ns, file=file, muxer=muxer, executor=executor)

    async def write(self, frames: Sequence[Frame]) -> None:
        """Mux ``frames`` and append what the muxer emitted (the previous GOP's fragment)."""
        self._check_usable()
        try:  # one executor hop per GOP (issue 15): mux, hash and write in the same worker call
            await self._run(self._mux_hash_write, frames)
        except av.FFmpegError as e:
            self._failed = True
            raise StorageError(f"mux {partial_name(self.relpath)}: {e}") from e
        except OSError as e:
            self._failed = True
            raise _storage_error("write", partial_name(self.relpath), e) from e
        self._fragments.extend(self._muxer.take_fragments())
        self._mark_good(self._muxer.pending_gop_start_ns)
        await self._sync_if_due()  # fsync failure section below

    def _mark_good(self, end_ns: int | None) -> None:
        """The file now ends on a box boundary (the muxer emits whole fragments): remember it."""
        self._good_size = self._size_bytes
        self._good_hash = self._hash.copy()
        if end_ns is not None and self._fragments:
            self._good_end_ns = end_ns

    async def close(self, end_ns: int, drop_tail: bool) -> SegmentInfo | None:
        """Finish, fsync, rename and fsync the directory. ``None`` if no whole GOP was written
        (the partial file is then removed). With ``drop_tail`` the GOP in flight is discarded."""
        self._check_usable()
        self._finished = True
        relpath = self.relpath
        try:
            if drop_tail:
                await self._run(self._muxer.close)
                self._muxer.take_fragments()
            else:
                try:
                    await self._run(self._close_hash_write)
                except OSError as e:
                    self._failed = True
                    raise _storage_error("write", partial_name(relpath), e) from e
                self._fragments.extend(self._muxer.take_fragments())
                self._mark_good(end_ns)
            await self._sync_durable()  # fsync failure section below
            await self._file.close()
        except OSError as e:
            self._failed = True
            await self._close_file_quietly()
            raise _storage_error("sync", partial_name(relpath), e) from e

        if not self._fragments:
            try:
                await self._run(self.partial_path.unlink)
            except OSError as e:
                raise _storage_error("remove", partial_name(relpath), e) from e
            return None

        try:
            await self._run(self._publish)
        except OSError as e:
            raise _storage_error("rename", relpath, e) from e
        return self._info(end_ns, self._size_bytes, self._hash.hexdigest())

    async def abort(self, remove: bool = False) -> None:
        """Stop writing after an error. The ``.partial`` file stays for startup recovery unless
        ``remove``. Never raises for cleanup failures (the original error matters more)."""
        if self._finished:
            self._abandoned = True
            return
        self._finished = True
        self._abandoned = True
        # PyAV may refuse to finish a broken stream; there is nothing left to save from it.
        with contextlib.suppress(Exception):
            await self._run(self._muxer.close)
        await self._close_file_quietly()
        if remove:
            with contextlib.suppress(OSError):
                await self._run(self.partial_path.unlink)

    async def close_at_last_fragment(self) -> SegmentInfo | None:
        """After a write or close failed (ENOSPC, EIO): publish what is whole.

        Truncates the ``.partial`` to the end of the last fragment written completely (a torn
        write after it is cut off), fsyncs it, renames it and fsyncs the directory, like
        :meth:`close`; returns its ``SegmentInfo`` for the index (``end_ns`` = the start of the
        first GOP that did not make it). Returns ``None`` when no fragment is whole (the
        ``.partial`` is then removed, best effort), or when the segment was already published or
        aborted. Raises ``StorageError`` if truncating, syncing or renaming fails too; the
        ``.partial`` then stays for startup recovery. Frees disk space, never needs any.
        """
        if self._published or self._abandoned:
            return None
        self._finished = True
        self._keep_only_durable()  # fsync failure section below
        with contextlib.suppress(Exception):  # the muxer's remaining output is discarded
            await self._run(self._muxer.close)
        await self._close_file_quietly()
        partial, size = self.partial_path, self._good_size
        if not self._fragments:
            with contextlib.suppress(OSError):
                await self._run(partial.unlink)
            return None
        try:
            await self._run(self._publish, size)
        except OSError as e:
            raise _storage_error("salvage", partial_name(self.relpath), e) from e
        return self._info(self._good_end_ns, size, self._good_hash.hexdigest())

    # -- fsync failure (docs/storage.md, "When fsync fails") ----------------------------------
    # The file is fsynced every SYNC_EVERY_BYTES and at close; each success records a durable
    # point (size, hash state, end, fragment count). After a failed fsync the bytes since the
    # last durable point are of unknown state and a retried fsync proves nothing, so the
    # salvage (close_at_last_fragment) keeps only the durable fragments: the segment is never
    # indexed with bytes that may not be on disk. Counted and logged by csud.store.durable.

    _sync_failed = False
    _durable: tuple[int, Any, int, int] | None = None  # size, sha256 state, end_ns, fragments

    async def _sync_if_due(self) -> None:
        if self._size_bytes - (self._durable[0] if self._durable else 0) >= SYNC_EVERY_BYTES:
            try:
                await self._sync_durable()
            except OSError as e:
                self._failed = True
                raise _storage_error("sync", partial_name(self.relpath), e) from e

    async def _sync_durable(self) -> None:
        """fsync the file (the writer's durable helper); on success the file as written so far,
        which ends on a fragment boundary, is the new durable point."""
        try:
            await self._run(self._fsync_then_drop)
        except OSError:
            self._sync_failed = True
            raise
        self._durable = (self._good_size, self._good_hash.copy(), self._good_end_ns, len(self._fragments))

    def _fsync_then_drop(self) -> None:
        fd = self._file.fileno()
        fsync_fd(fd, partial_name(self.relpath))
        # Durable, hence clean: out of the page cache (footage is not read again soon). Dropping
        # after each GOP's write as well cost ~1 point of system time at 100 cameras for nothing
        # measurable (docs/benchmarks.md, "Cost per camera").
        drop_cached(fd, self._size_bytes)

    def _keep_only_durable(self) -> None:
        """After a failed fsync: forget what was written after the last durable point."""
        if not self._sync_failed:
            return
        size, state, end_ns, count = self._durable or (0, hashlib.sha256(), self.start_ns, 0)
        self._good_size, self._good_hash, self._good_end_ns = size, state.copy(), end_ns
        del self._fragments[count:]

    # -- internals --------------------------------------------------------------------------

    def _publish(self, truncate_to: int | None = None) -> None:
        """Give the ``.partial`` its final name (in a worker thread): optionally cut it back to
        ``truncate_to`` bytes and fsync it first; never rename over an existing segment (rename(2)
        would silently replace it); then fsync the directory so the name is durable."""
        partial, final = self.partial_path, self.final_path
        if truncate_to is not None:
            fd = os.open(partial, os.O_WRONLY)
            try:
                os.ftruncate(fd, truncate_to)
                fsync_fd(fd, self.relpath)
            finally:
                os.close(fd)
        if final.exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final))
        os.rename(partial, final)
        self._published = True
        fsync_dir(final.parent)

    def _info(self, end_ns: int, size: int, sha256: str) -> SegmentInfo:
        return SegmentInfo(
            relpath=self.relpath,
            start_ns=self.start_ns,
            end_ns=end_ns,
            bytes=size,
            frames=sum(f.frames for f in self._fragments),
            sha256=sha256,
            fragments=tuple(self._fragments),
        )

    def _check_usable(self) -> None:
        if self._finished:
            raise RuntimeError(f"segment writer for {self.relpath} is closed")
        if self._failed:
            raise StorageError(f"segment {partial_name(self.relpath)} failed earlier; abort it")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _mux_and_hash(self, frames: Sequence[Frame]) -> bytes:
        data = self._muxer.mux(frames, self.start_ns)
        self._hash.update(data)
        return data

    def _mux_hash_write(self, frames: Sequence[Frame]) -> None:
        """In the worker thread: mux, hash and write what the muxer emitted (``os.write``: the file
        is unbuffered, so this is what aiofiles would do one hop later)."""
        self._write_all(self._mux_and_hash(frames))

    def _close_hash_write(self) -> None:
        self._write_all(self._close_and_hash())

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._write_chunk(view)
            if not written:
                raise OSError(errno.EIO, "short write made no progress")
            view = view[written:]
            self._size_bytes += written

    def _write_chunk(self, view: memoryview) -> int:
        """One ``write(2)`` (a seam for tests that inject ENOSPC or count writes)."""
        return os.write(self._file.fileno(), view)

    def _close_and_hash(self) -> bytes:
        data = self._muxer.close()
        self._hash.update(data)
        return data

    async def _close_file_quietly(self) -> None:
        with contextlib.suppress(OSError):
            await self._file.close()
