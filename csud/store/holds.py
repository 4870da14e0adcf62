"""Judicial holds in the index: the ``holds`` and ``hold_cameras`` tables (``csud hold``).

A hold is added and released in one transaction with its journal entry. The rule "a segment is
held" is :data:`HELD_SQL` here and :class:`csud.store.retention_plan.Hold` in pure code: the
retention queries (:mod:`csud.store.retention_queries`) check it again in their own transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from csud.errors import StorageError
from csud.store.connection import IndexConnection
from csud.store.journal import HOLD_ADDED, HOLD_RELEASED, Journal, os_actor
from csud.store.retention_plan import Hold


@dataclass(frozen=True, slots=True)
class HoldRow:
    """A judicial hold as stored (see ``csud hold``); :meth:`policy` is what retention needs."""

    id: int
    cameras: tuple[str, ...]
    from_ns: int
    to_ns: int
    requisition: str
    officer: str
    reason: str
    until_ns: int | None
    created_ns: int
    created_by: str
    released_ns: int | None
    released_by: str | None
    release_reason: str | None

    def policy(self) -> Hold:
        return Hold(
            id=self.id,
            cameras=frozenset(self.cameras),
            from_ns=self.from_ns,
            to_ns=self.to_ns,
            requisition=self.requisition,
            until_ns=self.until_ns,
            released_ns=self.released_ns,
        )


_HOLD_COLUMNS = (
    "id, from_ns, to_ns, requisition, officer, reason, until_ns, created_ns, created_by,"
    " released_ns, released_by, release_reason"
)
# A segment row covered by an active hold at ``:now`` (same rule as csud.store.retention_plan.Hold).
HELD_SQL = (
    "EXISTS (SELECT 1 FROM hold_cameras hc JOIN holds h ON h.id = hc.hold_id"
    " WHERE hc.camera = segments.camera AND h.released_ns IS NULL"
    " AND (h.until_ns IS NULL OR :now < h.until_ns)"
    " AND h.from_ns < segments.end_ns AND segments.start_ns < h.to_ns)"
)


class HoldQueries(IndexConnection):
    """The holds part of :class:`csud.store.index.Index`."""

    def add_hold(
        self,
        cameras: Sequence[str],
        from_ns: int,
        to_ns: int,
        *,
        requisition: str,
        officer: str,
        reason: str,
        until_ns: int | None,
        now_ns: int,
        actor: str | None = None,
    ) -> HoldRow:
        """Create a hold and journal it (one transaction). From its commit on, no retention pass
        can mark the footage it covers (:meth:`mark_deleting` checks in its own transaction)."""
        if to_ns <= from_ns:
            raise ValueError("a hold's end must be after its start")
        if not cameras:
            raise ValueError("a hold names at least one camera")
        actor = actor if actor is not None else os_actor()
        cams = sorted(set(cameras))
        try:
            with self._lock, self._transaction() as conn:
                cur = conn.execute(
                    "INSERT INTO holds (from_ns, to_ns, requisition, officer, reason, until_ns,"
                    " created_ns, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (from_ns, to_ns, requisition, officer, reason, until_ns, now_ns, actor),
                )
                hold_id = cur.lastrowid
                assert hold_id is not None
                conn.executemany(
                    "INSERT INTO hold_cameras (hold_id, camera) VALUES (?, ?)", [(hold_id, c) for c in cams]
                )
                Journal(conn).append(
                    HOLD_ADDED,
                    now_ns=now_ns,
                    actor=actor,
                    camera=",".join(cams),
                    from_ns=from_ns,
                    to_ns=to_ns,
                    requisition=requisition,
                    reason=reason,
                    details={"hold": hold_id, "cameras": cams, "officer": officer, "until_ns": until_ns},
                )
        except sqlite3.Error as e:
            raise StorageError(f"index add hold: {e}") from e
        hold = self.hold(hold_id)
        assert hold is not None
        return hold

    def release_hold(self, hold_id: int, *, reason: str, now_ns: int, actor: str | None = None) -> HoldRow:
        """Release a hold and journal it. Raises ``KeyError`` if unknown, ``ValueError`` if released."""
        actor = actor if actor is not None else os_actor()
        try:
            with self._lock, self._transaction() as conn:
                row = conn.execute("SELECT released_ns FROM holds WHERE id = ?", (hold_id,)).fetchone()
                if row is None:
                    raise KeyError(hold_id)
                if row[0] is not None:
                    raise ValueError(f"hold {hold_id} is already released")
                conn.execute(
                    "UPDATE holds SET released_ns = ?, released_by = ?, release_reason = ? WHERE id = ?",
                    (now_ns, actor, reason, hold_id),
                )
                hold = self._holds(conn, "WHERE id = ?", [hold_id])[0]
                Journal(conn).append(
                    HOLD_RELEASED,
                    now_ns=now_ns,
                    actor=actor,
                    camera=",".join(hold.cameras),
                    from_ns=hold.from_ns,
                    to_ns=hold.to_ns,
                    requisition=hold.requisition,
                    reason=reason,
                    details={"hold": hold_id, "cameras": list(hold.cameras)},
                )
                return hold
        except sqlite3.Error as e:
            raise StorageError(f"index release hold {hold_id}: {e}") from e

    def hold(self, hold_id: int) -> HoldRow | None:
        with self._lock:
            rows = self._holds(self._conn, "WHERE id = ?", [hold_id])
        return rows[0] if rows else None

    def holds(self, include_released: bool = True) -> list[HoldRow]:
        where = "" if include_released else "WHERE released_ns IS NULL"
        try:
            with self._lock:
                return self._holds(self._conn, where, [])
        except sqlite3.Error as e:
            raise StorageError(f"index holds: {e}") from e

    @staticmethod
    def _holds(conn: sqlite3.Connection, where: str, params: list[object]) -> list[HoldRow]:
        rows = conn.execute(f"SELECT {_HOLD_COLUMNS} FROM holds {where} ORDER BY id", params).fetchall()
        out = []
        for row in rows:
            cams = tuple(
                c
                for (c,) in conn.execute(
                    "SELECT camera FROM hold_cameras WHERE hold_id = ? ORDER BY camera", (row[0],)
                )
            )
            out.append(HoldRow(row[0], cams, *row[1:]))
        return out
