"""Judicial holds: the index API and ``csud hold add|list|release`` (exit codes, journal)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csud.cli.main import main
from tests.helpers import write_config
from tests.store_fixtures import STORE_SITE, T0, S, add_segment, iso, open_index


@pytest.fixture
def config(tmp_path: Path) -> str:
    root = tmp_path / "store"
    index = open_index(root)
    add_segment(index, root, "metz-gare-01", "metz", T0)
    add_segment(index, root, "retired-cam", "metz", T0)  # not configured, but has footage
    index.close()
    return str(write_config(tmp_path, STORE_SITE, root=root))


ADD = [
    "--from",
    iso(T0),
    "--to",
    iso(T0 + 3600 * S),
    "--requisition",
    "PV 2026/77",
    "--officer",
    "OPJ Durand",
]


def test_add_list_release(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["hold", "add", "--camera", "metz-gare-01", "--camera", "retired-cam", *ADD, "--reason", "rixe"]
    assert main([*argv, "--config", config]) == 0
    assert "hold 1 added: metz-gare-01, retired-cam" in capsys.readouterr().out
    assert main(["hold", "list", "--json", "--config", config]) == 0
    (hold,) = json.loads(capsys.readouterr().out)
    assert hold["status"] == "active" and hold["cameras"] == ["metz-gare-01", "retired-cam"]
    assert (hold["requisition"], hold["officer"], hold["reason"]) == ("PV 2026/77", "OPJ Durand", "rixe")
    assert main(["hold", "release", "1", "--reason", "jugement rendu", "--config", config]) == 0
    capsys.readouterr()
    assert main(["hold", "list", "--config", config]) == 0
    assert "released" in capsys.readouterr().out
    assert main(["hold", "release", "1", "--reason", "again", "--config", config]) == 1
    assert "already released" in capsys.readouterr().err
    assert main(["journal", "--json", "--config", config]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [e["kind"] for e in entries] == ["hold_added", "hold_released"]
    assert entries[0]["details"]["officer"] == "OPJ Durand" and entries[1]["reason"] == "jugement rendu"
    assert main(["journal", "--verify", "--config", config]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--camera", "nope", *ADD, "--reason", "r"], "unknown camera 'nope'"),
        (
            ["--camera", "metz-gare-01", *ADD[:1], "2026-09-01T00:00:00", *ADD[2:], "--reason", "r"],
            "no UTC offset",
        ),
        (
            ["--camera", "metz-gare-01", "--from", iso(T0), "--to", iso(T0), *ADD[4:], "--reason", "r"],
            "--to must",
        ),
        (
            ["--camera", "metz-gare-01", *ADD, "--reason", "r", "--until", "2020-01-01T00:00:00Z"],
            "already past",
        ),
        (["--camera", "metz-gare-01", *ADD, "--reason", " "], "--reason must not be empty"),
        (["--camera", "metz-gare-01", *ADD], "required: --reason"),
    ],
)
def test_bad_usage_exits_2_with_one_line(
    config: str, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["hold", "add", *argv, "--config", config])
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_release_unknown_hold(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hold", "release", "42", "--reason", "x", "--config", config]) == 2
    assert "unknown hold 42" in capsys.readouterr().err


def test_index_hold_api(tmp_path: Path) -> None:
    index = open_index(tmp_path)
    try:
        with pytest.raises(ValueError):
            index.add_hold(["c"], T0, T0, requisition="r", officer="o", reason="x", until_ns=None, now_ns=T0)
        h = index.add_hold(
            ["b", "a", "a"], T0, T0 + S, requisition="r", officer="o", reason="x", until_ns=T0 + 9 * S,
            now_ns=T0, actor="me",
        )  # fmt: skip
        assert h.cameras == ("a", "b") and h.created_by == "me" and h.until_ns == T0 + 9 * S
        assert h.policy().active(T0 + 8 * S) and not h.policy().active(T0 + 9 * S)
        with pytest.raises(KeyError):
            index.release_hold(99, reason="x", now_ns=T0)
        released = index.release_hold(h.id, reason="done", now_ns=T0 + S, actor="you")
        assert (released.released_by, released.release_reason) == ("you", "done")
        assert index.holds(include_released=False) == []
    finally:
        index.close()


def test_index_commits_are_durable_synchronous_full(tmp_path: Path) -> None:
    """A hold reported as added must survive a power loss: WAL with synchronous=FULL (2), since
    NORMAL may roll back the last commits (docs/storage.md, "Index")."""
    index = open_index(tmp_path)
    try:
        assert index._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert index._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        index.close()
