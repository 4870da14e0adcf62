#!/usr/bin/env python3
"""Benchmark: one retention pass on an index of 14 million segment rows.

330 cameras x 30 days x 1,440 one-minute segments (the Metz CSU at the end of 2023), in 11
communes with a 30-day window. The rows are bulk-inserted (executemany, big transactions,
``synchronous=OFF`` while loading only); only the segments that the measured passes destroy
get a file (and 30 fragment rows each, so that the ON DELETE CASCADE is real). Then each pass
advances the clock by one minute, so it destroys exactly one segment per camera (330 rows,
330 files, 330 journal entries) through :meth:`csud.store.retention.Retention.run_pass`, the code
the daemon runs. Also timed: the due query alone (a dry run) and a recorder's segment insert at
this size. The database lives in a temporary directory (``--dir``) deleted at the end.

    .venv/bin/python scripts/bench_retention.py                 # the full 14 M rows
    .venv/bin/python scripts/bench_retention.py --days 3        # 1.4 M rows, quicker

Backlog case (``--backlog-days N``): cameras x N days of one-minute segments, each with a file
and 30 fragments, all due at once (a restart after hours down, or a window shortened on
reload), destroyed by one ``run_pass``, while another connection inserts a recorder's segment
every 20 ms. Reported: the longest write transaction of the retention connection (the longest
the database lock was held), the total pass time, and the slowest concurrent insert.

    .venv/bin/python scripts/bench_retention.py --backlog-days 1   # 330 x 1440 = 475,200 rows
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from csud.config import Settings, parse_settings
from csud.recording.writer import FragmentInfo, SegmentInfo
from csud.service.daemon import INDEX_FILENAME
from csud.store.index import Index
from csud.store.layout import segment_relpath
from csud.store.retention import DESTROY_BATCH, Retention

S = 1_000_000_000
DAY = 86_400 * S
T_BEGIN = 1_790_000_000 * S - (1_790_000_000 * S) % DAY  # a UTC midnight in 2026
CAMERAS_PER_COMMUNE = 30
FRAGMENTS_PER_SEGMENT = 30


def settings_for(root: Path, cameras: int, days: int) -> Settings:
    communes = (cameras + CAMERAS_PER_COMMUNE - 1) // CAMERAS_PER_COMMUNE
    return parse_settings(
        {
            "storage": {"root": str(root), "min_free_percent": 0},
            "communes": [
                {"id": f"commune{k:02d}", "name": f"C{k}", "service": "storage", "retention_days": days}
                for k in range(communes)
            ],
            "cameras": [
                {"id": cam_id(c), "commune": commune_of(c), "url": f"rtsp://10.0.{c // 250}.{c % 250}/s"}
                for c in range(cameras)
            ],
        }
    )


def cam_id(c: int) -> str:
    return f"cam{c:04d}"


def commune_of(c: int) -> str:
    return f"commune{c // CAMERAS_PER_COMMUNE:02d}"


def phase_ns(c: int, cameras: int) -> int:
    return (60 * S * c) // cameras  # staggered rotation, like the recorder


def build(index: Index, root: Path, cameras: int, days: int, with_files: int) -> int:
    """Insert cameras x days x 1440 rows; the first ``with_files`` minutes of each camera get a
    file and fragments. Returns the row count."""
    conn: sqlite3.Connection = index._conn  # bulk load: bypass the one-row-per-transaction API
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-4000000")  # 4 GB while loading: random index inserts
    per_camera = days * 1440
    sql = (
        "INSERT INTO segments (camera, commune, start_ns, end_ns, path, bytes, frames, sha256, created_ns)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    rows = 0
    sha = "0" * 64
    for minute0 in range(0, per_camera, 1440):  # one transaction per day of all cameras
        batch = []
        for c in range(cameras):
            cam, commune, phase = cam_id(c), commune_of(c), phase_ns(c, cameras)
            for i in range(minute0, min(minute0 + 1440, per_camera)):
                start = T_BEGIN + i * 60 * S + phase
                batch.append(
                    (cam, commune, start, start + 60 * S, segment_relpath(commune, cam, start), 30_000_000,
                     1500, sha, start + 61 * S)
                )  # fmt: skip
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        rows += len(batch)
        print(f"\r  {rows:,} rows", end="", flush=True)
    print()
    conn.execute("PRAGMA synchronous=FULL")  # what Index.open sets
    conn.execute("PRAGMA cache_size=-2000")  # back to SQLite's default for the measured passes
    # Files and fragments for the segments the passes will destroy.
    conn.execute("BEGIN")
    for c in range(cameras):
        for seg in index.segments(cam_id(c), None, T_BEGIN + with_files * 60 * S):
            path = root / seg.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 4096)
            conn.executemany(
                "INSERT INTO fragments (segment_id, start_ns, byte_offset, size, frames)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (seg.id, seg.start_ns + k * 2 * S, k * 1000, 1000, 50)
                    for k in range(FRAGMENTS_PER_SEGMENT)
                ],
            )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return rows


def backlog(args: argparse.Namespace, work: Path) -> None:
    """A backlog of ``args.backlog_days`` days of every camera, due at once (see the module doc)."""
    root = work / "store"
    root.mkdir()
    settings = settings_for(root, args.cameras, 1)  # 1-day window: the whole backlog is due
    index = Index.create(root / INDEX_FILENAME)
    t0 = time.perf_counter()
    rows = build(index, root, args.cameras, args.backlog_days, with_files=args.backlog_days * 1440)
    build_s = time.perf_counter() - t0
    retention = Retention(index, root, settings, actor="bench")
    holds: list[float] = []
    real_transaction = index._transaction

    @contextmanager
    def timed() -> Iterator[sqlite3.Connection]:
        with real_transaction() as conn:  # BEGIN IMMEDIATE has the lock when this yields
            t = time.perf_counter()
            yield conn
        holds.append(time.perf_counter() - t)  # after COMMIT

    index._transaction = timed  # type: ignore[method-assign]

    stop = threading.Event()
    waits: list[float] = []
    failures: list[str] = []

    def recorder() -> None:  # a recorder's index thread: its own connection, 1 row + 30 fragments
        live = Index.create(root / INDEX_FILENAME)
        start = T_BEGIN + (args.backlog_days + 2) * DAY
        while not stop.is_set():
            start += 60 * S
            info = SegmentInfo(
                segment_relpath("commune00", "live", start), start, start + 60 * S, 1, 1, "0" * 64,
                tuple(FragmentInfo(start + k * 2 * S, k, 1, 1) for k in range(FRAGMENTS_PER_SEGMENT)),
            )  # fmt: skip
            t = time.perf_counter()
            try:
                live.add_segment("live", "commune00", info, start)
            except Exception as e:
                failures.append(str(e))
            waits.append(time.perf_counter() - t)
            stop.wait(0.02)
        live.close()

    thread = threading.Thread(target=recorder)
    thread.start()
    now = T_BEGIN + (args.backlog_days + 1) * DAY + 60 * S
    t = time.perf_counter()
    report = retention.run_pass(now)
    pass_s = time.perf_counter() - t
    stop.set()
    thread.join()
    journal_ok = index.verify_journal()
    index.close()
    print(f"host: {platform.node()} {platform.machine()}, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}")  # fmt: skip
    print(f"backlog: {rows:,} rows ({args.cameras} cameras x {args.backlog_days} days x 1440), each with a "
          f"file and {FRAGMENTS_PER_SEGMENT} fragments; built in {build_s:.0f} s")  # fmt: skip
    print(f"one pass destroyed {report.count:,} segments in {pass_s:.1f} s, "
          f"{len(holds)} write transactions (batches of {DESTROY_BATCH})")  # fmt: skip
    print(f"write lock held per transaction: median {statistics.median(holds) * 1e3:.1f} ms, "
          f"max {max(holds) * 1e3:.1f} ms")  # fmt: skip
    print(f"concurrent inserts: {len(waits)}, median {statistics.median(waits) * 1e3:.1f} ms, "
          f"max {max(waits) * 1e3:.1f} ms, over 1 s: {sum(w > 1 for w in waits)}, "
          f"failed: {len(failures)}")  # fmt: skip
    print(f"overdue after the pass: {sum(report.overdue.values())}; journal: {journal_ok.entries} entries, "
          f"verify ok={journal_ok.ok}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cameras", type=int, default=330)
    ap.add_argument("--days", type=int, default=30, help="days of footage, also the retention window")
    ap.add_argument("--passes", type=int, default=7, help="measured passes (after one warm-up)")
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: a new dir in /tmp)")
    ap.add_argument("--backlog-days", type=int, default=0, help="run the backlog case instead (see above)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="csud-bench-retention-", dir=args.dir))
    if args.backlog_days:
        try:
            backlog(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    root = work / "store"
    root.mkdir()
    try:
        settings = settings_for(root, args.cameras, args.days)
        index = Index.create(root / INDEX_FILENAME)
        t0 = time.perf_counter()
        rows = build(index, root, args.cameras, args.days, with_files=args.passes + 3)
        build_s = time.perf_counter() - t0
        page_count, page_size = (
            index._conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_count", "page_size")
        )
        db_bytes = int(page_count) * int(page_size)
        retention = Retention(index, root, settings, actor="bench")

        # Pass k at now_k: the segments ending at or before now_k - window are due. The first
        # (warm-up) pass takes what is due at minute 1; each later pass one more minute.
        def now_at(minute: int) -> int:
            return T_BEGIN + args.days * DAY + minute * 60 * S + 60 * S - 1

        warm = retention.run_pass(now_at(0))
        dry, real, per_pass = [], [], []
        for k in range(1, args.passes + 1):
            t = time.perf_counter()
            dry_report = retention.run_pass(now_at(k), dry_run=True)
            dry.append(time.perf_counter() - t)
            t = time.perf_counter()
            report = retention.run_pass(now_at(k))
            real.append(time.perf_counter() - t)
            per_pass.append(report.count)
            assert dry_report.count == report.count
        # A recorder's insert at this size (one row + 30 fragments, one transaction).
        inserts = []
        for c in range(min(args.cameras, 100)):
            start = T_BEGIN + args.days * DAY + 3600 * S + c * S
            info = SegmentInfo(
                segment_relpath(commune_of(c), cam_id(c), start), start, start + 60 * S, 1, 1, "0" * 64,
                tuple(FragmentInfo(start + k * 2 * S, k, 1, 1) for k in range(FRAGMENTS_PER_SEGMENT)),
            )  # fmt: skip
            t = time.perf_counter()
            index.add_segment(cam_id(c), commune_of(c), info, start + 61 * S)
            inserts.append(time.perf_counter() - t)
        journal_ok = index.verify_journal()
        index.close()

        print(f"host: {platform.node()} {platform.machine()}, Python {platform.python_version()}, "
              f"SQLite {sqlite3.sqlite_version}")  # fmt: skip
        print(f"rows: {rows:,} ({args.cameras} cameras x {args.days} days x 1440); built in {build_s:.0f} s; "
              f"index file {db_bytes / 1e9:.2f} GB")  # fmt: skip
        print(f"warm-up pass: {warm.count} segments destroyed")
        print(f"segments destroyed per measured pass: {sorted(set(per_pass))}")
        print(f"due query only (dry run, all cameras): median {statistics.median(dry) * 1e3:.1f} ms, "
              f"max {max(dry) * 1e3:.1f} ms")  # fmt: skip
        print(f"retention pass (query + mark + unlink + fsync dirs + delete rows/fragments + journal): "
              f"median {statistics.median(real) * 1e3:.1f} ms, min {min(real) * 1e3:.1f} ms, "
              f"max {max(real) * 1e3:.1f} ms over {len(real)} passes")  # fmt: skip
        print(f"recorder insert (1 row + {FRAGMENTS_PER_SEGMENT} fragments): median "
              f"{statistics.median(inserts) * 1e3:.2f} ms, max {max(inserts) * 1e3:.2f} ms")  # fmt: skip
        print(f"journal: {journal_ok.entries} entries, verify ok={journal_ok.ok}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
