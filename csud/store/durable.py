"""Small durable-file helpers shared by the writer, retention, recovery and extraction.

Blocking calls: run them in a worker thread from the event loop.

**fsync failures** (docs/storage.md, "When fsync fails"): after an ``fsync`` that failed (EIO
after the kernel dropped dirty pages it could not write), the bytes written since the last
successful ``fsync`` of that file are of unknown state, and a second ``fsync`` may well succeed
without having written them: the kernel reports a writeback error once. :func:`fsync_fd` is the
writer's one way to sync a segment file: it counts every failure (:data:`FSYNC_FAILURES`,
exported as ``csud_storage_fsync_failures_total``) and logs ``fsync_failed`` once per episode
(until an ``fsync`` succeeds again: ``fsync_recovered``). What to do with the file is the
caller's (the writer keeps only what was durable before: :class:`csud.recording.writer.SegmentWriter`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from csud.log import get_logger

HASH_CHUNK_BYTES = 1 << 20
# Footage of people is never world-readable, whatever the umask (issue 12): segments, the index
# and extractions are created with these modes (the umask can only narrow them further).
FOOTAGE_FILE_MODE = 0o640
FOOTAGE_DIR_MODE = 0o750


def open_footage(path: str | os.PathLike[str], flags: int) -> int:
    """An ``opener`` for ``open()``/``aiofiles.open()``: new files get :data:`FOOTAGE_FILE_MODE`."""
    return os.open(path, flags, FOOTAGE_FILE_MODE)


class FsyncFailures:
    """Process-wide count of failed ``fsync`` calls, and the episode state (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.episode_failures = 0  # failures since the last success (0: no episode open)

    def failed(self, what: str, exc: OSError) -> None:
        with self._lock:
            self.count += 1
            self.episode_failures += 1
            first = self.episode_failures == 1
        if first:
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            get_logger(component="storage").error("fsync_failed", path=what, errno=name, error=str(exc))

    def succeeded(self) -> None:
        if not self.episode_failures:  # the common case: no lock, no log
            return
        with self._lock:
            failures, self.episode_failures = self.episode_failures, 0
        if failures:
            get_logger(component="storage").warning("fsync_recovered", failures=failures)


FSYNC_FAILURES = FsyncFailures()


def fsync_fd(fd: int, what: str = "") -> None:
    """``os.fsync(fd)``, counted and logged once per episode when it fails (re-raised)."""
    try:
        os.fsync(fd)
    except OSError as e:
        FSYNC_FAILURES.failed(what, e)
        raise
    FSYNC_FAILURES.succeeded()


def drop_cached(fd: int, end: int) -> None:
    """Keep footage out of the page cache: ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the first
    ``end`` bytes of ``fd``. Called right after a successful ``fsync``, when every page is clean,
    it drops them all. (Linux also starts the writeback of dirty pages in the range, without
    waiting, and keeps those.) Durability is unchanged: only ``fsync`` makes bytes durable.
    Best effort: a refusal (EINVAL, ESPIPE) is ignored; a writeback error is still reported by
    the next ``fsync`` of the file. Footage is written once and read back rarely (a recovery
    check, an extraction): a cold read then costs a disk read, not a copy.
    """
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, end, os.POSIX_FADV_DONTNEED)


def fsync_path(path: Path, directory: bool = False) -> None:
    """fsync a file, or a directory (which makes the names created or removed in it durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path, directory=True)


def makedirs_durable(root: Path, reldir: PurePosixPath) -> None:
    """Create the missing directories of ``root/reldir``, fsyncing each new one's parent."""
    current = root
    for part in reldir.parts:
        child = current / part
        try:
            child.mkdir(mode=FOOTAGE_DIR_MODE)
        except FileExistsError:
            pass
        else:
            fsync_dir(current)
        current = child


def sha256_file(
    path: Path, length: int | None = None, on_bytes: Callable[[int], None] | None = None
) -> tuple[int, str]:
    """``(bytes read, SHA-256 hex)`` of the first ``length`` bytes of ``path`` (all by default)."""
    digest = hashlib.sha256()
    size = 0
    buf = bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while length is None or size < length:
            want = HASH_CHUNK_BYTES if length is None else min(HASH_CHUNK_BYTES, length - size)
            n = f.readinto(view[:want])
            if not n:
                break
            digest.update(view[:n])
            size += n
            if on_bytes is not None:
                on_bytes(n)
    return size, digest.hexdigest()
