"""Retention: the pure plan (csud.store.retention_plan) and its execution (csud.store.retention).

docs/storage.md, "Destroying segments": steps 1-5 and the startup step are exercised here,
including a crash between the unlink (step 2) and the row removal (step 4).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from csud.config import LoadedConfig, Settings
from csud.service.retention import RetentionService
from csud.store import retention as aio_retention
from csud.store.index import SCHEMA_VERSION, Index
from csud.store.retention import Retention, policies_from
from csud.store.retention_plan import (
    NS_PER_DAY,
    Hold,
    Policies,
    SegmentRef,
    bytes_to_free,
    cutoff_ns,
    plan,
    plan_disk_pressure,
)
from tests.conftest import skip_or_fail
from tests.helpers import write_config
from tests.store_fixtures import (
    DAY,
    STORE_SITE,
    T0,
    S,
    add_segment,
    files_under,
    indexed_paths,
    open_index,
    settings_of,
)

POLICIES = Policies(legal_max_days=30, communes={"metz": 15, "woippy": 30}, cameras={"cam-short": 7})


def seg(
    i: int, camera: str = "cam", commune: str = "metz", start_s: int = 0, seconds: int = 60
) -> SegmentRef:
    start = T0 + start_s * S
    return SegmentRef(i, camera, commune, start, start + seconds * S, bytes=100 * i)


# -- pure plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("camera", "commune", "days"),
    [
        ("cam", "metz", 15),
        ("cam", "woippy", 30),
        ("cam-short", "metz", 7),  # a camera override shortens
        ("cam-short", "woippy", 7),
        ("cam", "gone", 30),  # a commune no longer configured: the legal maximum
    ],
)
def test_window(camera: str, commune: str, days: int) -> None:
    assert POLICIES.days(camera, commune) == days


def test_window_never_exceeds_the_legal_maximum() -> None:
    assert Policies(legal_max_days=10, communes={"metz": 15}).days("cam", "metz") == 10


def test_kept_one_second_before_due_destroyed_at_first_pass_after() -> None:
    s = seg(1)
    due_at = s.end_ns + 15 * NS_PER_DAY
    assert plan([s], POLICIES, [], due_at - S).due == ()
    assert plan([s], POLICIES, [], due_at - 1).due == ()
    assert plan([s], POLICIES, [], due_at).due == (s,)
    assert plan([s], POLICIES, [], due_at + 60 * S).due == (s,)
    assert cutoff_ns(15, due_at) == s.end_ns


def test_due_is_decided_on_the_end_not_the_start() -> None:
    long = seg(1, seconds=3600)
    now = long.start_ns + 15 * NS_PER_DAY + 60 * S  # start past the window, end not yet
    assert plan([long], POLICIES, [], now).due == ()


def test_hold_keeps_overlapping_segments_only() -> None:
    segs = [seg(1, start_s=0), seg(2, start_s=60), seg(3, start_s=120), seg(4, camera="other", start_s=60)]
    hold = Hold(7, frozenset({"cam"}), T0 + 90 * S, T0 + 120 * S)  # [90 s, 120 s): overlaps only segment 2
    p = plan(segs, POLICIES, [hold], T0 + 20 * NS_PER_DAY)
    assert [s.id for s in p.due] == [1, 4, 3]  # oldest end first
    assert p.held == ((segs[1], (7,)),)


@pytest.mark.parametrize(
    ("hold", "held"),
    [
        (Hold(1, frozenset({"cam"}), T0, T0 + 60 * S), True),
        (Hold(1, frozenset({"cam"}), T0 + 60 * S, T0 + 120 * S), False),  # touches the end: no overlap
        (Hold(1, frozenset({"cam"}), T0 - 60 * S, T0), False),  # touches the start
        (Hold(1, frozenset({"cam"}), T0, T0 + 60 * S, released_ns=T0), False),
        (Hold(1, frozenset({"cam"}), T0, T0 + 60 * S, until_ns=T0 + 20 * NS_PER_DAY), False),  # lapsed
        (Hold(1, frozenset({"cam"}), T0, T0 + 60 * S, until_ns=T0 + 20 * NS_PER_DAY + 1), True),
        (Hold(1, frozenset({"x"}), T0, T0 + 60 * S), False),
    ],
)
def test_hold_coverage(hold: Hold, held: bool) -> None:
    p = plan([seg(1)], POLICIES, [hold], T0 + 20 * NS_PER_DAY)
    assert (len(p.held) == 1) is held
    assert (len(p.due) == 0) is held


def test_overdue_counts_segments_past_the_grace() -> None:
    now = T0 + 20 * NS_PER_DAY
    segs = [seg(1), seg(2, start_s=5 * 86400 - 60)]  # due for 5 days, due just now
    p = plan(segs, POLICIES, [], now, grace_ns=120 * S)
    assert len(p.due) == 2
    assert p.overdue == {"metz": 1}


def test_disk_pressure_oldest_unheld_first_across_cameras() -> None:
    segs = [
        seg(1, "a", start_s=120),
        seg(2, "b", start_s=0),
        seg(3, "a", start_s=60),
        seg(4, "b", start_s=180),
    ]
    hold = Hold(1, frozenset({"b"}), T0, T0 + 30 * S)  # holds segment 2, the oldest
    chosen = plan_disk_pressure(segs, [hold], 350, T0)
    assert [s.id for s in chosen] == [3, 1]  # 300 + 100 >= 350; never 2
    assert plan_disk_pressure(segs, [hold], 0, T0) == []
    assert [s.id for s in plan_disk_pressure(segs, [hold], 10**9, T0)] == [3, 1, 4]


@pytest.mark.parametrize(
    ("total", "free", "expected"),
    [(1000, 60, 0), (1000, 50, 0), (1000, 49, 11), (1000, 0, 60)],
)
def test_bytes_to_free_with_hysteresis(total: int, free: int, expected: int) -> None:
    assert bytes_to_free(total, free, 5, 1) == expected


def test_policies_from_config(tmp_path: Path) -> None:
    p = policies_from(settings_of(write_config(tmp_path, STORE_SITE, root=tmp_path / "store")))
    assert (p.days("metz-gare-01", "metz"), p.days("metz-gare-02", "metz")) == (15, 7)
    assert p.days("woippy-mairie-01", "woippy") == 30


# -- the shell on a real store -------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Path, Index, Retention]]:
    root = tmp_path / "store"
    index = open_index(root)
    retention = Retention(
        index, root, settings_of(write_config(tmp_path, STORE_SITE, root=root)), actor="test"
    )
    yield root, index, retention
    index.close()


def test_pass_destroys_at_the_first_pass_after_due(store: tuple[Path, Index, Retention]) -> None:
    root, index, retention = store
    _, path = add_segment(index, root, "metz-gare-01", "metz", T0)
    due_at = T0 + 60 * S + 15 * DAY
    report = retention.run_pass(due_at - S)
    assert report.count == 0 and (root / path).exists()
    report = retention.run_pass(due_at)
    assert report.count == 1
    assert not (root / path).exists()
    assert index.segments("metz-gare-01") == []
    assert not (root / "metz/metz-gare-01/2026").exists()  # step 5: empty date directories go
    assert (root / "metz/metz-gare-01").is_dir()  # never the camera directory
    (entry,) = index.journal_entries(kind="segments_destroyed")
    assert (entry.camera, entry.commune, entry.reason, entry.actor) == (
        "metz-gare-01",
        "metz",
        "retention",
        "test",
    )
    assert (entry.from_ns, entry.to_ns, entry.details["count"]) == (T0, T0 + 60 * S, 1)
    assert index.verify_journal().ok


def test_camera_override_shortens_the_window(store: tuple[Path, Index, Retention]) -> None:
    root, index, retention = store
    add_segment(index, root, "metz-gare-01", "metz", T0)
    add_segment(index, root, "metz-gare-02", "metz", T0)
    report = retention.run_pass(T0 + 60 * S + 7 * DAY)
    assert [(d.camera, d.count) for d in report.destroyed] == [("metz-gare-02", 1)]
    assert len(index.segments("metz-gare-01")) == 1


def test_one_journal_entry_per_camera_per_pass(store: tuple[Path, Index, Retention]) -> None:
    root, index, retention = store
    for i in range(5):
        add_segment(index, root, "metz-gare-01", "metz", T0 + i * 60 * S)
        add_segment(index, root, "woippy-mairie-01", "woippy", T0 + i * 60 * S)
    retention.run_pass(T0 + 31 * DAY)
    entries = index.journal_entries(kind="segments_destroyed")
    assert sorted((e.camera, e.details["count"]) for e in entries) == [
        ("metz-gare-01", 5),
        ("woippy-mairie-01", 5),
    ]
    assert entries[0].from_ns == T0 and entries[0].to_ns == T0 + 300 * S


def test_held_survives_released_goes_at_next_pass(store: tuple[Path, Index, Retention]) -> None:
    root, index, retention = store
    _, held_path = add_segment(index, root, "metz-gare-01", "metz", T0)
    _, free_path = add_segment(index, root, "metz-gare-01", "metz", T0 + 60 * S)
    hold = index.add_hold(
        ["metz-gare-01"], T0 + 10 * S, T0 + 20 * S, requisition="PV 2026/123", officer="OPJ Martin",
        reason="agression", until_ns=None, now_ns=T0 + DAY, actor="test",
    )  # fmt: skip
    now = T0 + 20 * DAY
    report = retention.run_pass(now)
    assert report.count == 1 and report.held == {("metz", "metz-gare-01"): 1}
    assert (root / held_path).exists() and not (root / free_path).exists()
    assert retention.run_pass(now + 60 * S).count == 0  # still held at every pass
    index.release_hold(hold.id, reason="classement sans suite", now_ns=now + 61 * S, actor="test")
    assert retention.run_pass(now + 120 * S).count == 1
    assert not (root / held_path).exists()


def test_hold_until_lapses(store: tuple[Path, Index, Retention]) -> None:
    root, index, retention = store
    add_segment(index, root, "metz-gare-01", "metz", T0)
    until = T0 + 25 * DAY
    index.add_hold(
        ["metz-gare-01"], T0, T0 + 60 * S, requisition="R1", officer="O", reason="r",
        until_ns=until, now_ns=T0 + DAY, actor="test",
    )  # fmt: skip
    assert retention.run_pass(until - S).count == 0
    assert retention.run_pass(until).count == 1


def test_a_hold_added_after_the_plan_still_wins(store: tuple[Path, Index, Retention]) -> None:
    root, index, _ = store
    seg_id, path = add_segment(index, root, "metz-gare-01", "metz", T0)
    index.add_hold(
        ["metz-gare-01"], T0, T0 + S, requisition="R", officer="O", reason="r", until_ns=None,
        now_ns=T0, actor="t",
    )  # fmt: skip
    assert index.mark_deleting([seg_id], "retention", T0 + 20 * DAY) == []  # re-checked in step 1
    assert (root / path).exists()


def test_disk_pressure_never_touches_held_footage(store: tuple[Path, Index, Retention]) -> None:
    root, index, _ = store
    ids = [add_segment(index, root, "metz-gare-01", "metz", T0 + i * 60 * S, size=1000)[0] for i in range(4)]
    index.add_hold(
        ["metz-gare-01"], T0, T0 + 60 * S, requisition="R", officer="O", reason="r", until_ns=None,
        now_ns=T0, actor="t",
    )  # fmt: skip
    freed = {"bytes": 0}

    class Usage:
        total = 100_000

        @property
        def free(self) -> int:  # 4 % free plus what was destroyed
            return 4000 + freed["bytes"]

    def disk_usage(_: Path) -> Usage:
        freed["bytes"] = 1000 * (4 - len(index.segments("metz-gare-01")))
        return Usage()

    settings = settings_of(write_config(root.parent, STORE_SITE, root=root, min_free_percent=5))
    retention = Retention(index, root, settings, actor="test", disk_usage=disk_usage)
    report = retention.relieve_disk_pressure(T0 + DAY)
    # need 6 % = 6000 free: 2 segments; the oldest (held) is skipped
    assert [r.id for r in index.segments("metz-gare-01")] == [ids[0], ids[3]]
    assert report.destroyed[0].reason == "disk_pressure"
    (entry,) = index.journal_entries(kind="segments_destroyed")
    assert entry.reason == "disk_pressure" and entry.details["count"] == 2


def test_crash_between_unlink_and_row_removal_is_completed_at_startup(
    store: tuple[Path, Index, Retention], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, index, retention = store
    for i in range(3):
        add_segment(index, root, "metz-gare-01", "metz", T0 + i * 60 * S)
    add_segment(index, root, "metz-gare-01", "metz", T0 + 10 * DAY)  # not due

    def crash(*_: object, **__: object) -> int:
        raise SystemExit("power cut after step 3")

    monkeypatch.setattr(index, "remove_deleted", crash)
    with pytest.raises(SystemExit):
        retention.run_pass(T0 + 16 * DAY)
    monkeypatch.undo()
    # The crash left rows marked deleting whose files are gone.
    assert len(index.deleting()) == 3
    assert indexed_paths(index) == files_under(root)  # live rows and files agree meanwhile
    index.close()

    # "Restart": a new connection, then the startup step.
    index2 = Index.create(root / "index.sqlite3")
    try:
        restarted = Retention(index2, root, retention.settings, actor="test")
        report = restarted.recover(T0 + 16 * DAY + S)
        assert report.count == 3 and report.destroyed[0].missing_files == 3
        assert index2.deleting() == []
        rows = [r.path for r in index2.segments("metz-gare-01")]
        assert len(rows) == 1 and all((root / p).exists() for p in rows)  # no row without a file
        assert files_under(root) == set(rows)  # no file without a row
        kinds = [e.kind for e in index2.journal_entries()]
        assert kinds == ["segments_destroyed", "recovered"]
        assert index2.verify_journal().ok
    finally:
        index2.close()


def test_crash_between_intent_and_unlink_is_completed_at_startup(
    store: tuple[Path, Index, Retention],
) -> None:
    root, index, retention = store
    seg_id, path = add_segment(index, root, "metz-gare-01", "metz", T0)
    index.mark_deleting([seg_id], "retention", T0 + 16 * DAY)  # step 1 only
    assert index.segments("metz-gare-01") == []  # on its way out: no longer listed
    report = retention.recover(T0 + 16 * DAY)
    assert report.count == 1 and report.destroyed[0].missing_files == 0
    assert not (root / path).exists() and index.deleting() == []


def test_unlink_failure_leaves_the_row_live(
    store: tuple[Path, Index, Retention], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, index, retention = store
    _, path = add_segment(index, root, "metz-gare-01", "metz", T0)
    real_unlink = Path.unlink

    def refuse(self: Path, missing_ok: bool = False) -> None:
        if self.name.endswith(".mp4"):
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    report = retention.run_pass(T0 + 16 * DAY)
    assert report.count == 0 and report.errors and report.overdue == {"metz": 1}
    assert [r.path for r in index.segments("metz-gare-01")] == [path]
    monkeypatch.undo()
    assert retention.run_pass(T0 + 16 * DAY).count == 1


def test_a_backlog_is_destroyed_in_bounded_transactions_releasing_the_lock_between(
    store: tuple[Path, Index, Retention], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue: a backlog (restart after hours down, window shortened) marked and removed every due
    row of a round in one transaction each, holding the write lock for seconds while recorders'
    inserts hit busy_timeout. Now steps 1-4 run per batch of at most DESTROY_BATCH rows, and
    another connection can write between two batches."""
    root, index, retention = store
    monkeypatch.setattr(aio_retention, "DESTROY_BATCH", 2)
    for i in range(3):
        add_segment(index, root, "metz-gare-01", "metz", T0 + i * 60 * S)
        add_segment(index, root, "woippy-mairie-01", "woippy", T0 + i * 60 * S)
    calls: list[tuple[str, int]] = []
    other = sqlite3.connect(root / "index.sqlite3", isolation_level=None, timeout=0)
    real_mark, real_remove = index.mark_deleting, index.remove_deleted

    def mark(ids: list[int], reason: str, now_ns: int) -> list[SegmentRef]:
        other.execute("BEGIN IMMEDIATE")  # would raise "database is locked" if a batch held it
        other.execute("ROLLBACK")
        calls.append(("mark", len(ids)))
        return real_mark(ids, reason, now_ns)

    def remove(ids: list[int], entries: list[dict[str, object]]) -> int:
        calls.append(("remove", len(ids)))
        return real_remove(ids, entries)

    monkeypatch.setattr(index, "mark_deleting", mark)
    monkeypatch.setattr(index, "remove_deleted", remove)
    report = retention.run_pass(T0 + 31 * DAY)
    other.close()
    assert report.count == 6 and files_under(root) == set()
    assert calls == [("mark", 2), ("remove", 2)] * 3  # each batch finished before the next is marked
    entries = index.journal_entries(kind="segments_destroyed")
    assert sorted((e.camera, e.details["count"]) for e in entries) == [
        ("metz-gare-01", 1),
        ("metz-gare-01", 2),
        ("woippy-mairie-01", 1),
        ("woippy-mairie-01", 2),
    ]
    assert index.verify_journal().ok


def test_a_crash_in_a_later_batch_leaves_only_that_batch_marked(
    store: tuple[Path, Index, Retention], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, index, retention = store
    monkeypatch.setattr(aio_retention, "DESTROY_BATCH", 2)
    for i in range(5):
        add_segment(index, root, "metz-gare-01", "metz", T0 + i * 60 * S)
    real_remove = index.remove_deleted
    calls = {"n": 0}

    def remove(ids: list[int], entries: list[dict[str, object]]) -> int:
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemExit("power cut in step 4 of the second batch")
        return real_remove(ids, entries)

    monkeypatch.setattr(index, "remove_deleted", remove)
    with pytest.raises(SystemExit):
        retention.run_pass(T0 + 16 * DAY)
    assert len(index.deleting()) == 2  # the first batch is gone and journaled, the third untouched
    assert len(index.segments("metz-gare-01")) == 1
    assert [e.details["count"] for e in index.journal_entries(kind="segments_destroyed")] == [2]
    monkeypatch.setattr(index, "remove_deleted", real_remove)
    assert retention.recover(T0 + 16 * DAY).count == 2
    assert retention.run_pass(T0 + 16 * DAY).count == 1
    assert files_under(root) == set() and index.verify_journal().ok


def test_recovery_unmarks_rows_a_hold_now_covers(store: tuple[Path, Index, Retention]) -> None:
    """Issue: rows marked before a crash were destroyed at startup without re-checking the holds,
    so a hold added meanwhile (the daemon down, a requisition served) lost its footage."""
    root, index, retention = store
    held_id, held_path = add_segment(index, root, "metz-gare-01", "metz", T0)
    free_id, free_path = add_segment(index, root, "metz-gare-01", "metz", T0 + 60 * S)
    now = T0 + 16 * DAY
    assert len(index.mark_deleting([held_id, free_id], "retention", now)) == 2  # step 1, then a crash
    index.add_hold(
        ["metz-gare-01"], T0, T0 + 30 * S, requisition="PV 2026/9", officer="OPJ", reason="r",
        until_ns=None, now_ns=now + S, actor="test",
    )  # fmt: skip
    report = retention.recover(now + 2 * S)
    assert report.count == 1
    assert (root / held_path).exists() and not (root / free_path).exists()
    assert [r.path for r in index.segments("metz-gare-01")] == [held_path] and index.deleting() == []
    (entry,) = [e for e in index.journal_entries(kind="recovered") if e.details.get("action")]
    assert entry.details == {"action": "held_unmarked", "count": 1, "paths": [held_path]}
    assert (entry.camera, entry.commune) == ("metz-gare-01", "metz")
    assert index.verify_journal().ok


def _quarantine(root: Path, name: str, camera: str = "metz-gare-01") -> str:
    rel = f"quarantine/metz/{camera}/2026/09/01/{name}"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"x" * 10)
    return rel


def test_quarantined_files_are_destroyed_past_the_legal_maximum(
    store: tuple[Path, Index, Retention],
) -> None:
    """Issue: quarantined files were never destroyed and could keep footage past the legal
    maximum. Now a pass destroys one whose name's start is at least legal.max_retention_days old
    (30 here) and journals it (docs/storage.md, "Destroying segments")."""
    root, index, retention = store
    partial = _quarantine(root, "20260901T000000.000Z.mp4.partial")
    renamed = _quarantine(root, "20260901T000000.000Z.mp4.1")
    later = _quarantine(root, "20260901T120000.000Z.mp4")
    other = _quarantine(root, "notes.txt")  # not a segment name: never touched
    legal_at = T0 + 30 * DAY
    assert retention.run_pass(legal_at - 1).quarantine_expired == []
    assert retention.run_pass(legal_at, dry_run=True).quarantine_expired == [renamed, partial]
    assert (root / partial).exists()
    report = retention.run_pass(legal_at)
    assert report.quarantine_expired == [renamed, partial]
    assert not (root / partial).exists() and not (root / renamed).exists()
    assert (root / later).exists() and (root / other).exists()
    entries = index.journal_entries(kind="segments_destroyed")
    assert [(e.reason, e.camera, e.commune, e.from_ns, e.details["path"]) for e in entries] == [
        ("quarantine_expired", "metz-gare-01", "metz", T0, renamed),
        ("quarantine_expired", "metz-gare-01", "metz", T0, partial),
    ]
    assert index.verify_journal().ok
    assert retention.run_pass(T0 + 31 * DAY).quarantine_expired == [later]


def test_a_hold_keeps_a_quarantined_file(store: tuple[Path, Index, Retention]) -> None:
    root, index, retention = store
    kept = _quarantine(root, "20260901T000000.000Z.mp4.partial")
    gone = _quarantine(root, "20260901T000000.000Z.mp4.partial", camera="metz-gare-02")
    index.add_hold(
        ["metz-gare-01"], T0 + 60 * S, T0 + 120 * S, requisition="R", officer="O", reason="r",
        until_ns=None, now_ns=T0, actor="t",
    )  # fmt: skip
    assert retention.run_pass(T0 + 40 * DAY).quarantine_expired == [gone]
    assert (root / kept).exists()


def test_dry_run_destroys_nothing(store: tuple[Path, Index, Retention]) -> None:
    root, index, retention = store
    add_segment(index, root, "metz-gare-01", "metz", T0)
    report = retention.run_pass(T0 + 16 * DAY, dry_run=True)
    assert report.count == 1 and len(index.segments("metz-gare-01")) == 1
    assert index.journal_entries() == []


def test_unconfigured_camera_and_commune_still_expire(store: tuple[Path, Index, Retention]) -> None:
    root, index, retention = store
    add_segment(index, root, "old-cam", "metz", T0)  # camera removed from config: commune window
    add_segment(index, root, "x-cam", "gone", T0)  # commune removed: the legal maximum
    assert [d.camera for d in retention.run_pass(T0 + 16 * DAY).destroyed] == ["old-cam"]
    assert [d.camera for d in retention.run_pass(T0 + 31 * DAY).destroyed] == ["x-cam"]


def test_usage_is_kept_by_triggers(store: tuple[Path, Index, Retention]) -> None:
    root, index, retention = store
    for i in range(3):
        add_segment(index, root, "metz-gare-01", "metz", T0 + i * 60 * S, size=500)
    assert [(u.camera, u.segments, u.bytes) for u in index.usage()] == [("metz-gare-01", 3, 1500)]
    retention.run_pass(T0 + 16 * DAY)
    assert index.usage() == []


def test_migration_from_version_1_keeps_data_and_fills_usage(tmp_path: Path) -> None:
    from csud.store.index import MIGRATIONS

    path = tmp_path / "index.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    MIGRATIONS[0](conn)
    conn.execute(
        "INSERT INTO segments (camera, commune, start_ns, end_ns, path, bytes, frames, sha256, created_ns)"
        " VALUES ('c', 'metz', 0, 60, 'a.mp4', 42, 1, 'x', 1)"
    )
    conn.execute("PRAGMA user_version=1")
    conn.execute("COMMIT")
    conn.close()
    index = Index.create(path)
    try:
        assert index.schema_version == SCHEMA_VERSION
        assert [(u.camera, u.segments, u.bytes) for u in index.usage()] == [("c", 1, 42)]
        assert index.verify_journal().ok and index.journal_entries() == []
    finally:
        index.close()


@pytest.mark.parametrize(
    ("sql", "index_name"),
    [
        (
            "SELECT id FROM segments INDEXED BY segments_camera_end WHERE camera = 'c' AND end_ns <= 5"
            " AND commune = 'metz' AND deleting_ns IS NULL ORDER BY end_ns, id LIMIT 10",
            "segments_camera_end",
        ),
        ("SELECT id FROM segments WHERE deleting_ns IS NOT NULL", "segments_deleting"),
        (
            "SELECT MIN(retention_days) FROM segments WHERE camera = 'c' AND retention_days IS NOT NULL",
            "segments_camera_window",
        ),
        (
            "SELECT 1 FROM segments WHERE camera = 'c' AND commune = 'metz'"
            " AND (retention_days IS NULL OR retention_days > 7) LIMIT 1",
            "segments_camera_window",
        ),
        ("SELECT id FROM segments INDEXED BY segments_end ORDER BY end_ns, id LIMIT 5", "segments_end"),
        ("SELECT hold_id FROM hold_cameras WHERE camera = 'c'", "hold_cameras_camera"),
    ],
)
def test_queries_use_indexes(tmp_path: Path, sql: str, index_name: str) -> None:
    index = open_index(tmp_path)
    index.close()
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    detail = " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
    conn.close()
    assert index_name in detail
    assert not re.search(r"SCAN segments(?! USING)", detail)  # never a full table scan
    assert "TEMP B-TREE" not in detail  # the index gives the order


def test_due_query_plan_is_a_range_search(store: tuple[Path, Index, Retention]) -> None:
    _, index, _ = store
    sql, params = index._due_sql("SELECT id", "c", "metz", 5, [(1, 2)], window=(10, 7))
    detail = " ".join(r[-1] for r in index._query(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "SEARCH segments USING INDEX segments_camera_end (camera=? AND end_ns<?)" in detail


# -- disk pressure on a real small filesystem ------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (we run as root in CI; skipped elsewhere). Always unmounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, check=False
    )
    if result.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_pressure_on_a_small_filesystem(tmpfs: Path, tmp_path: Path) -> None:
    """Fill a 4 MiB tmpfs with 100 KiB segments of two cameras, one of them partly held; with
    min_free_percent = 30 csud destroys the oldest unheld first until 31 % is free again."""
    root = tmpfs / "store"
    index = Index.create(tmp_path / "index.sqlite3")  # index outside the small fs: only footage counts
    settings = settings_of(write_config(tmp_path, STORE_SITE, root=root, min_free_percent=30))
    try:
        rows: list[tuple[str, int, str]] = []
        for i in range(30):  # 3 MiB of 4
            for cam in ("metz-gare-01", "woippy-mairie-01"):
                commune = cam.split("-")[0]
                if len(rows) < 30:
                    rows.append(
                        (cam, *add_segment(index, root, cam, commune, T0 + i * 60 * S, size=100 * 1024))
                    )
        held_from, held_to = T0, T0 + 3 * 60 * S  # metz-gare-01's first three segments
        index.add_hold(
            ["metz-gare-01"], held_from, held_to, requisition="PV-9", officer="O", reason="r", until_ns=None,
            now_ns=T0, actor="t",
        )  # fmt: skip
        retention = Retention(index, root, settings, actor="test")
        before = os.statvfs(root)
        assert before.f_bavail / before.f_blocks < 0.30
        report = retention.relieve_disk_pressure(T0 + 60 * S)
        after = os.statvfs(root)
        assert after.f_bavail / after.f_blocks >= 0.30
        destroyed = {(cam, path) for cam, _, path in rows if not (root / path).exists()}
        remaining = [(cam, i, path) for cam, i, path in rows if (root / path).exists()]
        assert destroyed and remaining
        # Held footage is all there.
        for cam, _, path in rows[:6]:
            if cam == "metz-gare-01":
                assert (root / path).exists()
        # Oldest unheld first, across cameras: every destroyed unheld segment is older (by end)
        # than every surviving unheld one.
        held_paths = {r.path for r in index.segments("metz-gare-01", held_from, held_to)}
        ends = {r.path: r.end_ns for c in ("metz-gare-01", "woippy-mairie-01") for r in index.segments(c)}
        survivors = [ends[p] for _, _, p in remaining if p not in held_paths]
        destroyed_rows = [r for r in index.journal_entries(kind="segments_destroyed")]
        assert {e.reason for e in destroyed_rows} == {"disk_pressure"}
        assert sum(e.details["count"] for e in destroyed_rows) == len(destroyed) == report.count
        assert max(e.to_ns or 0 for e in destroyed_rows) <= min(survivors)
        assert indexed_paths(index) == files_under(root)
        assert index.verify_journal().ok
    finally:
        index.close()


# -- unclean stop (issue 12, point 9) -----------------------------------------------------------


def _start_service(tmp_path: Path) -> tuple[RetentionService, LoadedConfig]:
    from csud.config import load_config

    root = tmp_path / "store"
    open_index(root).close()
    loaded = load_config(write_config(tmp_path, STORE_SITE, root=root))
    return RetentionService(root / "index.sqlite3", loaded.settings), loaded


def test_a_start_after_an_unclean_stop_journals_it_with_what_recovery_did(tmp_path: Path) -> None:
    import asyncio

    from csud.store.recovery import RecoveryReport

    async def scenario() -> None:
        service, loaded = _start_service(tmp_path)
        await service.start(loaded, cameras=3)
        assert await service.journal_unclean_stop(RecoveryReport()) is None  # first start: nothing
        service._executor.shutdown(wait=True)  # killed: no close(), no daemon_stopped
        assert service.retention is not None
        service.retention.index.close()

        again, loaded = _start_service(tmp_path)
        await again.start(loaded, cameras=3)
        report = RecoveryReport(published=["metz/cam/a.mp4"], truncated_bytes=123, frames_recovered=40)
        entry = await again.journal_unclean_stop(report)
        assert entry is not None and entry.kind == "unclean_stop_detected"
        assert entry.details["previous_start_id"] == 2  # config_loaded 1, daemon_started 2
        assert entry.details["previous_pid"] == os.getpid()
        recovery = entry.details["recovery"]
        assert recovery["partials_published"] == 1 and recovery["published"] == ["metz/cam/a.mp4"]
        assert recovery["truncated_bytes"] == 123 and recovery["frames_recovered"] == 40
        assert recovery["interrupted_destructions_completed"] == 0
        await again.close(segments_written=0)  # clean: daemon_stopped

        third, loaded = _start_service(tmp_path)
        await third.start(loaded, cameras=3)
        assert await third.journal_unclean_stop(RecoveryReport()) is None  # the previous stop was clean
        await third.close(segments_written=0)

    asyncio.run(scenario())
    index = open_index(tmp_path / "store")
    try:
        kinds = [e.kind for e in index.journal_entries()]
        assert kinds.count("unclean_stop_detected") == 1 and index.verify_journal().ok
    finally:
        index.close()


# -- the window stored with each segment (issue 12, point 2) ---------------------------------------


def _config_without(tmp_path: Path, root: Path, text_from: str, text_to: str) -> Settings:
    """A Retention on ``root`` with the fixture's configuration edited (a reload, a removal)."""
    edited = tmp_path / "edited"
    edited.mkdir(exist_ok=True)
    path = write_config(edited, STORE_SITE, root=root)
    text = path.read_text(encoding="utf-8")
    assert text_from in text
    path.write_text(text.replace(text_from, text_to), encoding="utf-8")
    return settings_of(path)


REMOVE_GARE_02 = (
    '[[cameras]]\nid = "metz-gare-02"\ncommune = "metz"\nurl = "rtsp://10.20.0.12/s"\nretention_days = 7\n',
    "",
)


def test_a_removed_camera_keeps_its_shorter_window(
    tmp_path: Path, store: tuple[Path, Index, Retention]
) -> None:
    """A camera with a 7-day window removed from the configuration: its footage goes after 7
    days, not after its commune's 15 (the window is stored with each row at write time)."""
    root, index, _ = store
    _, path = add_segment(index, root, "metz-gare-02", "metz", T0, retention_days=7)
    removed = Retention(index, root, _config_without(tmp_path, root, *REMOVE_GARE_02), actor="test")
    due_at = T0 + 60 * S + 7 * DAY
    assert removed.run_pass(due_at - S).count == 0
    report = removed.run_pass(due_at)
    assert report.count == 1 and report.windows[("metz", "metz-gare-02")] == 7
    assert path not in files_under(root)


def test_existing_rows_take_the_configured_window_at_the_first_pass_then_keep_it(
    tmp_path: Path, store: tuple[Path, Index, Retention]
) -> None:
    """Rows without a stored window (before schema 4) get the configuration's at the first real
    pass; removing the camera afterwards does not lengthen it."""
    root, index, retention = store
    _, path = add_segment(index, root, "metz-gare-02", "metz", T0)  # no window stored
    retention.run_pass(T0 + 2 * 60 * S)  # nothing due; stores 7 days in the row
    assert [r.window_days for r in index.due_candidates("metz-gare-02", "metz", T0 + 365 * DAY)] == [7]
    removed = Retention(index, root, _config_without(tmp_path, root, *REMOVE_GARE_02), actor="test")
    assert removed.run_pass(T0 + 60 * S + 7 * DAY).count == 1
    assert path not in files_under(root)


def test_a_shortened_window_applies_to_stored_footage_a_lengthened_one_never(
    tmp_path: Path, store: tuple[Path, Index, Retention]
) -> None:
    root, index, retention = store
    add_segment(index, root, "metz-gare-01", "metz", T0, retention_days=15)
    longer = _config_without(tmp_path, root, "retention_days = 15\n", "retention_days = 30\n")
    lengthened = Retention(index, root, longer, actor="test")
    assert lengthened.run_pass(T0 + 60 * S + 15 * DAY).count == 1  # stored 15 days win over 30
    _, path = add_segment(index, root, "metz-gare-01", "metz", T0 + DAY, retention_days=15)
    shorter = _config_without(tmp_path, root, "retention_days = 15\n", "retention_days = 7\n")
    shortened = Retention(index, root, shorter, actor="test")
    assert shortened.run_pass(T0 + DAY + 60 * S + 7 * DAY).count == 1  # 7 days now apply
    assert path not in files_under(root)
    # And it stays shortened when the configuration goes back to 15.
    _, path = add_segment(index, root, "metz-gare-01", "metz", T0 + 2 * DAY, retention_days=15)
    shortened.run_pass(T0 + 2 * DAY + 2 * 60 * S)
    assert retention.run_pass(T0 + 2 * DAY + 60 * S + 7 * DAY).count == 1


def test_segment_days_is_the_shorter_of_stored_and_configured() -> None:
    from csud.store.retention_plan import segment_days, window_days

    assert segment_days(SegmentRef(1, "cam", "metz", 0, 1, window_days=7), POLICIES) == 7
    assert segment_days(SegmentRef(1, "cam", "metz", 0, 1, window_days=20), POLICIES) == 15
    assert segment_days(SegmentRef(1, "cam", "metz", 0, 1), POLICIES) == 15
    assert segment_days(SegmentRef(1, "cam", "gone", 0, 1, window_days=3), POLICIES) == 3
    assert window_days(15, None) == 15 and window_days(15, 7) == 7 and window_days(40, None, 30) == 30
