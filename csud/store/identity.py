"""Store identity: which directory is a csud store, and which store it is (docs/storage.md,
"Store identity").

A store is created once, by ``csud init`` (:func:`create_store`): the root directory (mode 0750),
the index ``index.sqlite3`` holding a random UUID in its ``store_identity`` table (schema
version 4, :func:`migrate_store_identity`), and last the marker ``csud-store.json`` holding the
same UUID, written atomically: a root with the marker is a complete store.

Every command that opens the store (``csud run`` first of all) calls :func:`verify_store`
before anything else, and refuses with :class:`StoreIdentityError` (a ``ConfigError``: exit 2,
one line naming the likely cause) a root that is missing, empty, not a csud store, or whose
index is not the marker's. Nothing here creates anything except :func:`create_store`: an
unmounted disk must never become a new, empty store beside the real one.

What is left out: pinning the UUID in the config (a *different* csud store mounted at the
root is accepted as long as its marker and index agree).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from csud import __version__
from csud.errors import ConfigError
from csud.store.durable import fsync_dir
from csud.store.index import Index
from csud.store.schema import StoreIdentity

MARKER_FILENAME = "csud-store.json"
INDEX_FILENAME = "index.sqlite3"
ROOT_MODE = 0o750
# A freshly formatted ext4 file system holds this; a root holding only it is "empty".
EMPTY_FS_NAMES = frozenset({"lost+found"})
LISTED_NAMES = 5  # names shown when refusing a non-empty directory


class StoreIdentityError(ConfigError):
    """The storage root is not the csud store it should be (CLI exit code 2)."""


def marker_path(root: Path) -> Path:
    return root / MARKER_FILENAME


def read_marker(root: Path) -> StoreIdentity:
    path = marker_path(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return StoreIdentity(str(data["uuid"]), int(data["created_ns"]), str(data["csud_version"]))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StoreIdentityError(
            f"store identity marker {path} is unreadable ({e}): damaged store?"
        ) from None


def index_identity(index_path: Path) -> StoreIdentity | None:
    """The identity row of the index at ``index_path`` (read-only; ``None`` if it has none)."""
    try:
        conn = sqlite3.connect(f"{index_path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise StoreIdentityError(f"index {index_path} cannot be opened: {e}") from None
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_identity'"
        ).fetchone()
        if not has_table:
            return None
        row = conn.execute("SELECT uuid, created_ns, csud_version FROM store_identity").fetchone()
        return StoreIdentity(str(row[0]), int(row[1]), str(row[2])) if row else None
    except sqlite3.Error as e:
        raise StoreIdentityError(f"index {index_path} is not readable: {e}") from None
    finally:
        conn.close()


def _visible_names(root: Path) -> list[str]:
    return sorted(n for n in os.listdir(root) if n not in EMPTY_FS_NAMES)


def verify_store(root: Path) -> StoreIdentity:
    """Return the identity of the store at ``root``, or raise :class:`StoreIdentityError` with
    a one-line reason. Reads only: never creates, migrates or writes anything."""
    if not root.exists():
        raise StoreIdentityError(f"storage root {root} does not exist (not mounted?)")
    if not root.is_dir():
        raise StoreIdentityError(f"storage root {root} is not a directory")
    try:
        marker = read_marker(root)
    except FileNotFoundError:
        try:
            names = _visible_names(root)
        except OSError as e:
            raise StoreIdentityError(f"storage root {root} cannot be listed: {e.strerror or e}") from None
        if not names:
            raise StoreIdentityError(
                f"storage root {root} is empty: not a csud store (not mounted? run csud init to create one)"
            ) from None
        if INDEX_FILENAME in names:
            raise StoreIdentityError(
                f"storage root {root} has an index but no {MARKER_FILENAME}: a store from before"
                " store identities (run csud init to adopt it) or a damaged one"
            ) from None
        shown = ", ".join(names[:LISTED_NAMES]) + (", ..." if len(names) > LISTED_NAMES else "")
        raise StoreIdentityError(
            f"storage root {root} is not a csud store (no {MARKER_FILENAME}; holds {shown}):"
            " wrong directory, or the disk is not mounted?"
        ) from None
    index_path = root / INDEX_FILENAME
    if not index_path.is_file():
        raise StoreIdentityError(
            f"storage root {root} has a {MARKER_FILENAME} but no {INDEX_FILENAME}:"
            " damaged or partly copied store"
        )
    found = index_identity(index_path)
    if found is None:
        raise StoreIdentityError(
            f"index {index_path} holds no store identity but {MARKER_FILENAME} names store {marker.uuid}:"
            " an index from elsewhere? (run csud init to adopt a store made before identities)"
        )
    if found.uuid != marker.uuid:
        raise StoreIdentityError(
            f"storage root {root} is store {marker.uuid} but its index belongs to store {found.uuid}:"
            " an index copied from another store?"
        )
    return marker


def _write_marker(root: Path, identity: StoreIdentity) -> None:
    """Atomically: write a temporary file, fsync it, rename it, fsync the root."""
    tmp = root / f".{MARKER_FILENAME}.tmp"
    data = json.dumps(identity.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, marker_path(root))
    fsync_dir(root)


def create_store(root: Path, now_ns: int | None = None) -> tuple[StoreIdentity, str]:
    """``csud init``: make ``root`` a new store, or adopt a csud store made before identities.

    Returns ``(identity, what)`` with ``what`` one of ``created``, ``adopted``, ``exists``
    (already a store: nothing changed, so install scripts may run it again). Refuses
    (:class:`StoreIdentityError`) a non-empty directory that is not a csud store, and a store
    whose marker and index disagree."""
    root = Path(root)
    if marker_path(root).exists():
        return verify_store(root), "exists"
    if root.exists():
        if not root.is_dir():
            raise StoreIdentityError(f"storage root {root} is not a directory")
        names = _visible_names(root)
        adopt = INDEX_FILENAME in names
        if names and not adopt:
            shown = ", ".join(names[:LISTED_NAMES]) + (", ..." if len(names) > LISTED_NAMES else "")
            raise StoreIdentityError(
                f"storage root {root} is not empty and not a csud store (holds {shown}): refusing to init it"
            )
    else:
        adopt = False
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=ROOT_MODE)
        fsync_dir(root.parent)
    os.chmod(root, ROOT_MODE)
    created = now_ns if now_ns is not None else time.time_ns()
    fresh = StoreIdentity(str(uuid.uuid4()), created, __version__)
    index = Index.create(root / INDEX_FILENAME)
    try:
        identity = index.set_store_identity(fresh)
    finally:
        index.close()
    _write_marker(root, identity)
    return identity, "adopted" if adopt else "created"


def open_store_index(root: Path, readonly: bool = False) -> Any:
    """:func:`verify_store`, then open its index (never created here). Returns an ``Index``."""
    verify_store(root)
    return Index.open(root / INDEX_FILENAME, readonly=readonly)
