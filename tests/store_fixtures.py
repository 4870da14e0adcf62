"""A small store for retention tests: a config file, an index, and segment files of given sizes.

The files are not video (retention never reads them); the ENOSPC test makes real ones.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from csud.cli.main import format_time
from csud.config import Settings, load_config
from csud.recording.writer import FragmentInfo, SegmentInfo
from csud.service.daemon import INDEX_FILENAME
from csud.store.identity import create_store
from csud.store.index import Index
from csud.store.layout import segment_relpath
from tests.helpers import METZ, WOIPPY, Site

S = 1_000_000_000
DAY = 86_400 * S
T0 = int(datetime(2026, 9, 1, tzinfo=UTC).timestamp()) * S

STORE_SITE = Site(
    communes=[{**METZ, "authorisation": "arrêté 2023-042"}, WOIPPY],
    cameras=[
        {"id": "metz-gare-01", "commune": "metz", "url": "rtsp://10.20.0.11/s"},
        {"id": "metz-gare-02", "commune": "metz", "url": "rtsp://10.20.0.12/s", "retention_days": 7},
        {"id": "woippy-mairie-01", "commune": "woippy", "url": "rtsp://10.20.1.21/s"},
    ],
    tables={"storage": {"min_free_percent": 0}, "retention": {"interval_seconds": 60}},
)
"""Two communes, three cameras (one with its own 7-day window), no free-space floor: the config
is ``write_config(tmp, STORE_SITE, root=root)`` (:func:`tests.helpers.write_config`)."""


def settings_of(path: Path) -> Settings:
    return load_config(path).settings


def open_index(root: Path) -> Index:
    """The index of the store at ``root``, created as ``csud init`` does if there is none."""
    create_store(root)
    return Index.open(root / INDEX_FILENAME)


def add_segment(
    index: Index,
    root: Path,
    camera: str,
    commune: str,
    start_ns: int,
    seconds: int = 60,
    size: int = 1000,
    retention_days: int | None = None,
) -> tuple[int, str]:
    """A segment file of ``size`` bytes and its row; returns (id, relpath)."""
    relpath = segment_relpath(commune, camera, start_ns)
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (relpath.encode() * (size // len(relpath) + 1))[:size]
    path.write_bytes(data)
    info = SegmentInfo(
        relpath=relpath,
        start_ns=start_ns,
        end_ns=start_ns + seconds * S,
        bytes=size,
        frames=seconds * 25,
        sha256=hashlib.sha256(data).hexdigest(),
        fragments=(FragmentInfo(start_ns, 0, size, seconds * 25),),
    )
    created = start_ns + seconds * S
    return index.add_segment(camera, commune, info, created, retention_days=retention_days), relpath


def iso(ns: int) -> str:
    return format_time(ns)


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.mp4*") if p.is_file()}


def indexed_paths(index: Index) -> set[str]:
    return {row.path for cam in index.cameras() for row in index.segments(cam)}
