"""The index's connection and lock, shared by the query groups that make up
:class:`csud.store.index.Index` (segments, :mod:`csud.store.holds`,
:mod:`csud.store.retention_queries`): every query runs on one SQLite connection under one lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from csud.errors import StorageError


class IndexConnection:
    """One SQLite connection, the lock that serialises its use, and two helpers on it."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path

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

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _query(self, sql: str, params: list[object] | dict[str, object]) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise StorageError(f"index query: {e}") from e
