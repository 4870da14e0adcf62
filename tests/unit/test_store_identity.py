"""Store identity (docs/storage.md, "Store identity"): ``csud init`` creates a store, every
command refuses a root that is not that store (exit 2, one line naming the likely cause) and
never creates one."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from csud.cli.main import main
from csud.errors import StorageError
from csud.store.identity import (
    INDEX_FILENAME,
    MARKER_FILENAME,
    StoreIdentityError,
    create_store,
    verify_store,
)
from csud.store.index import Index
from tests.helpers import write_config
from tests.store_fixtures import STORE_SITE


def test_init_creates_root_marker_and_index_with_the_same_uuid(tmp_path: Path) -> None:
    root = tmp_path / "mnt" / "csud"
    identity, what = create_store(root)
    assert what == "created"
    assert stat.S_IMODE(root.stat().st_mode) == 0o750
    marker = json.loads((root / MARKER_FILENAME).read_text())
    assert marker["uuid"] == identity.uuid and marker["csud_version"]
    index = Index.open(root / INDEX_FILENAME, readonly=True)
    assert index.store_identity() == identity
    index.close()
    assert verify_store(root) == identity
    assert create_store(root) == (identity, "exists")  # idempotent (install.sh runs it again)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("missing", r"does not exist \(not mounted\?\)"),
        ("empty", r"is empty: not a csud store \(not mounted\? run csud init to create one\)"),
        ("lost+found", r"is empty: not a csud store"),
        ("foreign", r"is not a csud store \(no csud-store.json; holds etc, notes.txt\)"),
        ("old_store", r"has an index but no csud-store.json"),
        ("no_index", r"has a csud-store.json but no index.sqlite3"),
        ("swapped_index", r"is store .* but its index belongs to store"),
    ],
)
def test_verify_refuses_what_is_not_the_store(tmp_path: Path, make: str, message: str) -> None:
    root = tmp_path / "store"
    if make != "missing":
        root.mkdir()
    if make == "lost+found":
        (root / "lost+found").mkdir()
    elif make == "foreign":
        (root / "etc").mkdir()
        (root / "notes.txt").write_text("x")
    elif make == "old_store":
        Index.create(root / INDEX_FILENAME).close()
    elif make in ("no_index", "swapped_index"):
        create_store(root)
        other = tmp_path / "other"
        create_store(other)
        (root / INDEX_FILENAME).unlink()
        if make == "swapped_index":
            shutil.copy(other / INDEX_FILENAME, root / INDEX_FILENAME)

    def names() -> list[str] | None:  # SQLite's -wal/-shm of a readable index aside
        return sorted(p.name for p in root.iterdir() if "sqlite3-" not in p.name) if root.exists() else None

    before = names()
    with pytest.raises(StoreIdentityError, match=message):
        verify_store(root)
    assert names() == before  # nothing created


def test_index_open_never_creates_a_database(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        Index.open(tmp_path / INDEX_FILENAME)
    assert not (tmp_path / INDEX_FILENAME).exists()


def test_init_refuses_a_non_empty_directory_and_adopts_an_old_store(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "photo.jpg").write_bytes(b"x")
    with pytest.raises(StoreIdentityError, match="not empty and not a csud store"):
        create_store(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["photo.jpg"]
    old = tmp_path / "old"
    old.mkdir()
    Index.create(old / INDEX_FILENAME).close()  # a store made before csud init existed
    identity, what = create_store(old)
    assert what == "adopted" and verify_store(old) == identity


def test_every_command_refuses_an_empty_root_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    config = write_config(tmp_path, STORE_SITE, root=root, init=False)
    root.mkdir()
    commands = [
        ["segments", "--camera", "metz-gare-01"],
        ["check"],
        ["retention", "--dry-run"],
        ["hold", "list"],
        ["journal"],
        ["registre", "--commune", "metz", "--month", "2026-09"],
        ["verify", "--archive"],
        [
            *("extract", "--camera", "metz-gare-01", "--from", "2026-09-01T00:00:00+00:00"),
            *("--to", "2026-09-01T00:01:00+00:00", "--requisition", "R1", "--officer", "O"),
            *("--out", str(tmp_path / "out")),
        ],
        ["operator", "list"],
        ["operator", "disable", "alice"],
    ]
    for args in commands:
        assert main([*args, "--config", str(config)]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is empty: not a csud store (not mounted?" in err[0], (args, err)
    assert list(root.iterdir()) == []
    assert main(["init", "--config", str(config)]) == 0
    assert "created csud store" in capsys.readouterr().out
    assert main(["hold", "list", "--config", str(config)]) == 0


def test_operator_commands_never_create_a_missing_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``csud operator`` used to mkdir the root and fail on sqlite: on an unmounted disk it made the
    mount point's directory (world-readable) instead of saying "not mounted?"."""
    root = tmp_path / "store"
    config = write_config(tmp_path, STORE_SITE, root=root, init=False)
    password = tmp_path / "pw"
    password.write_text("correct horse battery staple\n")
    for args in (
        ["operator", "list"],
        [
            "operator",
            "add",
            "alice",
            "--name",
            "Alice",
            "--communes",
            "metz",
            *("--password-file", str(password)),
        ],
    ):
        assert main([*args, "--config", str(config)]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "does not exist (not mounted?)" in err[0], (args, err)
    assert not root.exists()
