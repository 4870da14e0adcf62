"""Startup recovery of segment files and ``csud check`` (docs/storage.md, "Startup", steps 4-6).

Real segment files (libx264 through the real writer) cut at every interesting place: a
``.partial`` is published up to its last whole fragment (step 4), an orphan ``.mp4`` is indexed
or quarantined (step 5), a row without its file is marked and journaled (step 6); nothing is
ever deleted, and a second run changes nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from csud.errors import StorageError
from csud.recording.writer import SegmentInfo
from csud.store.durable import sha256_file
from csud.store.index import Index
from csud.store.journal import INTEGRITY_FAILURE, RECOVERED
from csud.store.layout import partial_name
from csud.store.recovery import (
    QUARANTINE_DIR,
    StoreLock,
    check_store,
    recover_store,
    store_locked,
)
from csud.store.scan import scan_bytes
from tests.media import FRAME_NS, GOP, T0_NS, encode, record_store, timed_frames

NOW = T0_NS + 3600 * 1_000_000_000


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SegmentInfo]]:
    """One camera, 2 segments of 2 s (2 GOPs each), recorded and indexed for real."""
    import asyncio

    root = tmp_path_factory.mktemp("src")
    index = Index.create(root / "index.sqlite3")
    rec = asyncio.run(record_store(root, index, timed_frames(encode(4 * GOP)), camera="cam-1"))
    index.close()
    assert len(rec.segments) == 2
    return root, list(rec.segments)


@pytest.fixture
def store(tmp_path: Path, recorded: tuple[Path, list[SegmentInfo]]) -> Iterator[tuple[Path, Index]]:
    src, _ = recorded
    root = tmp_path / "store"
    shutil.copytree(src, root)
    index = Index.create(root / "index.sqlite3")
    yield root, index
    index.close()


def frames_decoded(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_scanner_finds_every_fragment_the_writer_recorded(recorded: tuple[Path, list[SegmentInfo]]) -> None:
    root, infos = recorded
    for info in infos:
        result = scan_bytes((root / info.relpath).read_bytes())
        assert result.valid and result.timescale == 90000
        assert [(f.offset, f.size, f.samples) for f in result.fragments] == [
            (f.offset, f.size, f.frames) for f in info.fragments
        ]
        assert result.good_end == info.bytes


@pytest.mark.parametrize("cut", ["torn_last_fragment", "one_byte_short", "at_fragment_boundary"])
def test_step4_partial_is_cut_to_its_last_whole_fragment_and_indexed(
    store: tuple[Path, Index], recorded: tuple[Path, list[SegmentInfo]], cut: str
) -> None:
    root, index = store
    info = recorded[1][1]
    row = index.segments("cam-1")[1]
    index.delete_segment(row.id)  # as if killed before step 5: the file is still being written
    path = root / info.relpath
    last = info.fragments[-1]
    size = {
        "torn_last_fragment": last.offset + last.size // 2,
        "one_byte_short": info.bytes - 1,
        "at_fragment_boundary": last.offset,
    }[cut]
    data = path.read_bytes()[:size]
    path.unlink()
    (root / partial_name(info.relpath)).write_bytes(data)

    report = recover_store(index, root, now_ns=NOW, actor="test")

    assert report.published == [info.relpath] and not report.quarantined
    kept = info.fragments[:-1]
    assert path.stat().st_size == last.offset
    assert not (root / partial_name(info.relpath)).exists()
    rows = index.segments("cam-1")
    assert [r.path for r in rows] == [recorded[1][0].relpath, info.relpath]
    new = rows[1]
    assert new.frames == sum(f.frames for f in kept) == frames_decoded(path)
    assert new.sha256 == sha256_file(path)[1] and new.bytes == last.offset
    assert abs(new.start_ns - info.start_ns) < 1_000_000  # the name keeps milliseconds
    assert new.end_ns == pytest.approx(kept[-1].start_ns + GOP * FRAME_NS, abs=20_000)
    frags = index.fragments(new.id)
    assert [(f.offset, f.size, f.frames) for f in frags] == [(f.offset, f.size, f.frames) for f in kept]
    assert all(abs(a.start_ns - b.start_ns) < 1_000_000 for a, b in zip(frags, kept, strict=True))
    entries = index.journal_entries(kind=RECOVERED)
    assert [e.details["action"] for e in entries] == ["partial_published"]
    assert entries[0].details["truncated_bytes"] == size - last.offset
    assert index.verify_journal().ok
    # Idempotent: a second start finds nothing to do.
    again = recover_store(index, root, now_ns=NOW, actor="test")
    assert not again.changed
    assert check_store(index, root).consistent


def test_step4_partial_without_a_whole_fragment_is_quarantined_not_deleted(store: tuple[Path, Index]) -> None:
    root, index = store
    rel = "metz/cam-1/2026/09/21/20260921T150000.000Z.mp4"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    junk = b"\x00\x00\x00\x1cftypisom" + b"\x01" * 30  # an ftyp and a torn moov
    (root / partial_name(rel)).write_bytes(junk)
    before = len(index.segments("cam-1"))

    report = recover_store(index, root, now_ns=NOW, actor="test")

    assert [p for p, _ in report.quarantined] == [partial_name(rel)]
    moved = root / QUARANTINE_DIR / partial_name(rel)
    assert moved.read_bytes() == junk and not (root / partial_name(rel)).exists()
    assert len(index.segments("cam-1")) == before
    (entry,) = index.journal_entries(kind=RECOVERED)
    assert (
        entry.details["action"] == "quarantined"
        and entry.details["to"] == f"{QUARANTINE_DIR}/{partial_name(rel)}"
    )
    report = check_store(index, root)
    assert report.consistent and report.quarantined == 1


def test_step5_orphan_file_is_indexed_if_whole_else_quarantined(
    store: tuple[Path, Index], recorded: tuple[Path, list[SegmentInfo]]
) -> None:
    root, index = store
    whole, broken = recorded[1]
    for row in index.segments("cam-1"):
        index.delete_segment(row.id)  # both files are orphans now
    data = (root / broken.relpath).read_bytes()
    (root / broken.relpath).write_bytes(data[:-10])  # a final name that is not whole
    check = check_store(index, root)
    assert not check.consistent and check.orphan_files == sorted([whole.relpath, broken.relpath])

    report = recover_store(index, root, now_ns=NOW, actor="test")

    assert report.indexed_orphans == [whole.relpath]
    assert [p for p, _ in report.quarantined] == [broken.relpath]
    (row,) = index.segments("cam-1")
    assert (row.path, row.bytes, row.frames, row.sha256) == (
        whole.relpath,
        whole.bytes,
        whole.frames,
        whole.sha256,
    )
    assert check_store(index, root).consistent


def test_step6_row_without_file_is_marked_and_journaled_once(
    store: tuple[Path, Index], recorded: tuple[Path, list[SegmentInfo]]
) -> None:
    root, index = store
    gone = recorded[1][0]
    data = (root / gone.relpath).read_bytes()
    (root / gone.relpath).unlink()

    report = recover_store(index, root, now_ns=NOW, actor="test")
    assert report.missing == [gone.relpath]
    assert [r.path for r in index.missing()] == [gone.relpath]
    (entry,) = index.journal_entries(kind=INTEGRITY_FAILURE)
    assert entry.camera == "cam-1" and entry.details == {"count": 1, "paths": [gone.relpath]}
    check = check_store(index, root)
    assert not check.consistent and check.missing_files == [gone.relpath] and check.marked_missing == 1
    assert not recover_store(index, root, now_ns=NOW, actor="test").changed  # journaled once
    assert len(index.journal_entries(kind=INTEGRITY_FAILURE)) == 1

    (root / gone.relpath).write_bytes(data)  # restored from a backup
    assert recover_store(index, root, now_ns=NOW, actor="test").reappeared == [gone.relpath]
    assert index.missing() == [] and check_store(index, root).consistent


def test_check_reports_size_and_hash_mismatches_and_left_partials(
    store: tuple[Path, Index], recorded: tuple[Path, list[SegmentInfo]]
) -> None:
    root, index = store
    a, b = recorded[1]
    assert check_store(index, root, hashes=True).consistent
    with (root / a.relpath).open("ab") as f:
        f.write(b"x")
    raw = bytearray((root / b.relpath).read_bytes())
    raw[-1] ^= 0xFF
    (root / b.relpath).write_bytes(bytes(raw))
    (root / partial_name("metz/cam-1/2026/09/21/20260921T160000.000Z.mp4")).write_bytes(b"")
    report = check_store(index, root, hashes=True)
    assert report.size_mismatches == [(a.relpath, a.bytes, a.bytes + 1)]
    assert report.hash_mismatches == [b.relpath]
    assert report.partial_files == ["metz/cam-1/2026/09/21/20260921T160000.000Z.mp4.partial"]
    assert not report.consistent


def test_store_lock_refuses_a_second_daemon_and_tells_check_partials_are_open(tmp_path: Path) -> None:
    assert not store_locked(tmp_path)
    lock = StoreLock.acquire(tmp_path)
    try:
        assert store_locked(tmp_path)
        with pytest.raises(StorageError, match="another csud daemon"):
            StoreLock.acquire(tmp_path)
    finally:
        lock.release()
    assert not store_locked(tmp_path)
    StoreLock.acquire(tmp_path).release()
    assert os.path.exists(tmp_path / ".csud.lock")
