"""Where segments live under the storage root, and how file names encode time.

Pure: no I/O. Paths are relative to the storage root and always use ``/``::

    <commune>/<camera>/YYYY/MM/DD/YYYYMMDDTHHMMSS.mmmZ.mp4          closed segment
    <commune>/<camera>/YYYY/MM/DD/YYYYMMDDTHHMMSS.mmmZ.mp4.partial  segment being written

The date and the name are the segment's start in UTC, truncated to the millisecond. The index is
the source of truth for exact times; the name is for humans and for recovery.

Identifiers used as path components (commune, camera) are validated here, once, so that no id
can climb out of the root or hide a file: only ``[A-Za-z0-9._-]``, not starting with ``.``, and
none of :data:`RESERVED_NAMES` (the root's own entries: a commune called ``quarantine`` would be
taken for the quarantine directory by startup recovery, one called ``index.sqlite3`` would collide
with the index).
"""

from __future__ import annotations

import re
import zlib
from datetime import UTC, datetime, timedelta

NS_PER_MS = 1_000_000
NS_PER_SECOND = 1_000_000_000
SEGMENT_SUFFIX = ".mp4"
PARTIAL_SUFFIX = ".partial"
MAX_COMPONENT_LENGTH = 128
QUARANTINE_DIR = "quarantine"
INDEX_FILENAME = "index.sqlite3"
# Entries of the storage root that are not commune directories (compared case-insensitively, so
# that a store copied to a case-insensitive file system still cannot mix them up).
RESERVED_NAMES = frozenset(
    {QUARANTINE_DIR, INDEX_FILENAME, *(INDEX_FILENAME + s for s in ("-wal", "-shm", "-journal"))}
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COMPONENT_RE = re.compile(r"[A-Za-z0-9._-]+")
_NAME_RE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})\.(\d{3})Z\.mp4", re.ASCII)


def validate_path_component(kind: str, value: str) -> str:
    """Return ``value`` if it is safe as one path component, else raise ``ValueError``.

    ``kind`` names the id in the message ("camera", "commune").
    """
    if not value:
        raise ValueError(f"invalid {kind} id: empty")
    if len(value) > MAX_COMPONENT_LENGTH:
        raise ValueError(f"invalid {kind} id {value!r}: longer than {MAX_COMPONENT_LENGTH} characters")
    if not _COMPONENT_RE.fullmatch(value):
        raise ValueError(f"invalid {kind} id {value!r}: only letters, digits, '.', '_' and '-' are allowed")
    if value.startswith("."):
        raise ValueError(f"invalid {kind} id {value!r}: must not start with '.'")
    if value.lower() in RESERVED_NAMES:
        raise ValueError(
            f"invalid {kind} id {value!r}: reserved (names used by csud at the storage root:"
            f" {', '.join(sorted(RESERVED_NAMES))})"
        )
    return value


def segment_relpath(commune: str, camera: str, start_ns: int) -> str:
    """The path of the segment of ``camera`` starting at ``start_ns`` (UTC ns), relative to the root."""
    validate_path_component("commune", commune)
    validate_path_component("camera", camera)
    if start_ns < 0:
        raise ValueError(f"segment start before 1970: {start_ns}")
    seconds, rest_ns = divmod(start_ns, NS_PER_SECOND)
    t = _EPOCH + timedelta(seconds=seconds)
    name = f"{t:%Y%m%dT%H%M%S}.{rest_ns // NS_PER_MS:03d}Z{SEGMENT_SUFFIX}"
    return f"{commune}/{camera}/{t:%Y/%m/%d}/{name}"


def partial_name(relpath: str) -> str:
    """The name a segment has while it is being written."""
    return relpath + PARTIAL_SUFFIX


def parse_segment_filename(name: str) -> int:
    """Inverse of the file name part of :func:`segment_relpath`: the start in UTC ns (ms precision).

    Accepts a bare file name only (no directory, no ``.partial``); raises ``ValueError`` otherwise.
    """
    m = _NAME_RE.fullmatch(name)
    if m is None:
        raise ValueError(f"not a segment file name: {name!r}")
    year, month, day, hour, minute, second, ms = (int(g) for g in m.groups())
    try:
        t = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as e:
        raise ValueError(f"not a segment file name: {name!r} ({e})") from None
    delta = t - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return seconds * NS_PER_SECOND + ms * NS_PER_MS


def stagger_phase_ns(camera_id: str, segment_ns: int) -> int:
    """A deterministic rotation phase in ``[0, segment_ns)``, whole milliseconds, per camera.

    Spreads rotations (close, fsync, rename, index row) of hundreds of cameras over the segment
    length instead of one burst at each boundary. Stable across restarts (CRC-32 of the id).
    """
    segment_ms = segment_ns // NS_PER_MS
    if segment_ms <= 0:
        raise ValueError(f"segment length must be at least 1 ms, got {segment_ns} ns")
    return (zlib.crc32(camera_id.encode("utf-8")) % segment_ms) * NS_PER_MS
