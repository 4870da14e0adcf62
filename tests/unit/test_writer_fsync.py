"""A failed fsync (EIO) never lets a segment be indexed with bytes that may not be on disk.

docs/storage.md, "When fsync fails": the writer fsyncs every ``SYNC_EVERY_BYTES`` and at close
through ``csud.store.durable.fsync_fd``; after a failure, ``close_at_last_fragment`` keeps only
the fragments synced before it (or nothing), the failure is counted
(``csud_storage_fsync_failures_total``) and logged once per episode. The failure is injected by
monkeypatching ``os.fsync`` as the durable helper sees it.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import av
import pytest

from csud.errors import StorageError
from csud.media.units import AccessUnit
from csud.recording import writer as writer_module
from csud.recording.segmenter import Frame
from csud.recording.writer import SegmentWriter
from csud.store import durable
from csud.store.layout import segment_relpath
from tests.media import FRAME_NS, GOP, HEIGHT, T0_NS, WIDTH, encode

GOPS = 4


@pytest.fixture(scope="module")
def clip() -> list[AccessUnit]:
    return encode(GOP * GOPS)


def gops(clip: list[AccessUnit]) -> list[list[Frame]]:
    frames = [Frame(au.annexb(), T0_NS + i * FRAME_NS, FRAME_NS, au.keyframe) for i, au in enumerate(clip)]
    return [frames[i : i + GOP] for i in range(0, len(frames), GOP)]


class FailingFsync:
    """``os.fsync`` that fails with EIO on calls number ``fail_on`` (1-based), else syncs."""

    def __init__(self, fail_on: set[int]) -> None:
        self.fail_on = fail_on
        self.calls = 0
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls in self.fail_on:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.real(fd)


@pytest.fixture
def fsync_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, object]]]:
    """Fresh failure counter; the durable helper's log lines collected."""
    events: list[tuple[str, dict[str, object]]] = []

    class Log:
        def error(self, event: str, **kw: object) -> None:
            events.append((event, kw))

        warning = error

    monkeypatch.setattr(durable, "FSYNC_FAILURES", durable.FsyncFailures())
    monkeypatch.setattr(durable, "get_logger", lambda **_: Log())
    return events


async def test_fsync_failing_at_close_publishes_nothing_unsynced(
    tmp_path: Path, clip: list[AccessUnit], monkeypatch: pytest.MonkeyPatch, fsync_log: list[tuple[str, dict]]
) -> None:
    """Nothing was synced before the close: no fragment is durable, so no segment at all."""
    start = T0_NS
    w = await SegmentWriter.open(tmp_path, segment_relpath("metz", "cam-1", start), start, WIDTH, HEIGHT)
    for gop in gops(clip):
        await w.write(gop)
    monkeypatch.setattr(durable.os, "fsync", FailingFsync({1}))
    with pytest.raises(StorageError, match="EIO"):
        await w.close(start + GOPS * GOP * FRAME_NS, drop_tail=False)
    assert await w.close_at_last_fragment() is None  # a retried fsync would "succeed": not trusted
    assert not list(tmp_path.rglob("*.mp4*"))
    assert durable.FSYNC_FAILURES.count == 1
    assert [e for e, _ in fsync_log] == ["fsync_failed"]


async def test_periodic_fsync_failure_keeps_exactly_the_synced_fragments(
    tmp_path: Path, clip: list[AccessUnit], monkeypatch: pytest.MonkeyPatch, fsync_log: list[tuple[str, dict]]
) -> None:
    """fsync after every GOP (SYNC_EVERY_BYTES = 1): the 3rd fails, and the retry during the
    salvage too; the published segment holds the fragments synced by the first two, decodes,
    and its hash is of its bytes. One log line for the episode, every failure counted."""
    monkeypatch.setattr(writer_module, "SYNC_EVERY_BYTES", 1)
    start = T0_NS
    w = await SegmentWriter.open(tmp_path, segment_relpath("metz", "cam-1", start), start, WIDTH, HEIGHT)
    failing = FailingFsync({3})  # counts the segment file's fsyncs only: opened above
    monkeypatch.setattr(durable.os, "fsync", failing)
    parts = gops(clip)
    synced_fragments = 0
    with pytest.raises(StorageError, match=r"sync .*EIO"):
        for gop in parts:
            await w.write(gop)  # a GOP's fragment is emitted when the next GOP starts
            synced_fragments = len(w._fragments) if failing.calls < 3 else synced_fragments
    assert failing.calls == 3
    # The salvage's own fsync fails too: then nothing is published, the partial stays cut back.
    failing.fail_on.add(4)
    with pytest.raises(StorageError, match="salvage"):
        await w.close_at_last_fragment()
    assert durable.FSYNC_FAILURES.count == 2
    assert [e for e, _ in fsync_log] == ["fsync_failed"]  # once per episode

    # Same again with a salvage that syncs: exactly the durable fragments are published.
    tmp2 = tmp_path / "second"
    tmp2.mkdir()
    monkeypatch.setattr(durable.os, "fsync", failing.real)
    w = await SegmentWriter.open(tmp2, segment_relpath("metz", "cam-1", start), start, WIDTH, HEIGHT)
    monkeypatch.setattr(durable.os, "fsync", FailingFsync({3}))
    with pytest.raises(StorageError):
        for gop in parts:
            await w.write(gop)
    info = await w.close_at_last_fragment()
    assert info is not None and len(info.fragments) == synced_fragments >= 1
    data = (tmp2 / info.relpath).read_bytes()
    assert len(data) == info.bytes and hashlib.sha256(data).hexdigest() == info.sha256
    with av.open(str(tmp2 / info.relpath)) as container:
        assert sum(1 for _ in container.decode(video=0)) == info.frames == synced_fragments * GOP
    assert [e for e, _ in fsync_log] == ["fsync_failed", "fsync_recovered", "fsync_failed", "fsync_recovered"]
