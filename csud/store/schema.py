"""The index's schema: every table, and the migrations that build it, version by version.

What belongs here: the SQL of each schema version and :data:`MIGRATIONS` (``[i]`` takes a database
from ``PRAGMA user_version`` ``i`` to ``i + 1``, in one transaction), plus the small record types a
migration defines (:class:`StoreIdentity`). What does not: queries (:mod:`csud.store.index`,
:mod:`csud.store.operators`), the journal's chain (:mod:`csud.store.journal`, whose table SQL this
module runs). Keeping the migrations here lets the modules that own a table import the index
without the index importing them back (no import cycle).

Versions: 1 segments and fragments; 2 usage, holds, journal, deletion intent; 3
``segments.missing_ns`` (startup recovery); 4 ``store_identity`` (``csud init``); 5
``segments.retention_days`` (the window in force at write time, only ever shortened); 6
``operators`` (live viewing); 7 ``segments.node`` and ``segments.fence`` (cluster).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from csud.store.journal import JOURNAL_SCHEMA

MARKER_FORMAT = 1  # version of the root's identity marker (csud-store.json)

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


_SCHEMA_V2 = """
ALTER TABLE segments ADD COLUMN deleting_ns INTEGER;
ALTER TABLE segments ADD COLUMN deleting_reason TEXT;
CREATE INDEX segments_deleting ON segments (deleting_ns) WHERE deleting_ns IS NOT NULL;

CREATE TABLE usage (
    commune     TEXT    NOT NULL,
    camera      TEXT    NOT NULL,
    segments    INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    PRIMARY KEY (commune, camera)
) WITHOUT ROWID;
INSERT INTO usage (commune, camera, segments, bytes)
    SELECT commune, camera, COUNT(*), SUM(bytes) FROM segments GROUP BY commune, camera;
CREATE TRIGGER segments_usage_insert AFTER INSERT ON segments BEGIN
    INSERT INTO usage (commune, camera, segments, bytes) VALUES (NEW.commune, NEW.camera, 1, NEW.bytes)
    ON CONFLICT (commune, camera) DO UPDATE SET segments = segments + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER segments_usage_delete AFTER DELETE ON segments BEGIN
    UPDATE usage SET segments = segments - 1, bytes = bytes - OLD.bytes
    WHERE commune = OLD.commune AND camera = OLD.camera;
END;

CREATE TABLE holds (
    id              INTEGER PRIMARY KEY,
    from_ns         INTEGER NOT NULL,
    to_ns           INTEGER NOT NULL,
    requisition     TEXT    NOT NULL,
    officer         TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    until_ns        INTEGER,
    created_ns      INTEGER NOT NULL,
    created_by      TEXT    NOT NULL,
    released_ns     INTEGER,
    released_by     TEXT,
    release_reason  TEXT,
    CHECK (to_ns > from_ns)
);
CREATE TABLE hold_cameras (
    hold_id     INTEGER NOT NULL REFERENCES holds (id),
    camera      TEXT    NOT NULL,
    PRIMARY KEY (hold_id, camera)
) WITHOUT ROWID;
CREATE INDEX hold_cameras_camera ON hold_cameras (camera);
"""


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``script`` statement by statement inside the caller's transaction (``executescript``
    would COMMIT). Trigger bodies contain ``;`` and are kept whole."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                conn.execute(buffer)
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:60]!r}")


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    _run_script(conn, _SCHEMA_V2)
    _run_script(conn, JOURNAL_SCHEMA)


_SCHEMA_V3 = """
ALTER TABLE segments ADD COLUMN missing_ns INTEGER;
CREATE INDEX segments_missing ON segments (missing_ns) WHERE missing_ns IS NOT NULL;
"""


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Version 3: ``segments.missing_ns``, set by startup recovery when a row's file is gone
    (docs/storage.md, "Startup"); cleared if the file comes back."""
    _run_script(conn, _SCHEMA_V3)


_SCHEMA_RETENTION_WINDOW = """
ALTER TABLE segments ADD COLUMN retention_days INTEGER;
CREATE INDEX segments_camera_window ON segments (camera, retention_days);
"""


def _migrate_retention_window(conn: sqlite3.Connection) -> None:
    """``segments.retention_days``: the retention window in force when the segment was written,
    only ever shortened (csud.store.retention_plan, issue 12). Existing rows get NULL: the first
    retention pass stores the current configuration's window in them. The index makes the
    per-pass "shorten what is longer" update and the per-camera shortest window cheap."""
    _run_script(conn, _SCHEMA_RETENTION_WINDOW)


STORE_IDENTITY_SCHEMA = """
CREATE TABLE store_identity (
    singleton    INTEGER PRIMARY KEY CHECK (singleton = 1),
    uuid         TEXT    NOT NULL,
    created_ns   INTEGER NOT NULL,
    csud_version TEXT    NOT NULL
);
"""


def migrate_store_identity(conn: sqlite3.Connection) -> None:
    """Schema version 4: the ``store_identity`` table (one row, written by :func:`create_store`
    or by ``csud init`` adopting a store made before identities existed)."""
    conn.execute(STORE_IDENTITY_SCHEMA)


OPERATORS_SCHEMA = """
CREATE TABLE operators (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    communes      TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    generation    INTEGER NOT NULL DEFAULT 1,
    disabled_ns   INTEGER,
    created_ns    INTEGER NOT NULL,
    updated_ns    INTEGER NOT NULL
) WITHOUT ROWID;
"""


def migrate_operators(conn: sqlite3.Connection) -> None:
    """Schema step: the ``operators`` table (live viewing)."""
    conn.execute(OPERATORS_SCHEMA)


@dataclass(frozen=True, slots=True)
class StoreIdentity:
    uuid: str
    created_ns: int
    csud_version: str

    def to_json(self) -> dict[str, Any]:
        created = datetime.fromtimestamp(self.created_ns / 1e9, UTC).isoformat(timespec="seconds")
        return {
            "format": MARKER_FORMAT,
            "uuid": self.uuid,
            "created": created,
            "created_ns": self.created_ns,
            "csud_version": self.csud_version,
        }


_SCHEMA_CLUSTER_FENCE = """
ALTER TABLE segments ADD COLUMN node TEXT;
ALTER TABLE segments ADD COLUMN fence INTEGER;
"""


def _migrate_cluster_fence(conn: sqlite3.Connection) -> None:
    """Cluster (csud.cluster): ``segments.node`` and ``segments.fence``, the node that recorded
    the segment and the etcd revision of its ownership key then (the fencing token: of two rows
    of one camera written by two nodes at once, the higher fence is the rightful owner's).
    Both NULL on a node without ``[cluster]``."""
    _run_script(conn, _SCHEMA_CLUSTER_FENCE)


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migrate_0_to_1,
    _migrate_1_to_2,
    _migrate_2_to_3,
    migrate_store_identity,  # 3 -> 4: the store's UUID (csud/store/identity.py)
    _migrate_retention_window,  # 4 -> 5: the window stored with each segment (issue 12)
    migrate_operators,  # 5 -> 6: live-viewing operators (csud.store.operators)
    _migrate_cluster_fence,  # 6 -> 7: segments.node, segments.fence (csud.cluster)
)
SCHEMA_VERSION = len(MIGRATIONS)
