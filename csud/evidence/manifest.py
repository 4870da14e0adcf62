"""The extraction manifest: what an OPJ receives beside the clips, field by field in docs/evidence.md.

Pure: no I/O, no clock (the time zone and every time are passed in). :func:`build_manifest` makes
the document, :func:`manifest_bytes` its exact bytes (the signature covers exactly these bytes),
:func:`read_manifest` reads one back for ``csud verify``.

Invariants:

- The bytes are deterministic: keys in the fixed order built here (not sorted: a person reads
  this file), ``indent=2``, UTF-8 without ``\\u`` escapes, one trailing newline. The same inputs
  always give the same bytes.
- Every time is given three ways: UTC ISO 8601 with microseconds (``...Z``), the site's local
  time with its offset, and integer UTC nanoseconds (exact, what the index holds).
- A manifest names its clips by bare file name: :func:`read_manifest` refuses a name with a
  directory part or a leading dot, so verifying can never read outside the folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from csud.evidence.clip import ClipPlan

SCHEMA = "csud-extraction/1"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.json.sig"
PUBLIC_KEY_NAME = "public_key.pem"
NS_PER_SECOND = 1_000_000_000
NS_PER_US = 1_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def utc_iso(ns: int) -> str:
    """UTC nanoseconds -> ``2026-09-21T14:13:20.000000Z`` (microseconds, truncated)."""
    return _moment(ns).isoformat(timespec="microseconds").replace("+00:00", "Z")


def local_iso(ns: int, tz: tzinfo) -> str:
    """UTC nanoseconds -> the local time in ``tz`` with its offset, e.g. ``...16:13:20.000000+02:00``."""
    return _moment(ns).astimezone(tz).isoformat(timespec="microseconds")


def _moment(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // NS_PER_US)


def interval_json(from_ns: int, to_ns: int, tz: tzinfo) -> dict[str, Any]:
    return {
        "from": utc_iso(from_ns),
        "to": utc_iso(to_ns),
        "from_local": local_iso(from_ns, tz),
        "to_local": local_iso(to_ns, tz),
        "from_ns": from_ns,
        "to_ns": to_ns,
        "seconds": (to_ns - from_ns) / NS_PER_SECOND,
    }


@dataclass(frozen=True, slots=True)
class Header:
    """Who extracted what for which procedure. ``service`` is optional (``None``)."""

    requisition: str
    officer: str
    service: str | None
    operator: str
    host: str
    csud_version: str
    created_ns: int
    timezone: str  # the site's zone name (IANA when known), for the ``*_local`` times


NOT_IN_CONFIG_NOTE = "not in the configuration at extraction time: identified from the index"


@dataclass(frozen=True, slots=True)
class CameraRef:
    """A camera as the manifest names it. ``in_config`` is false for a camera removed from the
    configuration whose footage is still stored: identified from the index (commune from its
    rows, no name), and the manifest says so."""

    id: str
    name: str
    commune_id: str
    commune_name: str
    in_config: bool = True


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One clip file as written. ``duration_ns``: first frame's start to last frame's end."""

    name: str
    bytes: int
    sha256: str
    duration_ns: int
    frames: int
    codec: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ClipRecord:
    """One camera's clip: its plan, the interval actually copied (from the packets) and the file."""

    camera: CameraRef
    plan: ClipPlan
    actual_from_ns: int
    actual_to_ns: int
    output: OutputFile
    change: str | None = None  # a later clip of the same camera: what changed (camera restart)


def build_manifest(header: Header, clips: Sequence[ClipRecord], tz: tzinfo) -> dict[str, Any]:
    """The manifest document (see docs/evidence.md). Key order here is the order in the file."""
    return {
        "schema": SCHEMA,
        "requisition": header.requisition,
        "officer": header.officer,
        "service": header.service,
        "operator": header.operator,
        "host": header.host,
        "csud_version": header.csud_version,
        "created_at": utc_iso(header.created_ns),
        "created_at_local": local_iso(header.created_ns, tz),
        "timezone": header.timezone,
        "clips": [_clip_json(c, tz) for c in clips],
    }


def _clip_json(clip: ClipRecord, tz: tzinfo) -> dict[str, Any]:
    out = clip.output
    return {
        "camera": {
            "id": clip.camera.id,
            "name": clip.camera.name,
            "commune": {"id": clip.camera.commune_id, "name": clip.camera.commune_name},
            **({} if clip.camera.in_config else {"note": NOT_IN_CONFIG_NOTE}),
        },
        **({"starts_after": clip.change} if clip.change else {}),
        "requested": interval_json(clip.plan.from_ns, clip.plan.to_ns, tz),
        "actual": interval_json(clip.actual_from_ns, clip.actual_to_ns, tz),
        "gaps": [
            {
                **interval_json(g.start_ns, g.end_ns, tz),
                "reason": g.reason,
                **({"cause": g.cause} if g.cause else {}),
            }
            for g in clip.plan.gaps
        ],
        "sources": [
            {
                "path": s.segment.path,
                "interval": interval_json(s.segment.start_ns, s.segment.end_ns, tz),
                "copied_from": utc_iso(s.copy_from_ns),
                "copied_from_ns": s.copy_from_ns,
                "bytes": s.segment.bytes,
                "frames": s.segment.frames,
                "sha256": s.segment.sha256,
            }
            for s in clip.plan.sources
        ],
        "output": {
            "file": out.name,
            "bytes": out.bytes,
            "sha256": out.sha256,
            "duration_seconds": out.duration_ns / NS_PER_SECOND,
            "frames": out.frames,
            "codec": out.codec,
            "width": out.width,
            "height": out.height,
        },
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The exact bytes written to ``manifest.json`` (and signed)."""
    return (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


@dataclass(frozen=True, slots=True)
class ExpectedFile:
    """A clip file a manifest vouches for."""

    name: str
    bytes: int
    sha256: str
    camera: str


@dataclass(frozen=True, slots=True)
class ManifestSummary:
    requisition: str
    officer: str
    created_at: str
    operator: str
    host: str
    files: tuple[ExpectedFile, ...]


def read_manifest(data: bytes) -> ManifestSummary:
    """Parse and check the parts of a manifest that verification needs; ``ValueError`` if malformed."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{MANIFEST_NAME} is not valid UTF-8 JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{MANIFEST_NAME} is not a JSON object")
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{MANIFEST_NAME}: unknown schema {doc.get('schema')!r} (this csud reads {SCHEMA})")
    clips = doc.get("clips")
    if not isinstance(clips, list) or not clips:
        raise ValueError(f"{MANIFEST_NAME}: no clips")
    files: list[ExpectedFile] = []
    for i, clip in enumerate(clips):
        try:
            output = clip["output"]
            name, size, digest = output["file"], output["bytes"], output["sha256"]
            camera = clip["camera"]["id"]
        except (TypeError, KeyError) as e:
            raise ValueError(f"{MANIFEST_NAME}: clips[{i}] lacks {e}") from None
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"{MANIFEST_NAME}: clips[{i}].output.file {name!r} is not a plain file name")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"{MANIFEST_NAME}: clips[{i}].output.bytes is not a size")
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
            raise ValueError(f"{MANIFEST_NAME}: clips[{i}].output.sha256 is not a SHA-256")
        files.append(ExpectedFile(name, size, digest, str(camera)))
    if len({f.name for f in files}) != len(files):
        raise ValueError(f"{MANIFEST_NAME}: a file is listed twice")
    return ManifestSummary(
        requisition=str(doc.get("requisition", "")),
        officer=str(doc.get("officer", "")),
        created_at=str(doc.get("created_at", "")),
        operator=str(doc.get("operator", "")),
        host=str(doc.get("host", "")),
        files=tuple(files),
    )
