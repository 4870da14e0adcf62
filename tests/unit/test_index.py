"""Index: SQLite schema, inserts, interval queries, cascade, WAL. Uses tmp_path, no event loop."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from csud.errors import StorageError
from csud.recording.writer import FragmentInfo, SegmentInfo
from csud.store.index import SCHEMA_VERSION, Index, IndexStats

S = 1_000_000_000
T0 = 1_790_000_000 * S


def info(relpath: str, start_s: int, end_s: int, gops: int = 2) -> SegmentInfo:
    start, end = T0 + start_s * S, T0 + end_s * S
    step = (end - start) // gops
    frags = tuple(FragmentInfo(start + g * step, 800 + g * 1000, 1000, 25) for g in range(gops))
    return SegmentInfo(relpath, start, end, 800 + gops * 1000, 25 * gops, "ab" * 32, frags)


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    idx = Index.create(tmp_path / "index.db")
    yield idx
    idx.close()


def test_schema_and_pragmas(tmp_path: Path, index: Index) -> None:
    # 4: identity, 5: retention window, 6: operators, 7: cluster
    assert index.schema_version == SCHEMA_VERSION >= 7
    conn = sqlite3.connect(tmp_path / "index.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
    assert {
        "segments",
        "fragments",
        "segments_camera_start",
        "segments_camera_end",
        "segments_end",
        "fragments_segment_start",
    } <= names
    conn.close()


def test_reopen_keeps_data_and_does_not_migrate_again(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "i.db")
    idx.add_segment("cam", "metz", info("a.mp4", 0, 60), created_ns=T0)
    idx.close()
    idx = Index.create(tmp_path / "i.db")
    assert [r.path for r in idx.segments("cam")] == ["a.mp4"]
    idx.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "i.db")
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StorageError, match="schema version 99, newer"):
        Index.create(tmp_path / "i.db")


def test_insert_and_read_back(index: Index) -> None:
    seg = info("metz/cam/2026/09/21/x.mp4", 0, 60)
    seg_id = index.add_segment("cam", "metz", seg, created_ns=T0 + 61 * S)
    (row,) = index.segments("cam")
    assert (row.id, row.camera, row.commune, row.path) == (seg_id, "cam", "metz", seg.relpath)
    assert (row.start_ns, row.end_ns, row.bytes, row.frames, row.sha256, row.created_ns) == (
        seg.start_ns,
        seg.end_ns,
        seg.bytes,
        seg.frames,
        seg.sha256,
        T0 + 61 * S,
    )
    assert index.fragments(seg_id) == list(seg.fragments)
    assert index.segment(seg_id) == row
    assert index.segment(seg_id + 1) is None


@pytest.mark.parametrize(
    ("from_s", "to_s", "expected"),
    [
        (None, None, ["s0", "s1", "s2"]),
        (0, 60, ["s0"]),  # [from, to): s1 starts at 60, not included
        (59, 61, ["s0", "s1"]),
        (60, 120, ["s1"]),  # s0 ends at 60: not overlapping
        (130, 140, []),  # hole between s1 and s2
        (150, None, ["s2"]),
        (None, 1, ["s0"]),
        (-100, 0, []),
    ],
)
def test_interval_queries(index: Index, from_s: int | None, to_s: int | None, expected: list[str]) -> None:
    # Inserted out of order; a segment of another camera overlaps everything.
    index.add_segment("cam", "metz", info("s2", 140, 200), T0)
    index.add_segment("cam", "metz", info("s0", 0, 60), T0)
    index.add_segment("cam", "metz", info("s1", 60, 120), T0)
    index.add_segment("other", "metz", info("o", -1000, 1000), T0)
    f = None if from_s is None else T0 + from_s * S
    t = None if to_s is None else T0 + to_s * S
    assert [r.path for r in index.segments("cam", f, t)] == expected


def test_duplicate_path_is_refused_atomically(index: Index) -> None:
    index.add_segment("cam", "metz", info("a.mp4", 0, 60), T0)
    with pytest.raises(StorageError, match=r"index segment a\.mp4: UNIQUE"):
        index.add_segment("cam", "metz", info("a.mp4", 60, 120), T0)
    assert index.stats() == IndexStats(segments=1, bytes=2800, frames=50, cameras=1)
    # No orphan fragments from the failed transaction.
    assert index._conn.execute("SELECT COUNT(*) FROM fragments").fetchone()[0] == 2


def test_delete_cascades_to_fragments(index: Index) -> None:
    a = index.add_segment("cam", "metz", info("a.mp4", 0, 60, gops=3), T0)
    b = index.add_segment("cam", "metz", info("b.mp4", 60, 120, gops=2), T0)
    assert index.delete_segment(a)
    assert not index.delete_segment(a)
    assert index.fragments(a) == []
    assert len(index.fragments(b)) == 2
    assert index._conn.execute("SELECT COUNT(*) FROM fragments").fetchone()[0] == 2


def test_foreign_keys_are_enforced(index: Index) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        index._conn.execute("INSERT INTO fragments VALUES (12345, 0, 0, 0, 0)")


def test_cameras_and_stats(index: Index) -> None:
    assert index.cameras() == [] and index.stats() == IndexStats(0, 0, 0, 0)
    index.add_segment("cam-b", "metz", info("b", 0, 60), T0)
    index.add_segment("cam-a", "metz", info("a", 0, 60), T0)
    index.add_segment("cam-a", "metz", info("a2", 60, 120), T0)
    assert index.cameras() == ["cam-a", "cam-b"]
    assert index.stats() == IndexStats(segments=3, bytes=3 * 2800, frames=150, cameras=2)


def test_usable_from_another_thread(index: Index) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            index.add_segment("cam", "metz", info("t.mp4", 0, 60), T0)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert errors == [] and [r.path for r in index.segments("cam")] == ["t.mp4"]


def test_open_failure_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="open index"):
        Index.create(tmp_path / "missing-dir" / "index.db")


def test_readonly_open_reads_and_refuses_writes(tmp_path: Path) -> None:
    idx = Index.create(tmp_path / "i.db")
    idx.add_segment("cam", "metz", info("a.mp4", 0, 60), T0)
    idx.close()
    ro = Index.open(tmp_path / "i.db", readonly=True)
    assert [r.path for r in ro.segments("cam")] == ["a.mp4"]
    with pytest.raises(StorageError, match="readonly"):
        ro.add_segment("cam", "metz", info("b.mp4", 60, 120), T0)
    ro.close()
    with pytest.raises(StorageError, match="open index"):
        Index.open(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_cluster_fence_is_stamped_on_a_segment(tmp_path: Path) -> None:
    index = Index.create(tmp_path / "i.sqlite3")
    info = SegmentInfo(
        relpath="c/cam/a.mp4", start_ns=1, end_ns=2, bytes=3, frames=4, sha256="0" * 64, fragments=()
    )
    sid = index.add_segment("cam", "c", info, 5)
    assert index.segment_fences([sid]) == {sid: (None, None)}  # one node: no fence
    index.set_segment_fence(sid, "rec-1", 42)
    assert index.segment_fences([sid]) == {sid: ("rec-1", 42)}
    index.close()
