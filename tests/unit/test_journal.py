"""The journal's hash chain: appends chain up; any edit, deletion or reordering is named."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from csud.cli.main import main
from csud.errors import StorageError
from csud.store import journal as journal_module
from csud.store.index import Index
from csud.store.journal import GENESIS_HASH, Journal, canonical_bytes, entry_hash
from tests.helpers import write_config
from tests.store_fixtures import STORE_SITE, T0, S, open_index


@pytest.fixture
def journal_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A store with 5 journal entries; yields the index path (closed, for tampering)."""
    times = itertools.chain([T0, T0, T0 + S, T0 + 2 * S], itertools.repeat(T0 + 3 * S))
    monkeypatch.setattr(journal_module, "wall_clock", lambda: next(times))
    root = tmp_path / "store"
    index = open_index(root)
    index.append_journal("daemon_started", now_ns=T0, actor="csud", details={"version": "x"})
    index.append_journal("config_loaded", now_ns=T0, actor="csud", details={"sha256": "ab" * 32})
    index.append_journal(
        "extraction", now_ns=T0 + S, actor="alice", camera="metz-gare-01", commune="metz",
        from_ns=T0, to_ns=T0 + 60 * S, requisition="PV 2026/1", reason="vol", details={"out": "x.mp4"},
    )  # fmt: skip
    index.append_journal(
        "segments_destroyed", now_ns=T0 + 2 * S, actor="csud", camera="c", details={"count": 3}
    )
    index.append_journal("daemon_stopped", now_ns=T0 + 3 * S, actor="csud")
    index.close()
    write_config(tmp_path, STORE_SITE, root=root)
    yield root / "index.sqlite3"


def tamper(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    for sql in statements:
        conn.execute(sql)
    conn.close()


def verify(db: Path) -> tuple[bool, int | None, str]:
    index = Index.create(db)
    try:
        check = index.verify_journal()
    finally:
        index.close()
    return check.ok, check.first_bad_id, check.problem


def test_chain_links_and_hashes(journal_db: Path) -> None:
    index = Index.create(journal_db)
    entries = index.journal_entries()
    index.close()
    assert [e.id for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    for e in entries:
        assert e.hash == entry_hash(e.content())
    assert entries[2].requisition == "PV 2026/1" and entries[2].details == {"out": "x.mp4"}
    assert verify(journal_db) == (True, None, "")


def test_canonical_encoding_is_stable() -> None:
    assert canonical_bytes({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_unknown_kind_is_refused(journal_db: Path) -> None:
    index = Index.create(journal_db)
    with pytest.raises(ValueError, match="unknown journal kind"):
        index.append_journal("coffee_break", now_ns=T0)
    index.close()


def test_since_filter(journal_db: Path) -> None:
    index = Index.create(journal_db)
    assert [e.id for e in index.journal_entries(since_ns=T0 + 2 * S)] == [4, 5]
    index.close()


@pytest.mark.parametrize(
    ("statements", "bad_id", "words"),
    [
        (["UPDATE journal SET reason = 'nothing' WHERE id = 3"], 3, "entry 3 altered"),
        (["UPDATE journal SET actor = 'mallory' WHERE id = 1"], 1, "entry 1 altered"),
        (["UPDATE journal SET details = '{\"count\":1}' WHERE id = 4"], 4, "entry 4 altered"),
        (["UPDATE journal SET time_ns = time_ns + 1 WHERE id = 5"], 5, "entry 5 altered"),
        (["DELETE FROM journal WHERE id = 2"], 2, "entry 2 removed"),
        (["DELETE FROM journal WHERE id IN (2, 3)"], 2, "entries 2-3 removed"),
        (["DELETE FROM journal WHERE id = 5"], 5, "entry 5 removed from the end"),
        (["DELETE FROM journal WHERE id >= 4"], 4, "entries 4-5 removed from the end"),
        # Reorder: swap rows 2 and 3 (ids stay in sequence, contents change places).
        (
            [
                "UPDATE journal SET id = -2 WHERE id = 2",
                "UPDATE journal SET id = 2 WHERE id = 3",
                "UPDATE journal SET id = 3 WHERE id = -2",
            ],
            2,
            "entry 2 altered or moved",
        ),
        # Delete entry 3 and renumber the rest: the ids look contiguous, the chain does not.
        (
            [
                "DELETE FROM journal WHERE id = 3",
                "UPDATE journal SET id = id - 1 WHERE id > 3",
                "UPDATE journal_head SET last_id = 4, entries = 4",
            ],
            3,
            "entry 3 altered or moved",
        ),
        # Head tampered alone.
        (["UPDATE journal_head SET entries = 9"], 5, "journal head does not match"),
    ],
)
def test_tampering_is_detected_and_named(
    journal_db: Path, statements: list[str], bad_id: int, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper(journal_db, *statements)
    ok, first_bad, problem = verify(journal_db)
    assert not ok and first_bad == bad_id and words in problem
    config = journal_db.parent.parent / "csud.toml"
    assert main(["journal", "--verify", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_recomputing_one_hash_is_not_enough(journal_db: Path) -> None:
    """A forger who fixes the altered entry's own hash breaks the next entry's link."""
    conn = sqlite3.connect(journal_db)
    row = conn.execute("SELECT * FROM journal WHERE id = 3").fetchone()
    cols = [d[0] for d in conn.execute("SELECT * FROM journal").description]
    entry = dict(zip(cols, row, strict=True))
    entry["reason"] = "forged"
    content = {k: entry[k] for k in ("id", "prev_hash", "kind", "time_ns", "actor", "camera", "commune",
                                     "from_ns", "to_ns", "requisition", "reason")}  # fmt: skip
    content["details"] = json.loads(entry["details"])
    conn.execute("UPDATE journal SET reason = 'forged', hash = ? WHERE id = 3", (entry_hash(content),))
    conn.commit()
    conn.close()
    ok, bad, problem = verify(journal_db)
    assert not ok and bad == 4 and "entry 4 does not follow entry 3" in problem


def test_cli_lists_and_verifies(journal_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(journal_db.parent.parent / "csud.toml")
    assert main(["journal", "--verify", "--config", config]) == 0
    assert "journal OK: 5 entries" in capsys.readouterr().out
    assert main(["journal", "--json", "--config", config]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [e["kind"] for e in out][:3] == ["daemon_started", "config_loaded", "extraction"]
    assert out[2]["requisition"] == "PV 2026/1" and out[2]["time"].endswith("Z")
    assert main(["journal", "--since", "2026-09-01T02:00:02+02:00", "--config", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "segments_destroyed" in lines[0]
    assert main(["journal", "--since", "2026-09-01T00:00:02", "--config", config]) == 2  # naive


def test_append_joins_an_open_transaction(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    index.close()
    conn = sqlite3.connect(tmp_path / "index.sqlite3", isolation_level=None)
    journal = Journal(conn)
    conn.execute("BEGIN IMMEDIATE")
    journal.append("recovered", now_ns=T0, actor="t")
    conn.execute("ROLLBACK")  # the caller's rollback takes the entry with it
    assert journal.entries() == [] and journal.verify().ok
    entry = journal.append("recovered", now_ns=T0)  # own transaction; actor = OS user
    assert entry.actor and journal.head() == (1, entry.hash, 1)
    conn.close()


def test_readonly_database_refuses_appends(journal_db: Path) -> None:
    index = Index.open(journal_db, readonly=True)
    with pytest.raises(StorageError, match="journal append"):
        index.append_journal("recovered", now_ns=T0)
    assert index.verify_journal().ok
    index.close()


def rewrite_chain(db: Path, changes: dict[int, dict[str, object]]) -> None:
    """A forger with write access: change entries and recompute every hash and the head, so the
    chain itself is consistent again."""
    conn = sqlite3.connect(db, isolation_level=None)
    cols = [d[0] for d in conn.execute("SELECT * FROM journal").description]
    rows = [dict(zip(cols, row, strict=True)) for row in conn.execute("SELECT * FROM journal ORDER BY id")]
    prev = GENESIS_HASH
    for entry in rows:
        entry.update(changes.get(entry["id"], {}))
        entry["prev_hash"] = prev
        content = {k: entry[k] for k in ("id", "prev_hash", "kind", "time_ns", "actor", "camera", "commune",
                                         "from_ns", "to_ns", "requisition", "reason")}  # fmt: skip
        content["details"] = json.loads(entry["details"])
        entry["hash"] = prev = entry_hash(content)
        conn.execute(
            "UPDATE journal SET time_ns = ?, prev_hash = ?, hash = ? WHERE id = ?",
            (entry["time_ns"], entry["prev_hash"], entry["hash"], entry["id"]),
        )
    conn.execute("UPDATE journal_head SET last_hash = ?", (prev,))
    conn.close()


def test_an_entry_dated_before_its_predecessor_is_named(
    journal_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12, point 1: a chain rewritten consistently still fails when its dates go back."""
    rewrite_chain(journal_db, {4: {"time_ns": T0 + 20 * 86_400 * S}})  # 4 dated 20 days later: 5 is before it
    ok, bad, problem = verify(journal_db)
    assert not ok and bad == 5 and "entry 5 is dated before entry 4" in problem
    config = journal_db.parent.parent / "csud.toml"
    assert main(["journal", "--verify", "--config", str(config)]) == 1
    assert "entry 5 is dated before entry 4" in capsys.readouterr().err


def test_equal_dates_are_in_order(journal_db: Path) -> None:
    rewrite_chain(journal_db, {})  # entries 1 and 2 share a date: fine
    assert verify(journal_db)[0]


def test_entries_are_dated_by_the_clock_not_by_the_caller(tmp_path: Path) -> None:
    """Issue 12, point 1: whatever ``now_ns`` a caller passes (a pretended date), the entry is
    dated with real time, read under the write lock, so the journal never goes back."""
    index = open_index(tmp_path)
    try:
        before = time.time_ns()
        future = index.append_journal("segments_destroyed", now_ns=before + 20 * 86_400 * S, actor="t")
        past = index.append_journal("segments_destroyed", now_ns=T0, actor="t")
        after = time.time_ns()
        assert before <= future.time_ns <= past.time_ns <= after
        assert index.verify_journal().ok
    finally:
        index.close()


def test_a_clock_stepping_back_never_dates_an_entry_before_its_predecessor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An NTP step back must not make the register look tampered with: the entry keeps its
    predecessor's date and says how far behind the clock was; ``verify`` stays OK."""
    times = iter([T0 + 10 * S, T0 + 7 * S, T0 + 12 * S])  # the clock steps back 3 s, then recovers
    monkeypatch.setattr(journal_module, "wall_clock", lambda: next(times))
    index = open_index(tmp_path)
    try:
        first = index.append_journal("daemon_started", now_ns=0, actor="t")
        stepped = index.append_journal("config_loaded", now_ns=0, actor="t", details={"sha256": "x"})
        later = index.append_journal("daemon_stopped", now_ns=0, actor="t")
        assert stepped.time_ns == first.time_ns == T0 + 10 * S
        assert stepped.details == {"sha256": "x", "clock_behind_ns": 3 * S}
        assert later.time_ns == T0 + 12 * S and "clock_behind_ns" not in later.details
        assert index.verify_journal().ok
    finally:
        index.close()
