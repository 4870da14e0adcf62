"""ENOSPC mid-segment on a real, small filesystem (a tmpfs with a size).

docs/storage.md, "Creating a segment" and "Destroying segments": a write that fails with ENOSPC
closes the segment at its last whole fragment (``SegmentWriter.close_at_last_fragment``); every
segment finished before it still decodes; once space returns, recording resumes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from csud.errors import StorageError
from csud.media.units import AccessUnit
from csud.recording.segmenter import Frame
from csud.recording.writer import SegmentInfo, SegmentWriter, iter_boxes
from csud.store.layout import segment_relpath
from tests.conftest import skip_or_fail
from tests.media import FRAME_NS, GOP, HEIGHT, T0_NS, WIDTH, encode

GOPS_PER_SEGMENT = 4


@pytest.fixture(scope="module")
def clip() -> list[AccessUnit]:
    return encode(GOP * GOPS_PER_SEGMENT)


def gops(clip: list[AccessUnit], start_ns: int) -> list[list[Frame]]:
    frames = [Frame(au.annexb(), start_ns + i * FRAME_NS, FRAME_NS, au.keyframe) for i, au in enumerate(clip)]
    return [frames[i : i + GOP] for i in range(0, len(frames), GOP)]


async def open_segment(root: Path, clip: list[AccessUnit], n: int) -> SegmentWriter:
    start = T0_NS + n * len(clip) * FRAME_NS
    return await SegmentWriter.open(root, segment_relpath("metz", "cam-1", start), start, WIDTH, HEIGHT)


async def fill(writer: SegmentWriter, clip: list[AccessUnit]) -> None:
    """Write the clip GOP by GOP (like the recorder); not closed."""
    for gop in gops(clip, writer.start_ns):
        await writer.write(gop)


async def write_segment(root: Path, clip: list[AccessUnit], n: int) -> SegmentWriter:
    writer = await open_segment(root, clip, n)
    await fill(writer, clip)
    return writer


def decodes(root: Path, info: SegmentInfo) -> int:
    path = root / info.relpath
    data = path.read_bytes()
    assert len(data) == info.bytes and hashlib.sha256(data).hexdigest() == info.sha256
    list(iter_boxes(data))  # whole boxes only
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture
def small_fs(tmp_path: Path, clip: list[AccessUnit]) -> Iterator[Path]:
    """A tmpfs room for about 2.5 segments of ``clip`` (so the third fails mid-segment)."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    probe = sum(len(au.annexb()) for au in clip)
    size_kib = (probe * 5 // 2) // 1024 + 64
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_enospc_closes_the_segment_at_its_last_good_fragment(
    small_fs: Path, clip: list[AccessUnit]
) -> None:
    finished: list[SegmentInfo] = []
    salvaged: SegmentInfo | None = None
    for n in range(10):
        writer: SegmentWriter | None = None
        try:
            writer = await open_segment(small_fs, clip, n)
            await fill(writer, clip)
            info = await writer.close(T0_NS + (n + 1) * len(clip) * FRAME_NS, drop_tail=False)
            assert info is not None
            finished.append(info)
        except StorageError as exc:
            assert "ENOSPC" in str(exc)
            assert writer is not None, "the disk filled while creating the file; resize the tmpfs"
            salvaged = await writer.close_at_last_fragment()
            break
    else:
        pytest.fail("the small filesystem never filled")
    assert len(finished) >= 1
    for info in finished:  # no other file is damaged
        assert decodes(small_fs, info) == GOP * GOPS_PER_SEGMENT
    assert salvaged is not None, "no whole fragment before ENOSPC; resize the tmpfs"
    assert 0 < salvaged.frames < GOP * GOPS_PER_SEGMENT and salvaged.frames % GOP == 0
    assert decodes(small_fs, salvaged) == salvaged.frames
    assert salvaged.end_ns == salvaged.start_ns + salvaged.frames * FRAME_NS
    assert not list(small_fs.rglob("*.partial"))
    assert salvaged.fragments[-1].offset + salvaged.fragments[-1].size == salvaged.bytes

    # Space returns (retention destroys the oldest): recording resumes with a whole segment.
    for info in finished[:2]:
        (small_fs / info.relpath).unlink()
    writer = await write_segment(small_fs, clip, 100)
    resumed = await writer.close(T0_NS + 101 * len(clip) * FRAME_NS, drop_tail=False)
    assert resumed is not None and decodes(small_fs, resumed) == GOP * GOPS_PER_SEGMENT


async def test_close_at_last_fragment_without_a_whole_fragment_removes_the_partial(
    tmp_path: Path, clip: list[AccessUnit]
) -> None:
    writer = await SegmentWriter.open(tmp_path, segment_relpath("metz", "cam-1", T0_NS), T0_NS, WIDTH, HEIGHT)
    await writer.write(gops(clip, T0_NS)[0])  # GOP 0 in flight: no fragment emitted yet
    assert await writer.close_at_last_fragment() is None
    assert not list(tmp_path.rglob("*.partial"))
    assert await writer.close_at_last_fragment() is None  # idempotent


async def test_close_at_last_fragment_after_publish_is_a_no_op(
    tmp_path: Path, clip: list[AccessUnit]
) -> None:
    writer = await write_segment(tmp_path, clip, 0)
    info = await writer.close(T0_NS + len(clip) * FRAME_NS, drop_tail=False)
    assert info is not None
    assert await writer.close_at_last_fragment() is None
    assert decodes(tmp_path, info) == len(clip)
