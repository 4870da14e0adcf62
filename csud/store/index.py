"""The segment index: SQLite (WAL), the single source of truth for what is recorded.

Synchronous API on purpose: the daemon owns one ``Index`` and calls it from one dedicated thread
(the connection is opened with ``check_same_thread=False`` so that thread need not be the one
that opened it; a lock still serialises calls, so a stray second caller is safe, only slower).

A row is inserted only after its file is durable (docs/storage.md, "Creating a segment", step 5):
a row always names a complete, renamed, synced file. Times are UTC nanoseconds; paths are
relative to the storage root.

Schema versions live in ``PRAGMA user_version``; the tables and their migrations are in
:mod:`csud.store.schema` (:data:`~csud.store.schema.MIGRATIONS` ``[i]`` takes a database from
version ``i`` to ``i + 1`` in one transaction). Version 2 adds judicial holds, the journal
(:mod:`csud.store.journal`), the deletion intent (``segments.deleting_ns``: docs/storage.md,
"Destroying segments") and a per-camera usage table kept by triggers, so that retention never
scans the 14-million-row segments table to learn which cameras exist or how much they hold.
Version 3 adds ``segments.missing_ns``: startup recovery marks a row whose file is gone
(:mod:`csud.store.recovery`). Version 4 adds ``store_identity``, the UUID that ``csud init``
also writes in the root's marker (:mod:`csud.store.identity`). Version 5
(:func:`_migrate_retention_window`) adds
``segments.retention_days``, the retention window in force when the segment was written, only
ever shortened (:mod:`csud.store.retention_plan`).

Only :meth:`Index.create` (``csud init``, tests) creates a database file; :meth:`Index.open`
refuses a missing one, so that an unmounted disk never gets a fresh index.

Rows marked ``deleting`` are on their way out: :meth:`Index.segments` no longer returns them.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csud.errors import StorageError
from csud.store.durable import FOOTAGE_FILE_MODE
from csud.store.holds import HoldQueries
from csud.store.journal import Journal, JournalCheck, JournalEntry
from csud.store.records import FragmentInfo, SegmentInfo
from csud.store.retention_queries import RetentionQueries
from csud.store.schema import MIGRATIONS, SCHEMA_VERSION, StoreIdentity


@dataclass(frozen=True, slots=True)
class SegmentRow:
    id: int
    camera: str
    commune: str
    start_ns: int
    end_ns: int
    path: str
    bytes: int
    frames: int
    sha256: str
    created_ns: int


@dataclass(frozen=True, slots=True)
class IndexStats:
    segments: int
    bytes: int
    frames: int
    cameras: int


_SEGMENT_COLUMNS = "id, camera, commune, start_ns, end_ns, path, bytes, frames, sha256, created_ns"


def _prefix_end(prefix: str) -> str:
    """The smallest string above every string that starts with ``prefix`` (which ends in ``/``)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _create_private(path: Path) -> None:
    """Create a new index file 0640 whatever the umask (SQLite gives its -wal and -shm files the
    database file's mode): the index names people's footage. An existing file is left as is."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FOOTAGE_FILE_MODE))
    except FileExistsError:
        pass
    except OSError as e:
        raise StorageError(f"open index {path}: {e.strerror or e}") from e


class Index(HoldQueries, RetentionQueries):
    """The SQLite index. Create with :meth:`open`; every failure raises ``StorageError``.

    Holds are :class:`~csud.store.holds.HoldQueries`, retention's queries
    :class:`~csud.store.retention_queries.RetentionQueries`; both share this connection and lock
    (:class:`~csud.store.connection.IndexConnection`)."""

    @classmethod
    def create(cls, path: Path | str) -> Index:
        """Open the index at ``path``, creating it if missing (``csud init`` and tests only)."""
        return cls.open(path, create=True)

    @classmethod
    def open(cls, path: Path | str, readonly: bool = False, create: bool = False) -> Index:
        """Open and migrate the existing index at ``path`` (``create``: create it if missing).

        ``readonly`` (CLI queries): never creates, migrates or writes; the database must exist
        and be at this code's schema version.
        """
        path = Path(path)
        try:
            # isolation_level=None: no implicit transactions; we BEGIN/COMMIT explicitly.
            if readonly or not create:
                mode = "ro" if readonly else "rw"  # rw: never creates the file
                uri = f"{path.resolve().as_uri()}?mode={mode}"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            else:
                _create_private(path)
                conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as e:
            raise StorageError(f"open index {path}: {e}") from e
        index = cls(conn, path)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            if readonly:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if version != SCHEMA_VERSION:
                    raise StorageError(
                        f"index {path} has schema version {version}, this csud reads {SCHEMA_VERSION}"
                    )
            else:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"open index {path}: journal_mode is {mode}, WAL required")
                # FULL, not NORMAL: in WAL mode NORMAL lets a power loss roll back the last
                # commits, and a hold reported as added, or a journal entry, must survive it
                # (docs/storage.md, "Index"). One fsync of the WAL per commit: a few per second.
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                index._migrate()
        except sqlite3.Error as e:
            conn.close()
            raise StorageError(f"open index {path}: {e}") from e
        except BaseException:
            conn.close()
            raise
        return index

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"index {self.path} has schema version {version}, newer than this csud ({SCHEMA_VERSION})"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction() as conn:
                MIGRATIONS[target - 1](conn)
                conn.execute(f"PRAGMA user_version={target}")  # in the same transaction

    def add_segment(
        self,
        camera: str,
        commune: str,
        info: SegmentInfo,
        created_ns: int,
        journal: Mapping[str, Any] | None = None,
        retention_days: int | None = None,
    ) -> int:
        """Insert a durable segment and its fragments in one transaction; return its id.

        ``journal``: keyword arguments of :meth:`Journal.append`, appended in the same
        transaction (startup recovery journals each segment it publishes with its row).
        ``retention_days``: the window in force for this camera now (the recorder passes it;
        ``None``: the next retention pass stores the configuration's)."""
        try:
            with self._lock, self._transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO segments (camera, commune, start_ns, end_ns, path, bytes, frames,"
                    " sha256, created_ns, retention_days) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        camera,
                        commune,
                        info.start_ns,
                        info.end_ns,
                        info.relpath,
                        info.bytes,
                        info.frames,
                        info.sha256,
                        created_ns,
                        retention_days,
                    ),
                )
                segment_id = cur.lastrowid
                assert segment_id is not None
                conn.executemany(
                    "INSERT INTO fragments (segment_id, start_ns, byte_offset, size, frames)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(segment_id, f.start_ns, f.offset, f.size, f.frames) for f in info.fragments],
                )
                if journal is not None:
                    Journal(conn).append(**journal)
                return segment_id
        except sqlite3.Error as e:
            raise StorageError(f"index segment {info.relpath}: {e}") from e

    def segments(self, camera: str, from_ns: int | None = None, to_ns: int | None = None) -> list[SegmentRow]:
        """Segments of ``camera`` overlapping ``[from_ns, to_ns)`` (open ends when ``None``), by start."""
        clauses = ["camera = ?"]
        params: list[object] = [camera]
        if to_ns is not None:
            clauses.append("start_ns < ?")
            params.append(to_ns)
        if from_ns is not None:
            clauses.append("end_ns > ?")
            params.append(from_ns)
        clauses.append("deleting_ns IS NULL")
        sql = f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE {' AND '.join(clauses)} ORDER BY start_ns, id"
        return [SegmentRow(*row) for row in self._query(sql, params)]

    def set_segment_fence(self, segment_id: int, node: str, fence: int) -> None:
        """Stamp a segment with the node that wrote it and its fencing token (csud.cluster)."""
        try:
            with self._lock, self._transaction() as conn:
                conn.execute(
                    "UPDATE segments SET node = ?, fence = ? WHERE id = ?", (node, fence, segment_id)
                )
        except sqlite3.Error as e:
            raise StorageError(f"index fence of segment {segment_id}: {e}") from e

    def segment_fences(self, segment_ids: Sequence[int]) -> dict[int, tuple[str | None, int | None]]:
        """``id -> (node, fence)`` for these segments (csud.cluster)."""
        out: dict[int, tuple[str | None, int | None]] = {}
        ids = list(segment_ids)
        for start in range(0, len(ids), 500):
            chunk: list[object] = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for sid, node, fence in self._query(
                f"SELECT id, node, fence FROM segments WHERE id IN ({marks})", chunk
            ):
                out[int(sid)] = (node, fence)
        return out

    def segment(self, segment_id: int) -> SegmentRow | None:
        rows = self._query(f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE id = ?", [segment_id])
        return SegmentRow(*rows[0]) if rows else None

    def fragments(self, segment_id: int) -> list[FragmentInfo]:
        """The fragments of a segment, by start (for extraction: time -> byte offset)."""
        rows = self._query(
            "SELECT start_ns, byte_offset, size, frames FROM fragments"
            " WHERE segment_id = ? ORDER BY start_ns",
            [segment_id],
        )
        return [FragmentInfo(*row) for row in rows]

    def delete_segment(self, segment_id: int) -> bool:
        """Drop a segment's row (its fragments cascade). The file is the caller's business."""
        try:
            with self._lock, self._transaction() as conn:
                return conn.execute("DELETE FROM segments WHERE id = ?", (segment_id,)).rowcount > 0
        except sqlite3.Error as e:
            raise StorageError(f"index delete segment {segment_id}: {e}") from e

    # -- startup recovery and ``csud check`` (docs/storage.md, "Startup") ---------------------

    def camera_files(self, commune: str, camera: str) -> list[tuple[int, str, int, str, int | None]]:
        """``(id, path, bytes, sha256, missing_ns)`` of the live rows of one camera directory
        (rows marked ``deleting`` are left out: their file may rightly be gone)."""
        rows = self._query(
            "SELECT id, path, bytes, sha256, missing_ns FROM segments INDEXED BY segments_camera_start"
            " WHERE camera = ? AND commune = ? AND deleting_ns IS NULL",
            [camera, commune],
        )
        return [(int(r[0]), str(r[1]), int(r[2]), str(r[3]), r[4]) for r in rows]

    def day_files(self, prefix: str) -> list[tuple[int, str, int, str, int | None]]:
        """Like :meth:`camera_files`, for the rows under one date directory ``prefix``
        (``commune/camera/YYYY/MM/DD/``): a range scan of the unique index on ``path``."""
        rows = self._query(
            "SELECT id, path, bytes, sha256, missing_ns FROM segments"
            " WHERE path >= ? AND path < ? AND deleting_ns IS NULL",
            [prefix, _prefix_end(prefix)],
        )
        return [(int(r[0]), str(r[1]), int(r[2]), str(r[3]), r[4]) for r in rows]

    def camera_days(self, commune: str, camera: str) -> list[str]:
        """``YYYY/MM/DD`` of the date directories that live rows of one camera name."""
        prefix = f"{commune}/{camera}/"
        rows = self._query(
            "SELECT DISTINCT substr(path, ?, 10) FROM segments WHERE path >= ? AND path < ?"
            " AND deleting_ns IS NULL",
            [len(prefix) + 1, prefix, _prefix_end(prefix)],
        )
        return sorted(str(r[0]) for r in rows)

    def camera_dirs(self) -> list[tuple[str, str]]:
        """``(commune, camera)`` pairs that have rows (from the usage table: no scan)."""
        return [(u.commune, u.camera) for u in self.usage()]

    def has_path(self, path: str) -> bool:
        return bool(self._query("SELECT 1 FROM segments WHERE path = ?", [path]))

    def set_missing(
        self, ids: Sequence[int], now_ns: int | None, entries: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        """Mark rows whose file is gone (``now_ns``), or clear the mark (``None``), and append
        the journal ``entries`` in the same transaction."""
        try:
            with self._lock, self._transaction() as conn:
                # Never mark a row that retention has meanwhile marked for destruction: its file
                # is rightly gone (the background check runs beside retention passes).
                conn.execute(
                    "UPDATE segments SET missing_ns = ? WHERE id IN (SELECT value FROM json_each(?))"
                    " AND (? IS NULL OR deleting_ns IS NULL)",
                    (now_ns, json.dumps(list(ids)), now_ns),
                )
                journal = Journal(conn)
                for entry in entries:
                    journal.append(**entry)
        except sqlite3.Error as e:
            raise StorageError(f"index set missing: {e}") from e

    def missing(self) -> list[SegmentRow]:
        """Rows marked missing (their file was gone at a startup), by camera and start."""
        rows = self._query(
            f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE missing_ns IS NOT NULL ORDER BY camera, start_ns",
            [],
        )
        return [SegmentRow(*row) for row in rows]

    # -- journal ----------------------------------------------------------------------------

    def append_journal(self, kind: str, **fields: Any) -> JournalEntry:
        """:meth:`Journal.append` on this index's connection, under its lock."""
        with self._lock:
            return Journal(self._conn).append(kind, **fields)

    def journal_entries(self, since_ns: int | None = None, kind: str | None = None) -> list[JournalEntry]:
        with self._lock:
            return Journal(self._conn).entries(since_ns, kind=kind)

    def verify_journal(self) -> JournalCheck:
        with self._lock:
            return Journal(self._conn).verify()

    def journal_counts(self, kind: str) -> dict[tuple[str, str], int]:
        """Entries of ``kind`` per (camera, commune); entries without a camera are left out."""
        rows = self._query(
            "SELECT camera, commune, COUNT(*) FROM journal WHERE kind = ? AND camera IS NOT NULL"
            " GROUP BY camera, commune",
            [kind],
        )
        return {(str(camera), str(commune or "")): int(n) for camera, commune, n in rows}

    def check_writable(self) -> None:
        """Take the write lock and update one row in place, then roll back; ``StorageError`` if not.

        Cheap (nothing reaches the disk) and proves the database accepts a writer now: not
        opened or mounted read-only, not locked by another process beyond ``busy_timeout``.
        """
        try:
            with self._lock:
                conn = self._conn
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("UPDATE journal_head SET entries = entries WHERE singleton = 1")
                finally:
                    conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            raise StorageError(f"index not writable: {e}") from e

    def store_identity(self) -> StoreIdentity | None:
        rows = self._query("SELECT uuid, created_ns, csud_version FROM store_identity", [])
        return StoreIdentity(str(rows[0][0]), int(rows[0][1]), str(rows[0][2])) if rows else None

    def set_store_identity(self, identity: StoreIdentity) -> StoreIdentity:
        """Record ``identity`` unless the index has one already; return the one it holds."""
        try:
            with self._lock, self._transaction() as conn:
                conn.execute(
                    "INSERT INTO store_identity (singleton, uuid, created_ns, csud_version)"
                    " VALUES (1, ?, ?, ?) ON CONFLICT (singleton) DO NOTHING",
                    (identity.uuid, identity.created_ns, identity.csud_version),
                )
        except sqlite3.Error as e:
            raise StorageError(f"index set store identity: {e}") from e
        held = self.store_identity()
        assert held is not None
        return held

    def cameras(self) -> list[str]:
        return [row[0] for row in self._query("SELECT DISTINCT camera FROM segments ORDER BY camera", [])]

    def stats(self) -> IndexStats:
        row = self._query(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(frames), 0),"
            " COUNT(DISTINCT camera) FROM segments",
            [],
        )[0]
        return IndexStats(*(int(v) for v in row))
