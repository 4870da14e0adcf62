"""Operator accounts, [web] config rules, the operator CLI (journaled) and the registre's live rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csud.cli.main import main
from csud.config import parse_settings
from csud.errors import ConfigError, UsageError
from csud.live.registre import live_view_rows
from csud.store import journal as journal_module
from csud.store.identity import create_store
from csud.store.index import Index
from csud.store.journal import LIVE_VIEW_ENDED, LIVE_VIEW_REFUSED
from csud.store.operators import Operators, check_password, hash_password

PASSWORD = "correct horse battery"


def test_scrypt_hash_checks_and_salts() -> None:
    a, b = hash_password(PASSWORD), hash_password(PASSWORD)
    assert a != b and a.startswith("scrypt$32768$8$1$")
    assert check_password(PASSWORD, a) and not check_password(PASSWORD + "!", a)
    assert not check_password(PASSWORD, "garbage") and not check_password(PASSWORD, "md5$x$y$z$aa$bb")
    assert PASSWORD not in a


def test_operator_changes_bump_generation(tmp_path: Path) -> None:
    index = Index.create(tmp_path / "index.sqlite3")
    ops = Operators(index)
    ops.add("alice", "Alice", ["metz"], hash_password(PASSWORD), now_ns=1, actor="t")
    with pytest.raises(UsageError, match="already exists"):
        ops.add("alice", "Alice", ["metz"], "x", now_ns=2, actor="t")
    with pytest.raises(UsageError, match="lower-case"):
        ops.add("Alice Martin", "Alice", ["metz"], "x", now_ns=2, actor="t")
    ops.set_password("alice", hash_password("another long one"), now_ns=3, actor="t")
    ops.disable("alice", now_ns=4, actor="t")
    with pytest.raises(UsageError, match="no operator"):
        ops.disable("bob", now_ns=5, actor="t")
    alice = ops.get("alice")
    assert alice is not None and alice.generation == 3 and not alice.enabled and alice.disabled_ns == 4
    kinds = [e.kind for e in index.journal_entries()]
    assert kinds == ["operator_added", "operator_password_changed", "operator_disabled"]
    assert index.verify_journal().ok
    index.close()


@pytest.mark.parametrize(
    ("web", "error"),
    [
        ({"listen": "0.0.0.0:8080"}, "not a loopback address: set tls_cert and tls_key"),
        ({"listen": "192.168.1.5:8080", "tls_cert": "/c.pem"}, "give both tls_cert and tls_key"),
        ({"listen": "8080"}, "must be HOST:PORT"),
        ({"session_minutes": 0}, "greater than or equal to 1"),
    ],
)
def test_web_config_refusals(web: dict[str, str | int], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_settings({"web": web})


def test_web_config_accepts_loopback_tls_and_disabled() -> None:
    assert parse_settings({}).web.listen == ""
    assert parse_settings({"web": {"listen": "[::1]:8080"}}).web.loopback
    tls = {"listen": "0.0.0.0:8443", "tls_cert": "/c.pem", "tls_key": "/k.pem"}
    assert parse_settings({"web": tls}).web.tls_key == Path("/k.pem")


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "csud.toml"
    path.write_text(
        f'[storage]\nroot = "{tmp_path / "store"}"\n'
        '[[communes]]\nid = "metz"\nname = "Metz"\nservice = "live"\nretention_days = 15\n'
        '[[communes]]\nid = "ars"\nname = "Ars"\nservice = "storage"\nretention_days = 15\n'
    )
    create_store(tmp_path / "store")
    return path


def test_operator_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(_config(tmp_path))
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    add = ["operator", "add", "alice", "--name", "Alice Martin", "--communes", "metz,ars"]
    assert main([*add, "--password-file", str(pw), "--config", config]) == 0
    assert "storage-only" in capsys.readouterr().err
    assert main([*add[:-1], "nowhere", "--password-file", str(pw), "--config", config]) == 2
    short = tmp_path / "short"
    short.write_text("short\n")
    assert main(["operator", "passwd", "alice", "--password-file", str(short), "--config", config]) == 2
    assert main(["operator", "disable", "alice", "--config", config]) == 0
    assert main(["operator", "disable", "bob", "--config", config]) == 2
    capsys.readouterr()
    assert main(["operator", "list", "--json", "--config", config]) == 0
    (alice,) = json.loads(capsys.readouterr().out)
    assert alice["communes"] == ["metz", "ars"] and alice["enabled"] is False
    index = Index.open(tmp_path / "store" / "index.sqlite3", readonly=True)
    entries = index.journal_entries()
    index.close()
    assert [e.kind for e in entries] == ["operator_added", "operator_disabled"]
    assert entries[0].details == {"operator": "alice", "name": "Alice Martin", "communes": ["metz", "ars"]}
    assert PASSWORD not in json.dumps([e.to_json() for e in entries])


def test_registre_lists_live_views(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(_config(tmp_path))
    index = Index.open(tmp_path / "store" / "index.sqlite3")
    t = 1_796_300_000 * 1_000_000_000  # 2026-12-03
    times = iter(range(t, t + 10))
    monkeypatch.setattr(journal_module, "wall_clock", lambda: next(times))  # the journal reads the clock
    details = {"operator": "alice", "client": "10.0.0.9", "duration_seconds": 75.5, "bytes": 3_000_000}
    index.append_journal(LIVE_VIEW_ENDED, now_ns=t, actor="operator:alice", camera="cam1", commune="metz",
                         reason="client_closed", details=details)  # fmt: skip
    index.append_journal(LIVE_VIEW_REFUSED, now_ns=t + 1, actor="operator:alice", camera="cam9",
                         commune="metz", reason="commune_not_authorised",
                         details={"operator": "alice", "client": "10.0.0.9"})  # fmt: skip
    index.append_journal(LIVE_VIEW_ENDED, now_ns=t + 2, actor="operator:bob", camera="x", commune="ars",
                         details={"operator": "bob"})  # fmt: skip
    rows = live_view_rows(index, "metz", t - 1, t + 10)
    index.close()
    assert [(r["kind"], r["camera"]) for r in rows] == [("view", "cam1"), ("refused", "cam9")]
    assert main(["registre", "--commune", "metz", "--month", "2026-12", "--config", config]) == 0
    out = capsys.readouterr().out
    assert (
        "alice" in out and "75.5 s" in out and "REFUSED (commune_not_authorised)" in out and "bob" not in out
    )
