"""``csud extract``: clips for a judicial requisition, by stream copy, with a manifest, signed.

Synchronous on purpose: this runs in the CLI process, not in the daemon's event loop (the
daemon keeps recording meanwhile; SQLite WAL lets both use the index).

Steps, in order; any failure leaves nothing in the output directory:

1. Plan every camera (:func:`csud.evidence.clip.plan_clip`) from the index. A reversed interval, an
   unknown camera or an interval without footage is refused before anything is written.
2. Create a hidden temporary folder next to ``DIR/<REF>`` (same filesystem, so step 6 is a
   rename).
3. For each source segment, in order: read the whole file once into memory, hash those bytes
   (SHA-256) and compare their size and hash with the index. A mismatch, or a file gone
   meanwhile, journals an ``integrity_failure`` and aborts (:class:`IntegrityError`, exit 1,
   naming the segment). Then demux its packets with PyAV from those same bytes (the file is not
   opened again) and mux them, never decoded, into the camera's output MP4 (``+faststart``,
   ``creation_time`` = the actual start).
4. Hash each output file; write ``manifest.json`` (:mod:`csud.evidence.manifest`); with a
   signing key, ``manifest.json.sig`` and a copy of the public key (``public_key.pem``).
5. fsync every file and the folder, then journal the ``extraction`` (with the output hashes).
   The journal entry comes first so that no extraction is ever handed over unjournaled.
6. Rename the folder to ``DIR/<REF>``, fsync ``DIR``. An existing ``DIR/<REF>`` (perhaps already
   handed over) is refused unless ``--force``; with it, the old folder is moved aside first, every
   file in it hashed and an ``extraction_replaced`` entry journaled (files, sizes, SHA-256, what
   its manifest said), then the new folder takes its place and the old one is removed. On any
   failure before the rename, the old folder is put back.

Modes: the staging folder stays 0700 (``mkdtemp``), so the published folder is 0700; clips and
manifest are 0640 whatever the umask (issue 12: footage of people is never world-readable).

Timeline of a clip (real time is kept): the output's time 0 is the actual start (the keyframe
at or before ``from``) and every frame sits at its recorded time minus that start, across
segment boundaries *and* gaps. A gap therefore stays a gap: players hold the last frame before
it on screen for its duration. Output timestamps are 1/90000 s and strictly increase.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from csud import __version__
from csud.config import system_zone
from csud.errors import CsudError, EvidenceError, UsageError
from csud.evidence import manifest as mf
from csud.evidence.clip import (
    ClipPlan,
    ClipPlanError,
    ClipSource,
    EmptyIntervalError,
    FragmentSpan,
    Outage,
    SegmentSpan,
    describe_change,
    plan_clip,
)
from csud.evidence.replace import describe_replaced, move_aside
from csud.evidence.signing import public_pem, sign
from csud.recording.writer import MP4_TIMESCALE, ns_to_ticks
from csud.store.durable import FOOTAGE_DIR_MODE, FOOTAGE_FILE_MODE, fsync_path, open_footage, sha256_file
from csud.store.index import Index
from csud.store.journal import EXTRACTION, EXTRACTION_REPLACED, INTEGRITY_FAILURE, os_actor

HASH_CHUNK_BYTES = 4 << 20
NS_PER_SECOND = 1_000_000_000
_TICK = Fraction(1, MP4_TIMESCALE)
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_FOLDER_NAME = 128

Progress = Callable[[int, int], None]
"""``progress(done, total)``: units are source bytes, each counted twice (hashed, then copied)."""


class IntegrityError(EvidenceError):
    """A stored segment is not the file that was recorded (size or SHA-256 differs, or gone)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One extraction. ``cameras`` are :class:`csud.evidence.manifest.CameraRef` (from the config)."""

    cameras: tuple[mf.CameraRef, ...]
    from_ns: int
    to_ns: int
    requisition: str
    officer: str
    service: str | None
    out_dir: Path
    force: bool = False
    # Per camera id: whether it is being recorded now, and known outages (csud.evidence.outages).
    recording: frozenset[str] = frozenset()
    outages: Mapping[str, tuple[Outage, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Result:
    folder: Path
    manifest: dict[str, Any]
    signed: bool
    replaced: dict[str, Any] | None = None  # with --force: what the old folder held (journaled)


def folder_name(requisition: str) -> str:
    """The folder of a requisition: its reference with anything but ``[A-Za-z0-9._-]`` (and a
    leading ``.``) as ``_``.

    The manifest keeps the reference exactly as given (``PV 2026/001234`` is a usual form).
    """
    name = _UNSAFE_CHARS.sub("_", requisition.strip())
    if name.startswith("."):
        name = "_" + name[1:]  # never a hidden folder
    if not name.strip("._") or len(name) > MAX_FOLDER_NAME:
        raise UsageError(f"requisition reference {requisition!r} cannot name a folder")
    return name


def segment_spans(index: Index, camera: str, from_ns: int, to_ns: int) -> list[SegmentSpan]:
    """The index rows of ``camera`` overlapping the interval, as the clip plan takes them."""
    spans = []
    for row in index.segments(camera, from_ns, to_ns):
        fragments = tuple(FragmentSpan(f.start_ns, f.offset, f.frames) for f in index.fragments(row.id))
        spans.append(
            SegmentSpan(
                row.id, row.path, row.start_ns, row.end_ns, row.frames, row.bytes, row.sha256, fragments
            )
        )
    return spans


def plan_all(index: Index, request: Request) -> list[ClipPlan]:
    """Step 1. ``UsageError`` for an empty interval; ``EvidenceError`` for a camera without footage."""
    plans = []
    for camera in request.cameras:
        spans = segment_spans(index, camera.id, request.from_ns, request.to_ns)
        try:
            plans.append(
                plan_clip(
                    spans,
                    request.from_ns,
                    request.to_ns,
                    recording=camera.id in request.recording,
                    outages=request.outages.get(camera.id, ()),
                )
            )
        except EmptyIntervalError as e:
            raise UsageError(str(e)) from None
        except ClipPlanError as e:
            raise EvidenceError(f"camera {camera.id}: {e}") from None
    return plans


def read_segment(root: Path, segment: SegmentSpan, on_bytes: Callable[[int], None] | None = None) -> bytes:
    """Step 3's check: read the file at ``segment.path`` once and return its bytes, which are
    exactly what was indexed (size and SHA-256).

    The caller demuxes these same bytes: the file is never opened again, so what is copied is
    what was hashed even if the file is replaced or destroyed by retention meanwhile. Segments
    are bounded (tens of MB), so holding one in memory is fine.
    """
    path = root / segment.path
    try:
        with path.open("rb", buffering=0) as f:
            data = bytearray()
            while chunk := f.read(HASH_CHUNK_BYTES):
                data += chunk
                if on_bytes is not None:
                    on_bytes(len(chunk))
    except FileNotFoundError:
        raise IntegrityError(f"segment {segment.path} is missing from the store") from None
    except OSError as e:
        raise IntegrityError(f"segment {segment.path} cannot be read: {e.strerror or e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != segment.bytes or digest != segment.sha256:
        raise IntegrityError(
            f"segment {segment.path} does not match its recorded hash "
            f"(recorded {segment.sha256[:16]}…, {segment.bytes} B; now {digest[:16]}…, {len(data)} B)"
        )
    return bytes(data)


class _ConfigurationChange(Exception):
    """The next source's stream configuration differs: a new clip starts there."""

    def __init__(self, template: tuple[str, int, int, bytes]) -> None:
        self.template = template


@dataclass
class _CopyState:
    out: Any
    base_ns: int  # the clip's time 0 (its first keyframe)
    path: Path
    stream: Any = None
    template: tuple[str, int, int, bytes] | None = None  # codec, width, height, extradata
    last_dts: int = -1
    reorder_ticks: int | None = None  # the output's decode delay: the first segment's (B-frames)
    frames: int = 0
    first_ns: int | None = None
    end_ns: int = 0


def _open_output(path: Path, actual_from_ns: int) -> Any:
    out = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
    # MP4 keeps whole seconds; the manifest has the exact time.
    out.metadata["creation_time"] = mf.utc_iso(actual_from_ns)
    return out


def _copy_source(
    state: _CopyState,
    data: bytes,
    segment: SegmentSpan,
    copy_from_ns: int,
    plan: ClipPlan,
    on_bytes: Callable[[int], None],
) -> None:
    """Mux the packets of ``segment`` (its checked bytes, ``data``) from its keyframe at
    ``copy_from_ns`` up to ``plan.to_ns``."""
    with av.open(io.BytesIO(data), "r") as source:
        in_stream = source.streams.video[0]
        ctx = in_stream.codec_context
        template = (ctx.name, ctx.width, ctx.height, bytes(ctx.extradata or b""))
        if state.stream is None:
            state.stream = state.out.add_stream_from_template(in_stream)
            state.stream.time_base = _TICK
            state.template = template
        elif template != state.template:
            raise _ConfigurationChange(template)  # nothing of this source muxed yet
        time_base = in_stream.time_base or _TICK
        # Packet times are relative to the segment start (docs/storage.md, "File format").
        offset_ticks = ns_to_ticks(segment.start_ns - state.base_ns)
        # The writer rounded each frame's ns to ticks (ns_to_ticks), so ns rebuilt from ticks can
        # be off by up to half a tick: the keyframe is found by comparing ticks, rounded the same way.
        copy_from_ticks = ns_to_ticks(copy_from_ns - segment.start_ns)
        first = True
        counted = 0
        origin_ticks: int | None = None  # the file's first pts: the segment start (writer.py)
        for packet in source.demux(in_stream):
            if packet.dts is None or packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            dts_ticks = int(packet.dts * time_base / _TICK)
            pts_ticks = int((packet.pts if packet.pts is not None else packet.dts) * time_base / _TICK)
            if origin_ticks is None:
                # B-frames: the writer shifts a segment's times by its decode delay (first pts =
                # delay, first dts = 0); make them relative to the segment start again.
                origin_ticks = pts_ticks
                if state.reorder_ticks is None:
                    state.reorder_ticks = origin_ticks
            dts_ticks -= origin_ticks
            pts_ticks -= origin_ticks
            duration_ticks = int((packet.duration or 0) * time_base / _TICK)
            if pts_ticks < copy_from_ticks:
                continue
            if pts_ticks == copy_from_ticks:
                pts_ns = copy_from_ns  # the index's exact time
            else:
                pts_ns = segment.start_ns + round(pts_ticks * _TICK * NS_PER_SECOND)
            if pts_ns >= plan.to_ns:
                break
            if first and not packet.is_keyframe:
                raise EvidenceError(f"segment {segment.path}: no keyframe where the index has one")
            first = False
            delay = state.reorder_ticks or 0
            dts = max(dts_ticks + offset_ticks + delay, state.last_dts + 1)
            packet.dts = dts
            packet.pts = max(pts_ticks + offset_ticks + delay, dts)
            packet.time_base = _TICK
            packet.stream = state.stream
            size = packet.size
            state.out.mux(packet)
            state.last_dts = dts
            state.frames += 1
            if state.first_ns is None:
                state.first_ns = pts_ns
            state.end_ns = max(state.end_ns, pts_ns + round(duration_ticks * _TICK * NS_PER_SECOND))
            on_bytes(size)
            counted += size
        on_bytes(max(segment.bytes - counted, 0))  # the rest of the file (headers, skipped GOPs)


def output_name(camera: str, actual_from_ns: int) -> str:
    """``<camera>_<YYYYMMDDTHHMMSS.mmm>Z.mp4``: the camera and the clip's actual start, UTC."""
    stamp = mf.utc_iso(actual_from_ns)  # 2026-09-21T14:13:20.040000Z
    compact = stamp[:23].replace("-", "").replace(":", "")
    return f"{camera}_{compact}Z.mp4"


@dataclass(frozen=True, slots=True)
class ClipPart:
    """One output file of a camera: the sources of one continuous stream configuration."""

    sources: tuple[ClipSource, ...]
    actual_from_ns: int
    actual_to_ns: int
    output: mf.OutputFile
    change: str | None  # what changed from the previous part (None for the first)


def write_clip(
    root: Path,
    plan: ClipPlan,
    camera: mf.CameraRef,
    folder: Path,
    on_bytes: Callable[[int], None],
    on_integrity_failure: Callable[[SegmentSpan, str], None],
) -> list[ClipPart]:
    """Steps 3-4 for one camera: check and copy every source into ``folder``, one file per
    continuous stream configuration (a camera restart may change its parameter sets, or more:
    :func:`csud.evidence.clip.describe_change` names what)."""
    parts: list[ClipPart] = []
    state: _CopyState | None = None
    used: list[ClipSource] = []
    change: str | None = None
    try:
        for source in plan.sources:
            try:
                data = read_segment(root, source.segment, on_bytes)
            except IntegrityError as e:
                on_integrity_failure(source.segment, str(e))
                raise
            for _ in range(2):  # at most one new part per source
                if state is None:
                    start = plan.actual_from_ns if not parts else source.copy_from_ns
                    path = folder / output_name(camera.id, start)
                    state = _CopyState(_open_output(path, start), start, path)
                try:
                    _copy_source(state, data, source.segment, source.copy_from_ns, plan, on_bytes)
                except _ConfigurationChange as new:
                    assert state.template is not None
                    parts.append(_finish(state, camera, tuple(used), change))
                    change = describe_change(state.template, new.template)
                    state, used = None, []
                    continue
                used.append(source)
                break
            del data
        if state is not None:
            parts.append(_finish(state, camera, tuple(used), change))
            state = None
    finally:
        if state is not None:
            with contextlib.suppress(Exception):
                state.out.close()
    return parts


def _finish(
    state: _CopyState, camera: mf.CameraRef, sources: tuple[ClipSource, ...], change: str | None
) -> ClipPart:
    out_path = state.path
    try:
        state.out.close()
    except av.FFmpegError as e:
        raise EvidenceError(f"camera {camera.id}: writing the clip failed: {e}") from e
    if state.frames == 0 or state.first_ns is None or state.template is None:
        raise EvidenceError(f"camera {camera.id}: no frame recorded in the interval")
    out_path.chmod(FOOTAGE_FILE_MODE)  # PyAV created it under the umask
    size, digest = sha256_file(out_path)
    codec, width, height, _ = state.template
    output = mf.OutputFile(
        name=out_path.name, bytes=size, sha256=digest, duration_ns=state.end_ns - state.first_ns,
        frames=state.frames, codec=codec, width=width, height=height,
    )  # fmt: skip
    return ClipPart(sources, state.first_ns, state.end_ns, output, change)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb", opener=open_footage) as f:
        f.write(data)


@contextlib.contextmanager
def _staging(out_dir: Path, name: str) -> Iterator[Path]:
    """A hidden folder next to ``out_dir/name``, removed unless the caller renamed it away."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=FOOTAGE_DIR_MODE)
        # mkdtemp makes it 0700, and it stays so: the published folder is never wider (issue 12).
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=out_dir))
    except OSError as e:
        raise CsudError(f"cannot create the output folder in {out_dir}: {e.strerror or e}") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, final: Path, aside: Path | None) -> None:
    """Step 6: rename ``staging`` to ``final`` (the old one already moved ``aside``), fsync the
    parent, then remove what was set aside; on failure the old folder is put back."""
    try:
        os.rename(staging, final)
    except OSError:
        if aside is not None:
            os.rename(aside, final)  # put the previous extraction back
        raise
    fsync_path(final.parent, directory=True)
    if aside is not None:
        shutil.rmtree(aside.parent, ignore_errors=True)


def extract(
    request: Request,
    *,
    root: Path,
    index: Index,
    now_ns: int,
    signing_key: Ed25519PrivateKey | None = None,
    progress: Progress | None = None,
    zone: tuple[tzinfo, str] | None = None,
    operator: str | None = None,
) -> Result:
    """Run the extraction described by ``request`` (module doc, steps 1-6)."""
    name = folder_name(request.requisition)
    tz, tz_name = zone or system_zone()  # callers pass the site's ([site] timezone)
    if request.to_ns > now_ns:
        raise UsageError(
            f"--to {mf.local_iso(request.to_ns, tz)} is after now ({mf.local_iso(now_ns, tz)}): what "
            "comes after now is not yet recorded; ask for an interval that ends now or earlier"
        )
    final = request.out_dir.absolute() / name
    if (final.exists() or final.is_symlink()) and not request.force:
        raise UsageError(f"{final} exists (use --force to replace it)")
    plans = plan_all(index, request)
    operator = operator or os_actor()
    total = 2 * sum(p.total_bytes for p in plans)
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(done, total), total)

    def on_integrity_failure(camera: mf.CameraRef) -> Callable[[SegmentSpan, str], None]:
        def record(segment: SegmentSpan, message: str) -> None:
            index.append_journal(
                INTEGRITY_FAILURE, now_ns=now_ns, actor=operator, camera=camera.id,
                commune=camera.commune_id, from_ns=segment.start_ns, to_ns=segment.end_ns,
                requisition=request.requisition, reason=message,
                details={"path": segment.path, "recorded_sha256": segment.sha256, "during": "extract"},
            )  # fmt: skip

        return record

    with _staging(final.parent, name) as staging:
        clips = []
        for camera, plan in zip(request.cameras, plans, strict=True):
            parts = write_clip(root, plan, camera, staging, on_bytes, on_integrity_failure(camera))
            for k, part in enumerate(parts):
                clips.append(mf.ClipRecord(camera, _part_plan(plan, parts, k), part.actual_from_ns,
                                           part.actual_to_ns, part.output, part.change))  # fmt: skip
        header = mf.Header(
            requisition=request.requisition,
            officer=request.officer,
            service=request.service,
            operator=operator,
            host=socket.gethostname(),
            csud_version=__version__,
            created_ns=now_ns,
            timezone=tz_name,
        )
        manifest = mf.build_manifest(header, clips, tz)
        data = mf.manifest_bytes(manifest)
        _write_file(staging / mf.MANIFEST_NAME, data)
        if signing_key is not None:
            _write_file(staging / mf.SIGNATURE_NAME, sign(signing_key, data))
            _write_file(staging / mf.PUBLIC_KEY_NAME, public_pem(signing_key.public_key()))
        for path in staging.iterdir():
            fsync_path(path)
        fsync_path(staging, directory=True)
        aside: Path | None = None
        replaced: dict[str, Any] | None = None
        try:
            if final.exists() or final.is_symlink():
                if not request.force:
                    raise UsageError(f"{final} exists (use --force to replace it)")
                aside = move_aside(final)
                assert aside is not None
                replaced = describe_replaced(aside)
                # Journaled before anything is destroyed: a delivered extraction may be evidence.
                index.append_journal(
                    EXTRACTION_REPLACED, now_ns=now_ns, actor=operator, requisition=request.requisition,
                    reason="replaced by extract --force", details={"folder": str(final), **replaced},
                )  # fmt: skip
            _journal_extraction(index, request, clips, final, data, signing_key is not None, now_ns, operator)
            _publish(staging, final, aside)
        except OSError as e:
            raise CsudError(f"cannot move the extraction to {final}: {e.strerror or e}") from None
        except BaseException:
            if aside is not None and not (final.exists() or final.is_symlink()):
                os.rename(aside, final)  # nothing destroyed: the old folder goes back
                shutil.rmtree(aside.parent, ignore_errors=True)
            raise
    return Result(final, manifest, signing_key is not None, replaced)


def _part_plan(plan: ClipPlan, parts: Sequence[ClipPart], k: int) -> ClipPlan:
    """The plan of part ``k``: its sources, and the gaps from its start to the next part's."""
    start = plan.actual_from_ns if k == 0 else parts[k].sources[0].copy_from_ns
    end = parts[k + 1].sources[0].copy_from_ns if k + 1 < len(parts) else None
    gaps = tuple(
        g for g in plan.gaps if (k == 0 or g.start_ns >= start) and (end is None or g.start_ns < end)
    )
    actual_to = plan.actual_to_ns if end is None else parts[k].actual_to_ns
    return dataclasses.replace(
        plan, sources=parts[k].sources, gaps=gaps, actual_from_ns=start, actual_to_ns=actual_to
    )


def _journal_extraction(
    index: Index,
    request: Request,
    clips: Sequence[mf.ClipRecord],
    folder: Path,
    manifest_data: bytes,
    signed: bool,
    now_ns: int,
    operator: str,
) -> None:
    """One ``extraction`` entry per camera (so each commune's register lists its own), each
    naming the whole requisition's cameras and the manifest's hash."""
    manifest_sha256 = hashlib.sha256(manifest_data).hexdigest()
    for clip in clips:
        index.append_journal(
            EXTRACTION,
            now_ns=now_ns,
            actor=operator,
            camera=clip.camera.id,
            commune=clip.camera.commune_id,
            from_ns=request.from_ns,
            to_ns=request.to_ns,
            requisition=request.requisition,
            details={
                "officer": request.officer,
                "service": request.service,
                "cameras": [c.id for c in request.cameras],
                "actual_from_ns": clip.actual_from_ns,
                "actual_to_ns": clip.actual_to_ns,
                "gaps": len(clip.plan.gaps),
                "folder": str(folder),
                "file": clip.output.name,
                "bytes": clip.output.bytes,
                "sha256": clip.output.sha256,
                "frames": clip.output.frames,
                "manifest_sha256": manifest_sha256,
                "signed": signed,
            },
        )


def cameras_from(refs: Sequence[mf.CameraRef]) -> tuple[mf.CameraRef, ...]:
    """``refs`` without repeats, first occurrence kept."""
    seen: dict[str, mf.CameraRef] = {}
    for ref in refs:
        seen.setdefault(ref.id, ref)
    return tuple(seen.values())
