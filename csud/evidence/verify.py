"""``csud verify``: an extraction folder offline, or the whole archive against the index.

:func:`verify_extraction` needs nothing but the folder's files (and optionally a public key the
OPJ received separately): no configuration, no store, no index. It never stops at the first
problem: every file is checked and every problem named.

:func:`verify_archive` re-hashes stored segments against the index and walks the store for files
the index does not know (``quarantine/``, where recovery sets files aside, is only counted). It
reads the index only; the caller journals what it finds.

Races with a running daemon are taken into account: the disk is walked *before* the index is
read (a segment renamed just before its row is inserted is then found in the index), and a row
whose file is missing is read again at the end (retention may have destroyed it meanwhile).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from csud.errors import EvidenceError, UsageError
from csud.evidence import manifest as mf
from csud.evidence.signing import fingerprint, load_public_key, signature_valid
from csud.store.durable import sha256_file
from csud.store.index import Index, SegmentRow
from csud.store.layout import PARTIAL_SUFFIX, SEGMENT_SUFFIX
from csud.store.recovery import QUARANTINE_DIR

NOT_SIGNED_LINE = "NOT SIGNED: the files match manifest.json, but nothing proves manifest.json itself"
NOT_ESTABLISHED = (
    "AUTHENTICITY NOT ESTABLISHED: pass the site's key (--public-key FILE, received separately) or "
    "its fingerprint (--fingerprint SHA256:..., printed by csud keygen and by every extraction)"
)
_FINGERPRINT_RE = re.compile(r"SHA256:[0-9a-f]{64}")


def parse_fingerprint(text: str) -> str:
    """``SHA256:<64 hex>`` as printed by ``csud keygen`` (case and spaces forgiven); ``UsageError``."""
    value = "".join(text.split())
    value = "SHA256:" + value[7:].lower() if value[:7].upper() == "SHA256:" else value
    if not _FINGERPRINT_RE.fullmatch(value):
        raise UsageError(f"--fingerprint {text!r} is not SHA256:<64 hex digits> (as csud keygen prints it)")
    return value


@dataclass
class ExtractionReport:
    """What ``csud verify PATH`` found.

    ``ok`` iff ``problems`` is empty (nothing contradicts the manifest or its signature);
    ``authenticated`` iff, moreover, the manifest's signature verifies under a key the verifier
    supplied (``--public-key``, or the folder's key whose fingerprint equals ``--fingerprint``).
    Exit codes: 0 both, 3 ok but not authenticated, 1 not ok."""

    folder: Path
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    signature: str = "not signed"  # "valid", "invalid", "not signed", "unchecked"
    key_source: str = ""  # which public key was used, and its fingerprint
    signature_line: str = ""  # what the signature proves, worded so that it cannot be misread
    authenticated: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def _resolve(path: Path) -> tuple[Path, Path]:
    """(folder, manifest path) from a folder or a manifest path."""
    if path.is_dir():
        return path, path / mf.MANIFEST_NAME
    return path.parent, path


def verify_extraction(
    path: Path, public_key: Path | None = None, expected_fingerprint: str | None = None
) -> ExtractionReport:
    """Check the manifest's signature and every clip's size and SHA-256 (module doc).

    Trust rule (docs/evidence.md, "Verifying"): only a key the verifier supplies establishes
    authenticity: ``public_key`` (a file received separately from the folder), or
    ``expected_fingerprint`` (then the folder's ``public_key.pem`` is used only if its fingerprint
    is that one). A key merely found in the folder proves nothing: anyone can alter a manifest,
    re-sign it with a key of their own and put that key in the folder. A folder without
    ``manifest.json`` is a usage error.
    """
    if public_key is not None and expected_fingerprint is not None:
        raise UsageError("give --public-key or --fingerprint, not both")
    folder, manifest_path = _resolve(path)
    report = ExtractionReport(folder)
    if not manifest_path.is_file():
        raise UsageError(f"{folder} holds no {mf.MANIFEST_NAME}: not an extraction folder")
    try:
        data = manifest_path.read_bytes()
    except OSError as e:
        raise EvidenceError(f"cannot read {manifest_path}: {e.strerror or e}") from None
    key_data: bytes | None = None
    if public_key is not None:
        try:
            key_data = public_key.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read --public-key {public_key}: {e.strerror or e}") from None
        key_label = f"{public_key} (given with --public-key)"
        key_name = str(public_key)
    else:
        beside = folder / mf.PUBLIC_KEY_NAME
        key_data = beside.read_bytes() if beside.is_file() else None
        key_label = f"{beside} (in this folder)"
        key_name = str(beside)

    signature_path = folder / mf.SIGNATURE_NAME
    if not signature_path.is_file():
        report.signature_line = NOT_SIGNED_LINE
    elif key_data is None:
        report.signature = "unchecked"
        report.signature_line = f"{mf.SIGNATURE_NAME} present but no public key to check it"
    else:
        key = load_public_key(key_data, key_name)
        print_ = fingerprint(key)
        report.key_source = f"{key_label}, {print_}"
        if not signature_valid(key, data, signature_path.read_bytes()):
            report.signature = "invalid"
            report.problems.append("signature invalid (manifest.json altered, or another key)")
            report.signature_line = f"signature INVALID under {report.key_source}"
        elif public_key is not None:
            report.signature = "valid"
            report.authenticated = True
            report.signature_line = f"signature valid under the given key {public_key} ({print_})"
        elif expected_fingerprint is not None and print_ == expected_fingerprint:
            report.signature = "valid"
            report.authenticated = True
            report.signature_line = f"signature valid under the site's key (fingerprint {print_}, as given)"
        elif expected_fingerprint is not None:
            report.signature = "valid"
            report.problems.append(
                f"signed with another key than the site's: the key in the folder is {print_}, "
                f"the site's is {expected_fingerprint}"
            )
            report.signature_line = f"signature valid under a key that is NOT the site's ({print_})"
        else:
            report.signature = "valid"
            report.signature_line = (
                f"signature valid under the key IN THIS FOLDER (fingerprint {print_}): "
                "compare it with the site's published fingerprint, or pass --public-key"
            )
    try:
        summary = mf.read_manifest(data)
    except ValueError as e:
        report.problems.append(str(e))
        return report
    report.lines.append(
        f"requisition {summary.requisition}: {len(summary.files)} clip(s), created {summary.created_at} "
        f"by {summary.operator} on {summary.host} for {summary.officer}"
    )
    for expected in summary.files:
        clip = folder / expected.name
        try:
            size, digest = sha256_file(clip)
        except FileNotFoundError:
            report.problems.append(f"{expected.name}: missing")
            report.lines.append(f"MISSING   {expected.name}")
            continue
        except OSError as e:
            report.problems.append(f"{expected.name}: unreadable ({e.strerror or e})")
            report.lines.append(f"UNREADABLE {expected.name}")
            continue
        if size != expected.bytes or digest != expected.sha256:
            what = "size and sha256 differ" if size != expected.bytes else "sha256 differs"
            report.problems.append(f"{expected.name}: {what} from the manifest")
            report.lines.append(f"MISMATCH  {expected.name}  ({what})")
        else:
            report.lines.append(f"OK        {expected.name}  {size} B  sha256 {digest}")
    known = {mf.MANIFEST_NAME, mf.SIGNATURE_NAME, mf.PUBLIC_KEY_NAME, *(f.name for f in summary.files)}
    extra = sorted(p.name for p in folder.iterdir() if p.name not in known)
    if extra:
        report.lines.append(f"note: files not in the manifest (not vouched for): {', '.join(extra)}")
    return report


@dataclass
class ArchiveReport:
    checked: int = 0
    bytes: int = 0
    mismatched: list[tuple[SegmentRow, str]] = field(default_factory=list)
    missing: list[SegmentRow] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)
    quarantined: int = 0  # files recovery set aside in <root>/quarantine/: known, not a failure

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.unindexed)


def _walk_segments(root: Path, camera: str | None) -> set[str]:
    """Relative paths of closed segment files (``*.mp4``; ``.partial`` files, the index and
    ``quarantine/`` are not)."""
    found: set[str] = set()
    communes = [p for p in root.iterdir() if p.name != QUARANTINE_DIR]
    bases = [root] if camera is None else [p / camera for p in communes if (p / camera).is_dir()]
    for base in bases:
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if dirpath == str(root):
                dirnames[:] = [d for d in dirnames if d != QUARANTINE_DIR]
            for name in filenames:
                if name.endswith(SEGMENT_SUFFIX) and not name.endswith(PARTIAL_SUFFIX):
                    found.add(Path(dirpath, name).relative_to(root).as_posix())
    return found


def _count_quarantined(root: Path, camera: str | None) -> int:
    """Files under ``<root>/quarantine/<commune>/<camera>/`` (of ``camera``, or all)."""
    count = 0
    for dirpath, _, filenames in os.walk(root / QUARANTINE_DIR):
        parts = Path(dirpath).relative_to(root).parts  # quarantine, commune, camera, ...
        if camera is None or parts[2:3] == (camera,):
            count += len(filenames)
    return count


def verify_archive(
    root: Path,
    index: Index,
    camera: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ArchiveReport:
    """Re-hash every indexed segment (of ``camera``, or all) and find unindexed files."""
    report = ArchiveReport()
    on_disk = _walk_segments(root, camera) if root.is_dir() else set()
    report.quarantined = _count_quarantined(root, camera)
    cameras = [camera] if camera is not None else index.cameras()
    rows = [row for cam in cameras for row in index.segments(cam)]
    being_deleted = {ref.path for ref, _ in index.deleting()}
    total = sum(r.bytes for r in rows)
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(done, total), total)

    for row in rows:
        try:
            size, digest = sha256_file(root / row.path, on_bytes=on_bytes)
        except FileNotFoundError:
            if index.segment(row.id) is not None:  # still indexed: not destroyed meanwhile
                report.missing.append(row)
            continue
        except OSError as e:
            report.mismatched.append((row, f"unreadable ({e.strerror or e})"))
            continue
        report.checked += 1
        report.bytes += size
        if size != row.bytes or digest != row.sha256:
            report.mismatched.append(
                (row, f"sha256 {digest} ({size} B), recorded {row.sha256} ({row.bytes} B)")
            )
    indexed = {row.path for row in rows} | being_deleted
    if camera is not None:
        on_disk = {p for p in on_disk if p.split("/")[1:2] == [camera]}
    report.unindexed = sorted(on_disk - indexed)
    return report
