"""Retention's queries on the index (docs/storage.md, "Destroying segments"): per-camera usage,
due candidates, the stored windows, and the crash-safe destruction steps 1 and 4 (mark the rows
``deleting``, then remove them with their journal entries). The plan itself is pure
(:mod:`csud.store.retention_plan`); carrying it out on the files is :mod:`csud.store.retention`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from csud.errors import StorageError
from csud.store.connection import IndexConnection
from csud.store.holds import HELD_SQL as _HELD
from csud.store.journal import RECOVERED, Journal
from csud.store.retention_plan import NS_PER_DAY, SegmentRef


@dataclass(frozen=True, slots=True)
class Usage:
    commune: str
    camera: str
    segments: int
    bytes: int


_REF_COLUMNS = "id, camera, commune, start_ns, end_ns, bytes, path, retention_days"


class RetentionQueries(IndexConnection):
    """The retention part of :class:`csud.store.index.Index`."""

    def usage(self) -> list[Usage]:
        """Per (commune, camera): segments and bytes indexed (kept by triggers: no table scan)."""
        rows = self._query(
            "SELECT commune, camera, segments, bytes FROM usage WHERE segments > 0 ORDER BY commune, camera",
            [],
        )
        return [Usage(*row) for row in rows]

    def due_candidates(
        self,
        camera: str,
        commune: str,
        cutoff_ns: int,
        exclude: Sequence[tuple[int, int]] = (),
        limit: int = 1000,
        window: tuple[int, int] | None = None,
    ) -> list[SegmentRef]:
        """Live segments of ``camera`` recorded for ``commune`` ending at or before ``cutoff_ns``,
        oldest first, skipping those overlapping any ``[from, to)`` of ``exclude`` (the active
        holds on this camera: so that held footage never fills the ``limit``). A range scan of
        index ``segments_camera_end``. ``window`` = (now, configured days): a row is then due only
        once its own window (stored, shortened by the configured one) has passed; ``cutoff_ns``
        is the loosest bound (from the shortest window of the camera)."""
        sql, params = self._due_sql("SELECT " + _REF_COLUMNS, camera, commune, cutoff_ns, exclude, window)
        sql += " ORDER BY end_ns, id LIMIT ?"
        return [SegmentRef(*row) for row in self._query(sql, [*params, limit])]

    def count_due(
        self,
        camera: str,
        commune: str,
        cutoff_ns: int,
        exclude: Sequence[tuple[int, int]] = (),
        window: tuple[int, int] | None = None,
    ) -> int:
        sql, params = self._due_sql("SELECT COUNT(*)", camera, commune, cutoff_ns, exclude, window)
        return int(self._query(sql, params)[0][0])

    @staticmethod
    def _due_sql(
        select: str,
        camera: str,
        commune: str,
        cutoff_ns: int,
        exclude: Sequence[tuple[int, int]],
        window: tuple[int, int] | None = None,
    ) -> tuple[str, list[object]]:
        sql = (
            f"{select} FROM segments INDEXED BY segments_camera_end WHERE camera = ? AND end_ns <= ?"
            " AND commune = ? AND deleting_ns IS NULL"
        )
        params: list[object] = [camera, cutoff_ns, commune]
        if window is not None:
            now_ns, days = window
            sql += " AND end_ns <= ? - MIN(COALESCE(retention_days, ?), ?) * ?"
            params += [now_ns, days, days, NS_PER_DAY]
        for from_ns, to_ns in exclude:
            sql += " AND NOT (start_ns < ? AND end_ns > ?)"
            params += [to_ns, from_ns]
        return sql, params

    def shortest_window(self, camera: str) -> int | None:
        """The shortest window stored with ``camera``'s live rows (index ``segments_camera_window``)."""
        rows = self._query(
            "SELECT MIN(retention_days) FROM segments WHERE camera = ? AND retention_days IS NOT NULL",
            [camera],
        )
        return None if rows[0][0] is None else int(rows[0][0])

    def shorten_windows(self, camera: str, commune: str, days: int) -> int:
        """Store ``days`` in the rows of ``camera`` (for ``commune``) whose stored window is longer
        or absent: a shortened window applies to existing footage, a longer one never does.
        Returns the rows changed. A read first (index ``segments_camera_window``): most passes
        change nothing and take no write lock."""
        pending = self._query(
            "SELECT 1 FROM segments WHERE camera = ? AND commune = ?"
            " AND (retention_days IS NULL OR retention_days > ?) LIMIT 1",
            [camera, commune, days],
        )
        if not pending:
            return 0
        try:
            with self._lock, self._transaction() as conn:
                cur = conn.execute(
                    "UPDATE segments SET retention_days = ? WHERE camera = ? AND commune = ?"
                    " AND (retention_days IS NULL OR retention_days > ?)",
                    (days, camera, commune, days),
                )
                return int(cur.rowcount)
        except sqlite3.Error as e:
            raise StorageError(f"index shorten windows of {camera}: {e}") from e

    def oldest_unheld(self, now_ns: int, limit: int) -> list[SegmentRef]:
        """Live segments not covered by a hold active at ``now_ns``, oldest end first, across
        cameras (disk pressure). Walks index ``segments_end``."""
        sql = (
            f"SELECT {_REF_COLUMNS} FROM segments INDEXED BY segments_end WHERE deleting_ns IS NULL"
            f" AND NOT {_HELD} ORDER BY end_ns, id LIMIT :limit"
        )
        return [SegmentRef(*row) for row in self._query(sql, {"now": now_ns, "limit": limit})]

    def mark_deleting(self, ids: Sequence[int], reason: str, now_ns: int) -> list[SegmentRef]:
        """Step 1: record the intent to destroy. Marks the live rows among ``ids`` that no hold
        active at ``now_ns`` covers (checked again here, in the transaction, so that a hold added
        after the plan was made still wins); returns the rows marked."""
        if not ids:
            return []
        sql = (
            "UPDATE segments SET deleting_ns = :now, deleting_reason = :reason"
            " WHERE id IN (SELECT value FROM json_each(:ids)) AND deleting_ns IS NULL"
            f" AND NOT {_HELD} RETURNING {_REF_COLUMNS}"
        )
        try:
            with self._lock, self._transaction() as conn:
                rows = conn.execute(sql, {"now": now_ns, "reason": reason, "ids": json.dumps(list(ids))})
                return sorted((SegmentRef(*row) for row in rows), key=lambda r: (r.end_ns, r.id))
        except sqlite3.Error as e:
            raise StorageError(f"index mark deleting: {e}") from e

    def unmark_deleting(self, ids: Sequence[int]) -> None:
        """Undo step 1 for rows whose file could not be unlinked (they stay live and due)."""
        try:
            with self._lock, self._transaction() as conn:
                conn.execute(
                    "UPDATE segments SET deleting_ns = NULL, deleting_reason = NULL"
                    " WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(list(ids)),),
                )
        except sqlite3.Error as e:
            raise StorageError(f"index unmark deleting: {e}") from e

    def unmark_held(self, now_ns: int, actor: str | None = None) -> list[SegmentRef]:
        """Startup, before finishing interrupted destructions: unmark the rows marked ``deleting``
        that a hold active at ``now_ns`` covers, and journal one ``recovered`` entry per camera
        (``action: held_unmarked``), in one transaction. Returns the rows unmarked."""
        sql = (
            "UPDATE segments SET deleting_ns = NULL, deleting_reason = NULL"
            f" WHERE deleting_ns IS NOT NULL AND {_HELD} RETURNING {_REF_COLUMNS}"
        )
        try:
            with self._lock, self._transaction() as conn:
                rows = sorted(
                    (SegmentRef(*row) for row in conn.execute(sql, {"now": now_ns}).fetchall()),
                    key=lambda r: (r.commune, r.camera, r.end_ns, r.id),
                )
                by_camera: dict[tuple[str, str], list[SegmentRef]] = {}
                for r in rows:
                    by_camera.setdefault((r.commune, r.camera), []).append(r)
                journal = Journal(conn)
                for (commune, camera), segs in by_camera.items():
                    journal.append(
                        RECOVERED,
                        now_ns=now_ns,
                        actor=actor,
                        camera=camera,
                        commune=commune,
                        from_ns=min(s.start_ns for s in segs),
                        to_ns=max(s.end_ns for s in segs),
                        reason="destruction cancelled at startup: an active hold covers the footage",
                        details={
                            "action": "held_unmarked",
                            "count": len(segs),
                            "paths": [s.path for s in segs[:100]],
                        },
                    )
                return rows
        except sqlite3.Error as e:
            raise StorageError(f"index unmark held: {e}") from e

    def deleting(self) -> list[tuple[SegmentRef, str]]:
        """Rows marked for destruction and not yet removed (an interrupted deletion), with reason."""
        rows = self._query(
            f"SELECT {_REF_COLUMNS}, deleting_reason FROM segments WHERE deleting_ns IS NOT NULL"
            " ORDER BY end_ns, id",
            [],
        )
        return [(SegmentRef(*row[:-1]), str(row[-1] or "")) for row in rows]

    def remove_deleted(self, ids: Sequence[int], entries: Sequence[dict[str, Any]]) -> int:
        """Step 4: drop the marked rows among ``ids`` (fragments cascade) and append the journal
        ``entries`` (keyword arguments of :meth:`Journal.append`) in one transaction."""
        try:
            with self._lock, self._transaction() as conn:
                removed = conn.execute(
                    "DELETE FROM segments WHERE id IN (SELECT value FROM json_each(?))"
                    " AND deleting_ns IS NOT NULL",
                    (json.dumps(list(ids)),),
                ).rowcount
                journal = Journal(conn)
                for entry in entries:
                    journal.append(**entry)
                return int(removed)
        except sqlite3.Error as e:
            raise StorageError(f"index remove deleted: {e}") from e
