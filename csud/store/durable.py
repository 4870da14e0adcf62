"""Small durable-file helpers shared by the writer, retention, recovery and extraction.

Blocking calls: run them in a worker thread from the event loop.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

HASH_CHUNK_BYTES = 1 << 20


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
            child.mkdir()
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
