"""Subcommands ``csud extract``, ``csud verify`` and ``csud keygen`` (docs/evidence.md).

Thin: parse arguments, load what is needed, call :mod:`csud.evidence`, print. ``csud verify
PATH`` reads no configuration at all (an OPJ has none); ``--archive`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from csud.cli.common import (
    CONFIG_HELP,
    TIME_HELP,
    ProgressLine,
    format_time,
    parse_time,
    print_json,
    require_camera,
    site_zone,
)
from csud.errors import EvidenceError, UsageError

if TYPE_CHECKING:
    from csud.config import Settings
    from csud.evidence.manifest import CameraRef
    from csud.store.index import Index

EXIT_OK = 0
EXIT_FAILURE = 1
# csud verify PATH: the files match the manifest, but nothing the verifier supplied vouches for the
# manifest (unsigned, or signed with a key merely found in the folder). Never 0 (issue 12).
EXIT_NOT_AUTHENTICATED = 3


def register(sub: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    ext = with_config(
        sub.add_parser(
            "extract",
            help="extract clips for a judicial requisition (stream copy, manifest, signature)",
            description="Cut [--from, --to) of each camera by stream copy, from the keyframe at or "
            "before --from, into DIR/<REF>/ with a manifest (signed when evidence.signing_key is set).",
        )
    )
    ext.add_argument("--camera", action="append", required=True, metavar="ID", help="repeat for several")
    ext.add_argument("--from", dest="from_", required=True, metavar="T", help=TIME_HELP)
    ext.add_argument("--to", required=True, metavar="T", help=f"{TIME_HELP} (excluded)")
    ext.add_argument("--requisition", required=True, metavar="REF", help="reference of the requisition")
    ext.add_argument("--officer", required=True, metavar="NAME", help="the requesting OPJ")
    ext.add_argument("--service", metavar="TEXT", help="the OPJ's service or unit")
    ext.add_argument("--out", required=True, metavar="DIR", help="the requisition folder goes in DIR/<REF>/")
    ext.add_argument("--force", action="store_true", help="replace an existing DIR/<REF>/")
    ext.add_argument("--json", action="store_true", help="print the manifest written (JSON) instead")
    ext.set_defaults(handler=cmd_extract)

    ver = sub.add_parser(
        "verify",
        help="check an extraction offline, or (--archive) the stored segments",
        description="PATH: an extraction folder or its manifest.json; needs nothing but its files. "
        "Exit 0: every file matches and the signature verifies under the key you supply "
        "(--public-key or --fingerprint); 3: the files match but authenticity is not established "
        "(unsigned, or no key of yours given); 1: something does not match; 2: bad usage (also a "
        "folder without manifest.json). --archive: re-hash stored segments against the index "
        "(reads the configuration).",
    )
    ver.add_argument("path", nargs="?", metavar="PATH", help="an extraction folder or its manifest.json")
    ver.add_argument("--public-key", metavar="FILE", help="the site's public key, received separately")
    ver.add_argument(
        "--fingerprint",
        metavar="SHA256:HEX",
        help="the site's key fingerprint (printed by csud keygen and by every extraction)",
    )
    ver.add_argument("--archive", action="store_true", help="check the store against the index instead")
    ver.add_argument("--camera", metavar="ID", help="with --archive: only this camera")
    ver.add_argument("--config", help=f"with --archive: {CONFIG_HELP}")
    ver.add_argument("--json", action="store_true", help="the report as JSON (same exit codes)")
    ver.set_defaults(handler=cmd_verify)

    key = sub.add_parser("keygen", help="make the site's Ed25519 signing key pair")
    key.add_argument(
        "--out", required=True, metavar="DIR", help="writes DIR/signing_key.pem and DIR/public_key.pem"
    )
    key.set_defaults(handler=cmd_keygen)


def cmd_extract(args: argparse.Namespace) -> int:
    from csud.config import load_config
    from csud.evidence.extract import Request, cameras_from, extract
    from csud.evidence.signing import load_private_key
    from csud.service.daemon import INDEX_FILENAME
    from csud.store.identity import verify_store
    from csud.store.index import Index

    from_ns, to_ns = parse_time(args.from_), parse_time(args.to)
    if to_ns <= from_ns:
        raise UsageError("--to must be after --from")
    for text, name in ((args.requisition, "--requisition"), (args.officer, "--officer")):
        if not text.strip():
            raise UsageError(f"{name} must not be empty")
    loaded = load_config(args.config)
    settings = loaded.settings
    signing_key = None
    if settings.evidence.signing_key is not None:
        signing_key = load_private_key(settings.evidence.signing_key)
    root = settings.storage.root
    index_path = root / INDEX_FILENAME
    verify_store(root)  # exit 2 unless root is the csud store (csud/store/identity.py)
    progress = ProgressLine(f"csud extract {args.requisition}")
    index = Index.open(index_path)
    try:
        refs = [_camera_ref(settings, index, cam, from_ns, to_ns, loaded.path) for cam in args.camera]
        now_ns = time.time_ns()
        cameras = cameras_from(refs)
        recording, outages = _recording_context(settings, index, [c.id for c in cameras], now_ns)
        request = Request(
            cameras=cameras,
            from_ns=from_ns,
            to_ns=to_ns,
            requisition=args.requisition,
            officer=args.officer,
            service=args.service,
            out_dir=Path(args.out),
            force=args.force,
            recording=recording,
            outages=outages,
        )
        if settings.cluster is not None:  # every node's footage (csud.cluster.queries.archive)
            from csud.cluster.queries import archive

            with archive(settings, index, [c.id for c in request.cameras], from_ns, to_ns) as (work, merged):
                result = extract(
                    request, root=work, index=merged, now_ns=now_ns, signing_key=signing_key,
                    progress=progress, zone=settings.site.zone(),
                )  # fmt: skip
        else:
            result = extract(
                request, root=root, index=index, now_ns=now_ns, signing_key=signing_key,
                progress=progress, zone=settings.site.zone(),
            )  # fmt: skip
    finally:
        progress.finish()
        index.close()
    if args.json:
        print_json({"folder": str(result.folder), "signed": result.signed, "manifest": result.manifest})
        return EXIT_OK
    for ref in request.cameras:
        if not ref.in_config:
            print(
                f"note: camera {ref.id} is not in {loaded.path}: identified from the index "
                f"(commune {ref.commune_id}, no name); the manifest says so"
            )
    for clip in result.manifest["clips"]:
        out = clip["output"]
        gaps = f", {len(clip['gaps'])} gap(s)" if clip["gaps"] else ""
        print(
            f"{out['file']}: {clip['actual']['from_local']} -> {clip['actual']['to_local']}, "
            f"{out['frames']} frames, {out['bytes']} B{gaps}, sha256 {out['sha256']}"
        )
    if signing_key is not None:
        from csud.evidence.signing import fingerprint

        signed = f"signed with the site's key, fingerprint {fingerprint(signing_key.public_key())}"
    else:
        signed = "NOT signed (no evidence.signing_key configured)"
    if result.replaced is not None:
        print(
            f"replaced the previous {result.folder} (--force): {result.replaced['file_count']} file(s) "
            "destroyed, listed with their SHA-256 in the journal (extraction_replaced)"
        )
    print(f"extraction {result.folder}: manifest.json {signed}; journaled")
    return EXIT_OK


def _recording_context(
    settings: Settings, index: Index, cameras: list[str], now_ns: int
) -> tuple[frozenset[str], dict[str, tuple[Any, ...]]]:
    """Which cameras are being recorded now, and the known outages of each (gap causes)."""
    from csud.evidence.outages import camera_context, daemon_outages, read_status
    from csud.store.journal import DAEMON_STARTED, DAEMON_STOPPED
    from csud.store.recovery import store_locked

    root = settings.storage.root
    running = store_locked(root)
    entries = index.journal_entries(kind=DAEMON_STARTED) + index.journal_entries(kind=DAEMON_STOPPED)
    daemon = daemon_outages(entries, now_ns, running)
    status = read_status(settings.metrics.listen, root) if running else None
    enabled = {c.id for c in settings.cameras if c.enabled}
    recording: set[str] = set()
    outages: dict[str, tuple[Any, ...]] = {}
    for cam in cameras:
        rows = index.segments(cam, now_ns - 86_400 * 1_000_000_000, None)
        last_end = rows[-1].end_ns if rows else None
        context = camera_context(
            cam, cam in enabled, last_end, now_ns=now_ns, running=running,
            status=None if status is None else status.get(cam), daemon=daemon,
            segment_seconds=settings.storage.segment_seconds,
        )  # fmt: skip
        if context.recording:
            recording.add(cam)
        outages[cam] = context.outages
    return frozenset(recording), outages


def _camera_ref(
    settings: Settings, index: Index, camera_id: str, from_ns: int, to_ns: int, config: Path
) -> CameraRef:
    """The camera as the manifest names it: from the configuration, else (a camera removed from
    it whose footage is still stored, perhaps held) from the index: the commune of its rows
    (those of the interval first), its name left empty, and ``in_config`` false."""
    from csud.evidence.manifest import CameraRef

    try:
        camera = settings.camera(camera_id)
    except KeyError:
        rows = index.segments(camera_id, from_ns, to_ns) or index.segments(camera_id)
        if not rows:
            raise UsageError(f"unknown camera {camera_id!r} (not in {config}, none indexed)") from None
        commune_id = rows[-1].commune
        try:
            commune_name = settings.commune(commune_id).name
        except KeyError:
            commune_name = ""
        return CameraRef(camera_id, "", commune_id, commune_name, in_config=False)
    commune = settings.commune(camera.commune)
    return CameraRef(camera.id, camera.name, commune.id, commune.name)


def cmd_verify(args: argparse.Namespace) -> int:
    if args.archive:
        if args.path or args.public_key or args.fingerprint:
            raise UsageError("--archive takes no PATH, --public-key nor --fingerprint")
        return _verify_archive(args)
    if args.camera or args.config:
        raise UsageError("--camera and --config go with --archive")
    if not args.path:
        raise UsageError("give PATH (an extraction folder or its manifest.json), or --archive")
    from csud.evidence.verify import NOT_ESTABLISHED, parse_fingerprint, verify_extraction

    path = Path(args.path)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    expected = parse_fingerprint(args.fingerprint) if args.fingerprint else None
    report = verify_extraction(path, Path(args.public_key) if args.public_key else None, expected)
    if args.json:
        print_json({"ok": report.ok, **dataclasses.asdict(report)})
        if not report.ok:
            raise EvidenceError("verification FAILED: " + "; ".join(report.problems))
        return EXIT_OK if report.authenticated else EXIT_NOT_AUTHENTICATED
    for line in report.lines:
        print(line)
    print(report.signature_line)
    if not report.ok:
        raise EvidenceError("verification FAILED: " + "; ".join(report.problems))
    if not report.authenticated:
        print(NOT_ESTABLISHED)
        print(f"integrity consistent, authenticity NOT established: {report.folder}")
        print(
            f"csud verify: the files match manifest.json but authenticity is not established "
            f"({_not_authenticated_reason(report)}); exit {EXIT_NOT_AUTHENTICATED}",
            file=sys.stderr,
        )
        return EXIT_NOT_AUTHENTICATED
    print(f"verification OK: {report.folder} (authentic: signed with the key you supplied)")
    return EXIT_OK


def _not_authenticated_reason(report: Any) -> str:
    """Why a consistent extraction is not authenticated, whole, for the one stderr line."""
    if report.signature == "not signed":
        return "manifest.json is not signed"
    if report.signature == "unchecked":
        return "manifest.json.sig present but no public key to check it"
    key_print = report.key_source.rsplit(", ", 1)[-1]
    return (
        f"signed by the key IN THIS FOLDER ({key_print}), "
        "no key of yours given: pass --public-key or --fingerprint"
    )


def _verify_archive(args: argparse.Namespace) -> int:
    from csud.config import load_config
    from csud.evidence.verify import verify_archive
    from csud.service.daemon import INDEX_FILENAME
    from csud.store.identity import verify_store
    from csud.store.index import Index
    from csud.store.journal import INTEGRITY_FAILURE, os_actor
    from csud.store.recovery import QUARANTINE_DIR

    loaded = load_config(args.config)
    root = loaded.settings.storage.root
    index_path = root / INDEX_FILENAME
    verify_store(root)  # exit 2 unless root is the csud store (csud/store/identity.py)
    progress = ProgressLine("csud verify --archive")
    index = Index.open(index_path, readonly=True)
    try:
        if args.camera:
            require_camera(loaded.settings, index, args.camera)
        report = verify_archive(root, index, args.camera, progress)
    finally:
        progress.finish()
        index.close()
    if args.json:
        print_json(_archive_json(report, site_zone(loaded.settings)))
    else:
        _print_archive(report, root / QUARANTINE_DIR)
    others_ok = True
    if loaded.settings.cluster is not None and not args.json:  # each other node checks its own store
        from csud.cli.cluster import verify_archive_elsewhere

        others_ok = verify_archive_elsewhere(loaded.settings, args.camera)
    if report.ok and others_ok:
        return EXIT_OK
    if report.ok:
        raise EvidenceError("archive check FAILED on another node (see above)")
    if report.mismatched or report.missing:
        # Journal what the register must show; the scan itself only read the index.
        index = Index.open(index_path)
        try:
            now_ns, actor = time.time_ns(), os_actor()
            failures = [(row, f"hash mismatch: {why}") for row, why in report.mismatched]
            failures += [(row, "file missing") for row in report.missing]
            for row, reason in failures:
                index.append_journal(
                    INTEGRITY_FAILURE, now_ns=now_ns, actor=actor, camera=row.camera, commune=row.commune,
                    from_ns=row.start_ns, to_ns=row.end_ns, reason=reason,
                    details={"path": row.path, "recorded_sha256": row.sha256, "during": "verify --archive"},
                )  # fmt: skip
        finally:
            index.close()
    names = (
        [row.path for row, _ in report.mismatched] + [row.path for row in report.missing] + report.unindexed
    )
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise EvidenceError(f"archive check FAILED: {shown}")


def _archive_json(report: Any, tz: Any) -> dict[str, Any]:
    def row(r: Any) -> dict[str, Any]:
        return {
            "camera": r.camera, "commune": r.commune, "path": r.path, "sha256": r.sha256,
            "start": format_time(r.start_ns, tz), "end": format_time(r.end_ns, tz),
        }  # fmt: skip

    return {
        "ok": report.ok,
        "checked": report.checked,
        "bytes": report.bytes,
        "mismatched": [{**row(r), "why": why} for r, why in report.mismatched],
        "missing": [row(r) for r in report.missing],
        "unindexed": list(report.unindexed),
        "quarantined": report.quarantined,
    }


def _print_archive(report: Any, quarantine: Path) -> None:
    for row, why in report.mismatched:
        print(f"MISMATCH  {row.path}: {why}")
    for row in report.missing:
        print(f"MISSING   {row.path}")
    for path in report.unindexed:
        print(f"UNINDEXED {path}")
    print(
        f"checked {report.checked} segment(s), {report.bytes} B: {len(report.mismatched)} mismatched, "
        f"{len(report.missing)} missing, {len(report.unindexed)} unindexed"
    )
    if report.quarantined:
        print(
            f"note: {report.quarantined} file(s) in {quarantine} "
            "(set aside by recovery, journaled; not checked)"
        )


def cmd_keygen(args: argparse.Namespace) -> int:
    from csud.evidence.signing import generate_keypair

    private_path, public_path, print_ = generate_keypair(Path(args.out))
    print(f"private key {private_path} (mode 0600): set evidence.signing_key to it; keep it on this server")
    print(f"public key  {public_path}: hand it to OPJs separately from extractions")
    print(f"fingerprint {print_}")
    return EXIT_OK
