"""The journal: an append-only, hash-chained register in the index database (CSI art. L252-5).

Every destruction, hold, extraction, recovery, configuration load and daemon start/stop is one
row of table ``journal``. Each row stores ``prev_hash`` (the previous row's ``hash``, or
:data:`GENESIS_HASH` for the first) and ``hash`` = SHA-256 of the canonical encoding
(:func:`canonical_bytes`: JSON, sorted keys, no spaces, UTF-8) of its id, prev_hash, kind, time,
actor, camera, commune, interval, requisition, reason and details.

Table ``journal_head`` (one row) holds the id, hash and count of the last entry, updated in the
same transaction as each append. :meth:`Journal.verify` walks the chain and names the first entry
that was altered (its hash no longer matches its content), removed (a gap in the ids, or a
``prev_hash`` that is not its predecessor's hash), reordered, or removed from the end (the head
names an entry that is gone).

Entry times are real time, read by the journal itself: :meth:`Journal.append` reads the clock
(:data:`wall_clock`) inside the write transaction, after the database lock is taken, so that
entries are dated in the order they are chained, whatever time the caller computed with (a
``--dry-run --now`` pretends; nothing it does is journaled, and the journal would not take its
date anyway). The caller's ``now_ns`` (the time its decision was made with) never becomes the
entry's date. :meth:`Journal.verify` also checks that the
dates never go backwards and names the first entry dated before its predecessor. A system clock
that steps back (an NTP correction) does not make the register look tampered with: an entry is
never dated before its predecessor; it takes its predecessor's date and records
``clock_behind_ns`` in its details.

What this does not prove, honestly: someone who can write the database file can rewrite the
whole chain *and* the head consistently. Detecting that needs a copy of the head outside the
file: the daemon logs the head (id and hash) at every start and stop, so the system journal holds
anchors to compare with (``csud journal --verify`` prints the current head).

The schema is created by the index migrations (:mod:`csud.store.index`); this class only reads and
appends. It is not thread-safe: use it from the thread that owns the connection (``Index``
serialises it with its lock). ``append`` joins the caller's transaction if one is open (so a
destruction's rows and its entry commit together), else runs its own ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from csud.errors import StorageError

GENESIS_HASH = "0" * 64

# Kinds (a contract: the registre and auditors read them).
SEGMENTS_DESTROYED = "segments_destroyed"
HOLD_ADDED = "hold_added"
HOLD_RELEASED = "hold_released"
EXTRACTION = "extraction"
RECOVERED = "recovered"
INTEGRITY_FAILURE = "integrity_failure"
CONFIG_LOADED = "config_loaded"
DAEMON_STARTED = "daemon_started"
DAEMON_STOPPED = "daemon_stopped"
# Live viewing (CSI R252-12: named operators, consultations traced); csud.live and csud operator.
LIVE_VIEW_STARTED = "live_view_started"
LIVE_VIEW_ENDED = "live_view_ended"
LIVE_VIEW_REFUSED = "live_view_refused"
OPERATOR_ADDED = "operator_added"
OPERATOR_PASSWORD_CHANGED = "operator_password_changed"
OPERATOR_DISABLED = "operator_disabled"
# A start found no daemon_stopped after the previous daemon_started (SIGKILL, power loss).
UNCLEAN_STOP_DETECTED = "unclean_stop_detected"
# A requisition folder replaced with ``extract --force``: what was destroyed, with its hashes.
EXTRACTION_REPLACED = "extraction_replaced"
LIVE_KINDS = frozenset(
    {
        LIVE_VIEW_STARTED,
        LIVE_VIEW_ENDED,
        LIVE_VIEW_REFUSED,
        OPERATOR_ADDED,
        OPERATOR_PASSWORD_CHANGED,
        OPERATOR_DISABLED,
    }
)
KINDS = (
    frozenset(
        {
            SEGMENTS_DESTROYED,
            HOLD_ADDED,
            HOLD_RELEASED,
            EXTRACTION,
            RECOVERED,
            INTEGRITY_FAILURE,
            CONFIG_LOADED,
            DAEMON_STARTED,
            DAEMON_STOPPED,
            UNCLEAN_STOP_DETECTED,
            EXTRACTION_REPLACED,
        }
    )
    | LIVE_KINDS
)

JOURNAL_SCHEMA = (
    """
CREATE TABLE journal (
    id          INTEGER PRIMARY KEY,
    time_ns     INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    camera      TEXT,
    commune     TEXT,
    from_ns     INTEGER,
    to_ns       INTEGER,
    requisition TEXT,
    reason      TEXT,
    details     TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);
CREATE INDEX journal_time ON journal (time_ns);
CREATE INDEX journal_kind_camera ON journal (kind, camera, from_ns);
CREATE TABLE journal_head (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_id     INTEGER NOT NULL,
    last_hash   TEXT    NOT NULL,
    entries     INTEGER NOT NULL
);
INSERT INTO journal_head (singleton, last_id, last_hash, entries) VALUES (1, 0, '"""
    + GENESIS_HASH
    + """', 0);
"""
)

# The clock entries are dated with (tests replace it). Real time, never the caller's.
wall_clock: Callable[[], int] = time.time_ns

_COLUMNS = (
    "id, time_ns, kind, actor, camera, commune, from_ns, to_ns, requisition, reason, details, prev_hash, hash"
)


def os_actor() -> str:
    """The OS user running this process; with sudo, also who invoked it."""
    try:
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        user = getpass.getuser()
    sudo = os.environ.get("SUDO_USER")
    return f"{user} (sudo from {sudo})" if sudo and sudo != user else user


@dataclass(frozen=True, slots=True)
class JournalEntry:
    id: int
    time_ns: int
    kind: str
    actor: str
    camera: str | None
    commune: str | None
    from_ns: int | None
    to_ns: int | None
    requisition: str | None
    reason: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def content(self) -> dict[str, Any]:
        """Exactly what the hash covers."""
        return {
            "id": self.id,
            "prev_hash": self.prev_hash,
            "kind": self.kind,
            "time_ns": self.time_ns,
            "actor": self.actor,
            "camera": self.camera,
            "commune": self.commune,
            "from_ns": self.from_ns,
            "to_ns": self.to_ns,
            "requisition": self.requisition,
            "reason": self.reason,
            "details": self.details,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.content(), "hash": self.hash}


@dataclass(frozen=True, slots=True)
class JournalCheck:
    ok: bool
    entries: int
    first_bad_id: int | None
    problem: str
    head_id: int = 0
    head_hash: str = GENESIS_HASH


def canonical_bytes(content: dict[str, Any]) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def entry_hash(content: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(content)).hexdigest()


class Journal:
    """Append and verify the journal on an open connection to the index database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def append(
        self,
        kind: str,
        *,
        now_ns: int,
        actor: str | None = None,
        camera: str | None = None,
        commune: str | None = None,
        from_ns: int | None = None,
        to_ns: int | None = None,
        requisition: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> JournalEntry:
        """Append one entry, chained to the head, dated by :data:`wall_clock` (module doc); return
        it. ``now_ns``, the caller's decision time, is not the entry's date. ``details`` must be
        JSON-able."""
        if kind not in KINDS:
            raise ValueError(f"unknown journal kind {kind!r}")
        conn = self._conn
        own = not conn.in_transaction
        try:
            if own:
                conn.execute("BEGIN IMMEDIATE")
            try:
                entry = self._append(
                    kind,
                    now_ns,
                    actor if actor is not None else os_actor(),
                    camera,
                    commune,
                    from_ns,
                    to_ns,
                    requisition,
                    reason,
                    details or {},
                )
            except BaseException:
                if own:
                    conn.execute("ROLLBACK")
                raise
            if own:
                conn.execute("COMMIT")
            return entry
        except sqlite3.Error as e:
            raise StorageError(f"journal append {kind}: {e}") from e

    def _append(
        self,
        kind: str,
        now_ns: int,
        actor: str,
        camera: str | None,
        commune: str | None,
        from_ns: int | None,
        to_ns: int | None,
        requisition: str | None,
        reason: str | None,
        details: dict[str, Any],
    ) -> JournalEntry:
        conn = self._conn
        last_id, last_hash, count = conn.execute(
            "SELECT last_id, last_hash, entries FROM journal_head WHERE singleton = 1"
        ).fetchone()
        # Dated here, under the write lock: entries are dated in the order they are chained.
        now_ns = wall_clock()
        if last_id:
            (last_ns,) = conn.execute("SELECT time_ns FROM journal WHERE id = ?", (last_id,)).fetchone()
            if now_ns < last_ns:
                # The system clock stepped back (NTP correction, a wrong RTC at boot): the entry is
                # dated at its predecessor's time, never before, and says by how much the clock was
                # behind, so that a step back is told apart from tampering (module doc).
                details = {**details, "clock_behind_ns": last_ns - now_ns}
                now_ns = last_ns
        # Round-trip details through JSON now, so the stored text hashes like what we return.
        details = json.loads(canonical_bytes(details))
        draft = JournalEntry(
            last_id + 1, now_ns, kind, actor, camera, commune, from_ns, to_ns, requisition, reason, details,
            last_hash, "",
        )  # fmt: skip
        digest = entry_hash(draft.content())
        conn.execute(
            f"INSERT INTO journal ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                draft.id, now_ns, kind, actor, camera, commune, from_ns, to_ns, requisition, reason,
                canonical_bytes(details).decode("utf-8"), last_hash, digest,
            ),
        )  # fmt: skip
        conn.execute(
            "UPDATE journal_head SET last_id = ?, last_hash = ?, entries = ? WHERE singleton = 1",
            (draft.id, digest, count + 1),
        )
        return JournalEntry(*(*_fields(draft)[:-1], digest))

    def entries(
        self, since_ns: int | None = None, kind: str | None = None, camera: str | None = None
    ) -> list[JournalEntry]:
        """Entries by id, optionally from ``since_ns`` on, of one kind, of one camera."""
        clauses: list[str] = []
        params: list[object] = []
        if since_ns is not None:
            clauses.append("time_ns >= ?")
            params.append(since_ns)
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        if camera is not None:
            clauses.append("camera = ?")
            params.append(camera)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        try:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM journal{where} ORDER BY id", params).fetchall()
        except sqlite3.Error as e:
            raise StorageError(f"journal read: {e}") from e
        return [_row_entry(row) for row in rows]

    def head(self) -> tuple[int, str, int]:
        """(last id, last hash, entry count) as recorded in ``journal_head``."""
        row = self._conn.execute("SELECT last_id, last_hash, entries FROM journal_head").fetchone()
        return int(row[0]), str(row[1]), int(row[2])

    def verify(self) -> JournalCheck:
        """Walk the whole chain; stop at the first problem and name the entry (an altered,
        removed or reordered entry, or one dated before its predecessor)."""
        try:
            head_id, head_hash, head_count = self.head()
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM journal ORDER BY id")
            expected_prev, expected_id, n = GENESIS_HASH, 1, 0
            previous_time: int | None = None
            for row in rows:
                n += 1
                try:
                    entry = _row_entry(row)
                except (ValueError, TypeError) as e:
                    return _bad(n, row[0], f"entry {row[0]} is unreadable ({e}): altered")
                if entry.id != expected_id:
                    missing = (
                        f"entry {expected_id}"
                        if entry.id == expected_id + 1
                        else f"entries {expected_id}-{entry.id - 1}"
                    )
                    return _bad(n, expected_id, f"{missing} removed (the chain jumps to entry {entry.id})")
                if entry_hash(entry.content()) != entry.hash:
                    return _bad(n, entry.id, f"entry {entry.id} altered or moved: its hash does not match")
                if entry.prev_hash != expected_prev:
                    return _bad(
                        n,
                        entry.id,
                        f"entry {entry.id} does not follow entry {entry.id - 1}: reordered, or "
                        f"entry {entry.id - 1} was replaced",
                    )
                if previous_time is not None and entry.time_ns < previous_time:
                    return _bad(
                        n,
                        entry.id,
                        f"entry {entry.id} is dated before entry {entry.id - 1} "
                        f"({(previous_time - entry.time_ns) / 1e9:.3f} s earlier): the journal is dated "
                        "in order, so it was rewritten, or the clock stepped back",
                    )
                previous_time = entry.time_ns
                expected_prev, expected_id = entry.hash, entry.id + 1
            last_id = expected_id - 1
            if head_id != last_id or head_hash != expected_prev or head_count != n:
                if head_id > last_id:
                    first = last_id + 1
                    what = f"entry {first}" if head_id == first else f"entries {first}-{head_id}"
                    return _bad(n, first, f"{what} removed from the end (the head names entry {head_id})")
                return _bad(n, last_id or None, "journal head does not match the last entry: altered")
            return JournalCheck(True, n, None, "", head_id, head_hash)
        except sqlite3.Error as e:
            raise StorageError(f"journal verify: {e}") from e


def _bad(entries: int, bad_id: int | None, problem: str) -> JournalCheck:
    return JournalCheck(False, entries, bad_id, problem)


def _fields(e: JournalEntry) -> tuple[Any, ...]:
    return (
        e.id, e.time_ns, e.kind, e.actor, e.camera, e.commune, e.from_ns, e.to_ns, e.requisition,
        e.reason, e.details, e.prev_hash, e.hash,
    )  # fmt: skip


def _row_entry(row: tuple[Any, ...]) -> JournalEntry:
    values = list(row)
    details = json.loads(values[10])
    if not isinstance(details, dict):
        raise ValueError("details is not an object")
    values[10] = details
    return JournalEntry(*values)
