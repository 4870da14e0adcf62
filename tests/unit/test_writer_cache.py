"""Footage leaves the page cache once durable (issue 15): ``csud.store.durable.drop_cached``.

Residency is read with ``mincore(2)`` on a shared mapping of the file (a mapping that is never
touched: mincore reports the file's pages in the page cache, not this process's page table). On a
filesystem without writeback (tmpfs) dropping is impossible, so these tests need a disk-backed
temporary directory, which the repository's test machines have.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import mmap
import os
import subprocess
from pathlib import Path

import pytest

from csud.media.units import AccessUnit
from csud.recording.segmenter import Frame
from csud.recording.writer import SegmentWriter
from csud.store.durable import drop_cached
from csud.store.layout import segment_relpath
from tests.conftest import skip_or_fail
from tests.media import FRAME_NS, GOP, HEIGHT, T0_NS, WIDTH, encode

PAGE = mmap.PAGESIZE


def resident_pages(path: Path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages of the file)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    size = path.stat().st_size
    pages = (size + PAGE - 1) // PAGE
    vec = (ctypes.c_ubyte * pages)()
    # A shared read-write mapping (ctypes takes the address of a writable buffer only); never touched.
    with path.open("r+b") as f, mmap.mmap(f.fileno(), size) as mm:
        start = ctypes.c_char.from_buffer(mm)
        try:
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(start)), ctypes.c_size_t(size), vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del start  # release the buffer export before the mapping closes
    return sum(v & 1 for v in vec), pages


@pytest.fixture()
def disk_dir(tmp_path: Path) -> Path:
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True, text=True).stdout
    if fs.strip() in ("tmpfs", "ramfs"):
        skip_or_fail(f"page-cache tests need a disk-backed temporary directory, {tmp_path} is {fs.strip()}")
    return tmp_path


def test_drop_cached_after_fsync_empties_the_cache(disk_dir: Path) -> None:
    path = disk_dir / "f"
    data = os.urandom(256 * PAGE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
        assert resident_pages(path)[0] > 200  # written through the page cache
        drop_cached(fd, len(data))
    finally:
        os.close(fd)
    assert resident_pages(path)[0] == 0
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_drop_cached_ignores_what_cannot_be_advised() -> None:
    r, w = os.pipe()
    try:
        drop_cached(r, 1)  # ESPIPE: best effort, never raises
    finally:
        os.close(r)
        os.close(w)


async def test_a_closed_segment_is_not_left_in_the_page_cache(disk_dir: Path) -> None:
    clip: list[AccessUnit] = encode(GOP * 4)
    frames = [Frame(au.annexb(), T0_NS + i * FRAME_NS, FRAME_NS, au.keyframe) for i, au in enumerate(clip)]
    relpath = segment_relpath("metz", "cam-1", T0_NS)
    writer = await SegmentWriter.open(disk_dir, relpath, T0_NS, WIDTH, HEIGHT)
    for k in range(0, len(frames), GOP):
        await writer.write(frames[k : k + GOP])
    info = await writer.close(T0_NS + len(frames) * FRAME_NS, drop_tail=False)
    assert info is not None
    resident, pages = resident_pages(disk_dir / relpath)
    assert pages >= 4 and resident == 0, f"{resident} of {pages} pages still cached"
