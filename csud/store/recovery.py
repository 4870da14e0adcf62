"""Startup recovery of segment files (steps 4-6 of docs/storage.md, "Startup"), and the
read-only consistency check behind ``csud check``.

:class:`_Recovery` does steps 4-6 one date directory at a time; :mod:`csud.store.startup`
runs it on the latest days before cameras record and on the rest in the background;
:func:`recover_store` runs it on everything (tests, tools):

4. **Partial segments**: scanned, cut back to the last whole fragment, fsynced, hashed,
   renamed, indexed with a ``recovered`` journal entry; with no whole fragment (or a final
   name taken) moved to ``<root>/quarantine/`` and journaled. Recovery deletes nothing.
5. **Files without a row**: indexed if whole from first to last byte, else quarantined.
6. **Rows without a file**: marked (``segments.missing_ns``), logged and journaled
   (``integrity_failure``); unmarked if the file comes back.

Every step is idempotent: a crash during recovery is recovered by the next start.

Which files: ``<commune>/<camera>/YYYY/MM/DD/<name>.mp4[.partial]`` exactly (the layout of
:mod:`csud.store.layout`); anything else under the root (the index, logs, ``quarantine/``) is
left alone. Cost: one ``scandir`` walk of the store and one indexed query per camera; only
partial and orphan files are read.

:class:`StoreLock` is an exclusive ``flock`` on ``<root>/.csud.lock`` held by the daemon while
it runs: a second daemon on the same root is refused (it would recover the other one's open
partial files), and ``csud check`` knows whether ``.partial`` files are open or left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from csud.errors import StorageError
from csud.log import get_logger
from csud.store.durable import fsync_dir, makedirs_durable, sha256_file
from csud.store.index import Index
from csud.store.journal import INTEGRITY_FAILURE, RECOVERED, os_actor
from csud.store.layout import (
    PARTIAL_SUFFIX,
    QUARANTINE_DIR,
    SEGMENT_SUFFIX,
    parse_segment_filename,
    validate_path_component,
)
from csud.store.records import FragmentInfo, SegmentInfo
from csud.store.scan import ScanResult, scan

LOCK_FILENAME = ".csud.lock"
MISSING_PATHS_JOURNALED = 100  # per camera and start; the count is always complete


def _log() -> Any:
    # Not at import time: the daemon imports this module before it configures logging.
    return get_logger(component="recovery")


# -- the store lock -----------------------------------------------------------------------


class StoreLock:
    """An exclusive ``flock`` on ``<root>/.csud.lock`` for the life of a daemon (see module doc).

    The kernel drops it when the process dies, so a SIGKILL never leaves a stale lock.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, root: Path) -> StoreLock:
        path = root / LOCK_FILENAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StorageError(f"another csud daemon is recording into {root} ({path} is locked)") from None
        except OSError as e:
            os.close(fd)
            raise StorageError(f"lock {path}: {e.strerror or e}") from e
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()


def store_locked(root: Path) -> bool:
    """True if a daemon holds the store lock of ``root`` now (read-only probe)."""
    try:
        fd = os.open(root / LOCK_FILENAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# -- walking the store ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreFile:
    relpath: str  # of the final name (without ``.partial``)
    partial: bool
    size: int
    mtime_ns: int = 0

    @property
    def disk_relpath(self) -> str:
        return self.relpath + PARTIAL_SUFFIX if self.partial else self.relpath


def _is_component(name: str, kind: str) -> bool:
    try:
        validate_path_component(kind, name)
    except ValueError:
        return False
    return True


def camera_dirs(root: Path) -> Iterator[tuple[str, str]]:
    """``(commune, camera)`` directories under ``root`` (``quarantine`` and dot names skipped)."""
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as communes:
        for commune in sorted(communes, key=lambda e: e.name):
            if commune.name == QUARANTINE_DIR or not commune.is_dir(follow_symlinks=False):
                continue
            if not _is_component(commune.name, "commune"):
                continue
            with os.scandir(commune.path) as cameras:
                for camera in sorted(cameras, key=lambda e: e.name):
                    if camera.is_dir(follow_symlinks=False) and _is_component(camera.name, "camera"):
                        yield commune.name, camera.name


def camera_files(root: Path, commune: str, camera: str, sizes: bool = True) -> dict[str, StoreFile]:
    """Segment and partial files of one camera (``YYYY/MM/DD`` levels only), keyed by their
    path on disk (a partial's key ends in ``.partial``, so ``NAME.mp4`` and its partial can
    both be present). ``sizes=False`` skips each file's ``stat`` (sizes are then 0)."""
    out: dict[str, StoreFile] = {}
    for level in _date_dirs(root / commune / camera):
        out.update(day_files(root, commune, camera, level, sizes))
    return out


def day_files(root: Path, commune: str, camera: str, day: str, sizes: bool = True) -> dict[str, StoreFile]:
    """:func:`camera_files` of one date directory ``day`` (``YYYY/MM/DD``)."""
    out: dict[str, StoreFile] = {}
    rel_dir = f"{commune}/{camera}/{day}"
    with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(root / rel_dir) as entries:
        for entry in entries:
            name = entry.name
            partial = name.endswith(SEGMENT_SUFFIX + PARTIAL_SUFFIX)
            final_name = name[: -len(PARTIAL_SUFFIX)] if partial else name
            try:
                parse_segment_filename(final_name)
            except ValueError:
                continue
            if not entry.is_file(follow_symlinks=False):
                continue
            size = mtime_ns = 0
            if sizes:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                size, mtime_ns = st.st_size, st.st_mtime_ns
            f = StoreFile(f"{rel_dir}/{final_name}", partial, size, mtime_ns)
            out[f.disk_relpath] = f
    return out


def recent_date_dirs(base: Path, count: int) -> list[str]:
    """The ``count`` latest ``YYYY/MM/DD`` directories under a camera directory, latest first
    (lists only the year and month directories it needs)."""
    out: list[str] = []
    for year in reversed(_digits(base, 4)):
        for month in reversed(_digits(base / year, 2)):
            for day in reversed(_digits(base / year / month, 2)):
                out.append(f"{year}/{month}/{day}")
                if len(out) >= count:
                    return out
    return out


def _digits(path: Path, width: int) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(
                e.name
                for e in it
                if len(e.name) == width and e.name.isdigit() and e.is_dir(follow_symlinks=False)
            )
    except (FileNotFoundError, NotADirectoryError):
        return []


def _date_dirs(base: Path) -> Iterator[str]:
    for year in _digits(base, 4):
        for month in _digits(base / year, 2):
            for day in _digits(base / year / month, 2):
                yield f"{year}/{month}/{day}"


# -- reading a file -----------------------------------------------------------------------------


def scan_file(path: Path, size: int | None = None) -> ScanResult:
    """Scan ``path`` (its first ``size`` bytes, default all) with the pure scanner."""
    with path.open("rb") as f:
        if size is None:
            size = os.fstat(f.fileno()).st_size
        return scan(_reader(f), size)


def _reader(f: BinaryIO) -> Any:
    def read(offset: int, n: int) -> bytes:
        if n <= 0:
            return b""
        return os.pread(f.fileno(), n, offset)

    return read


def segment_info(relpath: str, result: ScanResult, sha256: str) -> SegmentInfo:
    """The index row of a recovered file: start from its name (UTC, ms) plus the first ``tfdt``,
    fragment starts from their ``tfdt``, end after the last fragment's samples."""
    name_ns = parse_segment_filename(PurePosixPath(relpath).name)
    frags = tuple(
        FragmentInfo(name_ns + result.ticks_to_ns(f.decode_time), f.offset, f.size, f.samples)
        for f in result.fragments
    )
    return SegmentInfo(
        relpath=relpath,
        start_ns=frags[0].start_ns,
        end_ns=max(name_ns + result.ticks_to_ns(result.end_ticks()), frags[0].start_ns),
        bytes=result.good_end,
        frames=result.frames,
        sha256=sha256,
        fragments=frags,
    )


# -- recovery ------------------------------------------------------------------------------------


@dataclass
class RecoveryReport:
    """What :func:`recover_store` did (paths relative to the root)."""

    published: list[str] = field(default_factory=list)  # partials cut, renamed and indexed (step 4)
    truncated_bytes: int = 0  # bytes cut off the partials (torn last writes)
    indexed_orphans: list[str] = field(default_factory=list)  # step 5
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), steps 4-5
    missing: list[str] = field(default_factory=list)  # rows newly marked missing (step 6)
    reappeared: list[str] = field(default_factory=list)  # marked rows whose file is back
    errors: list[str] = field(default_factory=list)
    frames_recovered: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.published or self.indexed_orphans or self.quarantined or self.missing)


class _Recovery:
    """Steps 4-6, one date directory at a time (:meth:`day`): the unit of work that startup
    does for the most recent days before the cameras record, and the background check for
    the others (csud/store/startup.py). ``skip_newer_ns``: files modified at or after it are
    left alone (the running daemon's recorders wrote them)."""

    def __init__(
        self, index: Index, root: Path, now_ns: int, actor: str, skip_newer_ns: int | None = None
    ) -> None:
        self.index = index
        self.root = root
        self.now_ns = now_ns
        self.actor = actor
        self.skip_newer_ns = skip_newer_ns
        self.report = RecoveryReport()

    def run(self) -> RecoveryReport:
        for commune, camera in self.cameras():
            for day in self.days(commune, camera):
                self.day(commune, camera, day)
        return self.report

    def cameras(self) -> list[tuple[str, str]]:
        """Camera directories on disk, then cameras with rows whose directory is gone."""
        pairs = list(camera_dirs(self.root))
        seen = set(pairs)
        return pairs + [p for p in self.index.camera_dirs() if p not in seen]

    def days(self, commune: str, camera: str, exclude: frozenset[str] = frozenset()) -> list[str]:
        """Date directories on disk or named by rows, latest first, minus ``exclude``."""
        found = set(_date_dirs(self.root / commune / camera)) | set(self.index.camera_days(commune, camera))
        return sorted(found - exclude, reverse=True)

    def day(self, commune: str, camera: str, day: str) -> None:
        files = day_files(self.root, commune, camera, day)
        rows = {
            path: (seg_id, missing)
            for seg_id, path, _, _, missing in self.index.day_files(f"{commune}/{camera}/{day}/")
        }
        for _, f in sorted(files.items()):
            if self.skip_newer_ns is not None and f.mtime_ns >= self.skip_newer_ns:
                continue
            try:
                if f.partial:
                    self._partial(commune, camera, f, final_exists=f.relpath in files)
                elif f.relpath not in rows and not self.index.has_path(f.relpath):
                    self._orphan(commune, camera, f)
            except FileNotFoundError:
                continue  # destroyed by a retention pass since the listing
            except (OSError, StorageError) as e:  # one bad file must not stop the others
                msg = f"{f.disk_relpath}: {e}"
                self.report.errors.append(msg)
                _log().error("recovery_failed", path=f.disk_relpath, error=str(e))
        on_disk = {f.relpath for f in files.values() if not f.partial}
        gone = [(i, p) for p, (i, m) in rows.items() if m is None and p not in on_disk]
        back = [(i, p) for p, (i, m) in rows.items() if m is not None and p in on_disk]
        # A file may have been listed before its camera directory was walked: stat before judging.
        gone = [(i, p) for i, p in gone if not (self.root / p).exists()]
        if gone:
            paths = sorted(p for _, p in gone)
            self.index.set_missing(
                [i for i, _ in gone],
                self.now_ns,
                [
                    {
                        "kind": INTEGRITY_FAILURE,
                        "now_ns": self.now_ns,
                        "actor": self.actor,
                        "camera": camera,
                        "commune": commune,
                        "reason": "segment files missing at startup",
                        "details": {"count": len(paths), "paths": paths[:MISSING_PATHS_JOURNALED]},
                    }
                ],
            )
            self.report.missing += paths
            _log().error(
                "segment_files_missing", camera=camera, commune=commune, count=len(paths), first=paths[0]
            )
        if back:
            self.index.set_missing([i for i, _ in back], None)
            self.report.reappeared += sorted(p for _, p in back)
            _log().warning("segment_files_reappeared", camera=camera, commune=commune, count=len(back))

    def _partial(self, commune: str, camera: str, f: StoreFile, final_exists: bool) -> None:
        """Step 4."""
        partial = self.root / f.disk_relpath
        final = self.root / f.relpath
        if final_exists or final.exists():
            self._quarantine(commune, camera, f, "the final name exists already")
            return
        result = scan_file(partial, f.size)
        if not result.fragments:
            self._quarantine(commune, camera, f, f"no whole fragment ({result.problem})")
            return
        keep = result.good_end
        fd = os.open(partial, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if keep < f.size:
                os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)
        info = segment_info(f.relpath, result, sha256_file(partial, keep)[1])
        if final.exists():  # raced by nothing (we hold the store lock), but never overwrite
            raise FileExistsError(f"{f.relpath} appeared during recovery")
        os.rename(partial, final)
        fsync_dir(final.parent)
        self._index(commune, camera, info, "partial_published", {"truncated_bytes": f.size - keep})
        self.report.published.append(f.relpath)
        self.report.truncated_bytes += f.size - keep
        _log().warning(
            "segment_recovered",
            path=f.relpath,
            frames=info.frames,
            fragments=len(info.fragments),
            bytes=info.bytes,
            truncated_bytes=f.size - keep,
        )

    def _orphan(self, commune: str, camera: str, f: StoreFile) -> None:
        """Step 5."""
        path = self.root / f.relpath
        result = scan_file(path, f.size)
        if not result.valid:
            self._quarantine(commune, camera, f, f"not a whole segment file ({result.problem})")
            return
        info = segment_info(f.relpath, result, sha256_file(path, result.good_end)[1])
        self._index(commune, camera, info, "orphan_indexed", {})
        self.report.indexed_orphans.append(f.relpath)
        _log().warning("orphan_segment_indexed", path=f.relpath, frames=info.frames, bytes=info.bytes)

    def _index(
        self, commune: str, camera: str, info: SegmentInfo, action: str, extra: dict[str, Any]
    ) -> None:
        self.index.add_segment(
            camera,
            commune,
            info,
            self.now_ns,
            journal={
                "kind": RECOVERED,
                "now_ns": self.now_ns,
                "actor": self.actor,
                "camera": camera,
                "commune": commune,
                "from_ns": info.start_ns,
                "to_ns": info.end_ns,
                "reason": action,
                "details": {
                    "action": action,
                    "path": info.relpath,
                    "bytes": info.bytes,
                    "frames": info.frames,
                    "fragments": len(info.fragments),
                    "sha256": info.sha256,
                    **extra,
                },
            },
        )
        self.report.frames_recovered += info.frames

    def _quarantine(self, commune: str, camera: str, f: StoreFile, reason: str) -> None:
        source = self.root / f.disk_relpath
        target_rel = quarantine_target(self.root, f.disk_relpath)
        target = self.root / target_rel
        makedirs_durable(self.root, PurePosixPath(target_rel).parent)
        os.rename(source, target)
        fsync_dir(target.parent)
        fsync_dir(source.parent)
        self.index.append_journal(
            RECOVERED,
            now_ns=self.now_ns,
            actor=self.actor,
            camera=camera,
            commune=commune,
            reason="quarantined",
            details={
                "action": "quarantined",
                "path": f.disk_relpath,
                "to": target_rel,
                "why": reason,
                "bytes": f.size,
            },
        )
        self.report.quarantined.append((f.disk_relpath, reason))
        _log().warning("segment_quarantined", path=f.disk_relpath, to=target_rel, reason=reason)


def quarantine_target(root: Path, relpath: str) -> str:
    """``quarantine/<relpath>``, with ``.1``, ``.2``... appended if taken (never overwrite)."""
    target = f"{QUARANTINE_DIR}/{relpath}"
    n = 0
    candidate = target
    while (root / candidate).exists():
        n += 1
        candidate = f"{target}.{n}"
    return candidate


def recover_store(
    index: Index, root: Path, now_ns: int | None = None, actor: str | None = None
) -> RecoveryReport:
    """Steps 4-6 of docs/storage.md "Startup" (see the module doc). Synchronous: run it in a
    worker thread, before any recorder starts, with the store lock held."""
    started = time.perf_counter()
    now = now_ns if now_ns is not None else time.time_ns()
    report = _Recovery(index, root, now, actor if actor is not None else os_actor()).run()
    report.seconds = round(time.perf_counter() - started, 3)
    _log().info(
        "store_recovered",
        published=len(report.published),
        indexed_orphans=len(report.indexed_orphans),
        quarantined=len(report.quarantined),
        missing=len(report.missing),
        frames_recovered=report.frames_recovered,
        truncated_bytes=report.truncated_bytes,
        errors=len(report.errors),
        seconds=report.seconds,
    )
    return report


# -- csud check (read-only) ------------------------------------------------------------------


@dataclass
class CheckReport:
    """Index and disk compared, nothing changed. ``consistent`` is what ``csud check`` exits on."""

    daemon_running: bool
    rows: int = 0
    files: int = 0
    missing_files: list[str] = field(default_factory=list)  # live rows whose file is absent
    marked_missing: int = 0  # of those, already marked by a startup recovery
    orphan_files: list[str] = field(default_factory=list)  # NAME.mp4 without a row
    partial_files: list[str] = field(default_factory=list)  # left behind (no daemon running)
    open_partials: list[str] = field(default_factory=list)  # being written by the running daemon
    size_mismatches: list[tuple[str, int, int]] = field(default_factory=list)  # path, row, file
    hash_mismatches: list[str] = field(default_factory=list)
    hashed: int = 0
    quarantined: int = 0  # files in quarantine/ (reported, not an inconsistency: each is journaled)

    @property
    def consistent(self) -> bool:
        return not (
            self.missing_files
            or self.orphan_files
            or self.partial_files
            or self.size_mismatches
            or self.hash_mismatches
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "consistent": self.consistent,
            "daemon_running": self.daemon_running,
            "rows": self.rows,
            "files": self.files,
            "missing_files": self.missing_files,
            "marked_missing": self.marked_missing,
            "orphan_files": self.orphan_files,
            "partial_files": self.partial_files,
            "open_partials": self.open_partials,
            "size_mismatches": [
                {"path": p, "index_bytes": a, "file_bytes": b} for p, a, b in self.size_mismatches
            ],
            "hash_mismatches": self.hash_mismatches,
            "hashed": self.hashed,
            "quarantined": self.quarantined,
        }


def check_store(index: Index, root: Path, hashes: bool = False) -> CheckReport:
    """Compare the index with the files (read-only; safe while the daemon runs).

    With a daemon running (it holds the store lock), ``.partial`` files are open segments, and
    a file renamed or a row inserted between the listing and the query is re-checked before
    being reported, so a live store checks clean.
    """
    report = CheckReport(daemon_running=store_locked(root))
    seen: set[tuple[str, str]] = set()
    pairs = list(camera_dirs(root))
    seen.update(pairs)
    pairs += [p for p in index.camera_dirs() if p not in seen]
    for commune, camera in pairs:
        files = camera_files(root, commune, camera, sizes=True) if (commune, camera) in seen else {}
        rows = index.camera_files(commune, camera)
        report.rows += len(rows)
        report.files += sum(1 for f in files.values() if not f.partial)
        by_path = {p: (size, sha, missing) for _, p, size, sha, missing in rows}
        for f in files.values():
            if f.partial:
                (report.open_partials if report.daemon_running else report.partial_files).append(
                    f.disk_relpath
                )
            elif f.relpath not in by_path and not index.has_path(f.relpath):
                report.orphan_files.append(f.relpath)
        for path, (size, sha, missing) in sorted(by_path.items()):
            found = files.get(path)
            if found is None:
                if not (root / path).exists():
                    report.missing_files.append(path)
                    report.marked_missing += missing is not None
                continue
            if found.size != size:
                report.size_mismatches.append((path, size, found.size))
            elif hashes:
                report.hashed += 1
                if sha256_file(root / path)[1] != sha:
                    report.hash_mismatches.append(path)
    quarantine = root / QUARANTINE_DIR
    if quarantine.is_dir():
        report.quarantined = sum(len(names) for _, _, names in os.walk(quarantine))
    for values in (report.missing_files, report.orphan_files, report.partial_files, report.open_partials):
        values.sort()
    return report
