"""The segment index: SQLite (WAL), the single source of truth for what is recorded.

Synchronous API on purpose: the daemon owns one ``Index`` and calls it from one dedicated thread
(the connection is opened with ``check_same_thread=False`` so that thread need not be the one
that opened it; a lock still serialises calls, so a stray second caller is safe, only slower).

A row is inserted only after its file is durable (docs/storage.md, "Creating a segment", step 5):
a row always names a complete, renamed, synced file. Times are UTC nanoseconds; paths are
relative to the storage root.

Schema versions live in ``PRAGMA user_version``; :data:`MIGRATIONS` ``[i]`` takes a database from
version ``i`` to ``i + 1`` in one transaction. Later tables (holds, journal) arrive as migrations.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csud.aio.writer import FragmentInfo, SegmentInfo
from csud.errors import StorageError

_SCHEMA_V1 = """
CREATE TABLE segments (
    id          INTEGER PRIMARY KEY,
    camera      TEXT    NOT NULL,
    commune     TEXT    NOT NULL,
    start_ns    INTEGER NOT NULL,
    end_ns      INTEGER NOT NULL,
    path        TEXT    NOT NULL UNIQUE,
    bytes       INTEGER NOT NULL,
    frames      INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    created_ns  INTEGER NOT NULL,
    CHECK (end_ns >= start_ns)
);
CREATE INDEX segments_camera_start ON segments (camera, start_ns);
CREATE INDEX segments_camera_end ON segments (camera, end_ns);
CREATE INDEX segments_end ON segments (end_ns);

CREATE TABLE fragments (
    segment_id  INTEGER NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    start_ns    INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    frames      INTEGER NOT NULL
);
CREATE INDEX fragments_segment_start ON fragments (segment_id, start_ns);
"""


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            conn.execute(statement)


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_migrate_0_to_1,)
SCHEMA_VERSION = len(MIGRATIONS)


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


class Index:
    """The SQLite index. Create with :meth:`open`; every failure raises ``StorageError``."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: Path | str, readonly: bool = False) -> Index:
        """Open (creating if needed) and migrate the index at ``path``.

        ``readonly`` (CLI queries): never creates, migrates or writes; the database must exist
        and be at this code's schema version.
        """
        path = Path(path)
        try:
            # isolation_level=None: no implicit transactions; we BEGIN/COMMIT explicitly.
            if readonly:
                uri = f"{path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            else:
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
                conn.execute("PRAGMA synchronous=NORMAL")
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

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def add_segment(self, camera: str, commune: str, info: SegmentInfo, created_ns: int) -> int:
        """Insert a durable segment and its fragments in one transaction; return its id."""
        try:
            with self._lock, self._transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO segments (camera, commune, start_ns, end_ns, path, bytes, frames,"
                    " sha256, created_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    ),
                )
                segment_id = cur.lastrowid
                assert segment_id is not None
                conn.executemany(
                    "INSERT INTO fragments (segment_id, start_ns, byte_offset, size, frames)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(segment_id, f.start_ns, f.offset, f.size, f.frames) for f in info.fragments],
                )
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
        sql = f"SELECT {_SEGMENT_COLUMNS} FROM segments WHERE {' AND '.join(clauses)} ORDER BY start_ns, id"
        return [SegmentRow(*row) for row in self._query(sql, params)]

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

    def cameras(self) -> list[str]:
        return [row[0] for row in self._query("SELECT DISTINCT camera FROM segments ORDER BY camera", [])]

    def stats(self) -> IndexStats:
        row = self._query(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0), COALESCE(SUM(frames), 0),"
            " COUNT(DISTINCT camera) FROM segments",
            [],
        )[0]
        return IndexStats(*(int(v) for v in row))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _query(self, sql: str, params: list[object]) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StorageError(f"index query: {e}") from e
