"""Retention and disk pressure carried out: the plan of :mod:`csud.store.retention_plan`, on the index
and the files, with the crash-safe destruction steps of docs/storage.md ("Destroying segments").

:class:`Retention` is synchronous (SQLite, unlink, fsync): the daemon runs it in its own thread
with its own connection (:class:`csud.service.retention.RetentionService`), and ``csud retention``
calls the same :meth:`Retention.run_pass` directly. Why a separate thread and connection rather than the
recorders' index thread: a pass unlinks and fsyncs hundreds of files; on that thread it would
delay every camera's segment insert behind it. SQLite in WAL mode lets the two connections read
concurrently; writes are short transactions serialised by ``BEGIN IMMEDIATE`` and
``busy_timeout``.

Destruction (:meth:`Retention.destroy`), numbered as in docs/storage.md:
1. mark the rows ``deleting`` (one transaction; a hold active now is re-checked there);
2. unlink the files; 3. fsync their directories; 4. remove the rows and append one
``segments_destroyed`` journal entry per camera (one transaction); 5. remove empty date
directories. Steps 1-4 run per batch of at most :data:`DESTROY_BATCH` rows, so that no write
transaction holds the database lock for long: a backlog (a restart after hours down, a window
shortened on reload) is hundreds of batches, and each recorder's insert gets the lock between
two of them. :meth:`Retention.recover` finishes steps 2-5 for rows left marked by a crash, after
unmarking those an active hold now covers.

A pass also destroys quarantined files older than the legal maximum
(:meth:`Retention.expire_quarantine`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from csud.config import Settings
from csud.log import get_logger
from csud.service import metrics
from csud.store.durable import fsync_dir
from csud.store.index import Index
from csud.store.journal import EXTRACTION, RECOVERED, SEGMENTS_DESTROYED
from csud.store.layout import QUARANTINE_DIR
from csud.store.retention_plan import (
    NS_PER_SECOND,
    REASON_DISK_PRESSURE,
    REASON_QUARANTINE_EXPIRED,
    REASON_RETENTION,
    Hold,
    Policies,
    SegmentRef,
    active_holds,
    bytes_to_free,
    cutoff_ns,
    plan,
    plan_disk_pressure,
    quarantine_expired,
    quarantined_start_ns,
)

BATCH_PER_CAMERA = 2000  # candidates fetched per camera and round (~33 h of 1-min segments)
MAX_ROUNDS_PER_PASS = 50  # a backlog beyond this waits for the next pass (overdue gauge)
# Segment rows per write transaction (step 1, then step 4): ~20 ms of database lock each, with
# their fragments (docs/benchmarks.md, "Retention"), well under a recorder's busy_timeout.
DESTROY_BATCH = 500
DISK_PRESSURE_BATCH = 500  # segments fetched per disk-pressure round
DISK_PRESSURE_MAX_ROUNDS = 200
DISK_PRESSURE_HYSTERESIS_PERCENT = 1.0  # free up to min_free_percent + this


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


@dataclass
class CameraDestruction:
    """What one destruction did for one camera (and what its journal entry says)."""

    commune: str
    camera: str
    reason: str
    count: int = 0
    bytes: int = 0
    from_ns: int = 0
    to_ns: int = 0
    missing_files: int = 0


@dataclass
class PassReport:
    """One pass: what was destroyed (or would be, ``dry_run``), what holds kept past its window,
    and what is still overdue afterwards, per commune."""

    now_ns: int
    dry_run: bool
    destroyed: list[CameraDestruction] = field(default_factory=list)
    held: dict[tuple[str, str], int] = field(default_factory=dict)  # (commune, camera) -> segments
    overdue: dict[str, int] = field(default_factory=dict)
    windows: dict[tuple[str, str], int] = field(default_factory=dict)  # (commune, camera) -> days
    errors: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    quarantine_expired: list[str] = field(default_factory=list)  # paths destroyed (or due, dry run)

    @property
    def count(self) -> int:
        return sum(d.count for d in self.destroyed)


def policies_from(settings: Settings) -> Policies:
    return Policies(
        legal_max_days=settings.legal.max_retention_days,
        communes={c.id: c.retention_days for c in settings.communes},
        cameras={c.id: c.retention_days for c in settings.cameras if c.retention_days is not None},
    )


def _day(ns: int) -> str:
    return datetime.fromtimestamp(ns // NS_PER_SECOND, UTC).strftime("%Y-%m-%d")


def _per_day(segments: Iterable[SegmentRef]) -> dict[str, dict[str, int]]:
    """Per UTC day of the segment's start: count, seconds, first start, last end (for the registre)."""
    days: dict[str, dict[str, int]] = {}
    for s in segments:
        d = days.setdefault(
            _day(s.start_ns), {"count": 0, "ns": 0, "first_ns": s.start_ns, "last_ns": s.end_ns}
        )
        d["count"] += 1
        d["ns"] += s.end_ns - s.start_ns
        d["first_ns"] = min(d["first_ns"], s.start_ns)
        d["last_ns"] = max(d["last_ns"], s.end_ns)
    return days


class Retention:
    """Retention passes, disk pressure and recovery of interrupted destructions on one index."""

    def __init__(
        self,
        index: Index,
        root: Path,
        settings: Settings,
        *,
        actor: str | None = None,
        disk_usage: Callable[[Path], Any] = shutil.disk_usage,
    ) -> None:
        self.index = index
        self.root = root
        self.settings = settings
        self.policies = policies_from(settings)
        self.actor = actor
        self._disk_usage = disk_usage
        self.log = get_logger(component="retention")

    def _holds(self, now_ns: int) -> list[Hold]:
        return active_holds((h.policy() for h in self.index.holds(include_released=False)), now_ns)

    # -- retention --------------------------------------------------------------------------

    def run_pass(self, now_ns: int, dry_run: bool = False) -> PassReport:
        """Destroy every unheld segment past its window (or list them, ``dry_run``).

        A segment's window is the one stored with its row, shortened by the configuration's
        (:func:`csud.store.retention_plan.segment_days`); a real pass first stores the configured
        window in the rows whose stored one is longer or absent."""
        report = PassReport(now_ns=now_ns, dry_run=dry_run)
        holds = self._holds(now_ns)
        scopes = []
        for u in self.index.usage():
            days = self.policies.days(u.camera, u.commune)
            if not dry_run:  # a shortened window applies to the footage already stored
                shortened = self.index.shorten_windows(u.camera, u.commune, days)
                if shortened:
                    self.log.info("retention_window_stored", camera=u.camera, days=days, segments=shortened)
            shortest = self.index.shortest_window(u.camera)
            loosest = days if shortest is None else min(days, shortest)
            cutoff = cutoff_ns(loosest, now_ns)  # the range bound; each row's own window decides
            exclude = [(h.from_ns, h.to_ns) for h in holds if u.camera in h.cameras]
            scopes.append((u.commune, u.camera, cutoff, exclude, (now_ns, days)))
            report.windows[(u.commune, u.camera)] = loosest
        pending = list(scopes)
        for _ in range(1 if dry_run else MAX_ROUNDS_PER_PASS):
            if not pending:
                break
            candidates: list[SegmentRef] = []
            full = []
            for scope in pending:
                commune, camera, cutoff, exclude, window = scope
                rows = self.index.due_candidates(
                    camera,
                    commune,
                    cutoff,
                    exclude,
                    limit=10**9 if dry_run else BATCH_PER_CAMERA,
                    window=window,
                )
                candidates.extend(rows)
                if len(rows) >= BATCH_PER_CAMERA:
                    full.append(scope)
            decided = plan(candidates, self.policies, holds, now_ns)  # the pure rule decides
            if dry_run:
                report.destroyed.extend(self._summarise(decided.due, REASON_RETENTION))
            else:
                self.destroy(decided.due, REASON_RETENTION, now_ns, report)
            pending = full
        self.expire_quarantine(now_ns, report, holds)
        for commune, camera, cutoff, exclude, window in scopes:
            everything = self.index.count_due(camera, commune, cutoff, window=window)
            unheld = self.index.count_due(camera, commune, cutoff, exclude, window=window)
            if everything > unheld:
                report.held[(commune, camera)] = everything - unheld
            if not dry_run and unheld:
                report.overdue[commune] = report.overdue.get(commune, 0) + unheld
        return report

    # -- disk pressure ----------------------------------------------------------------------

    def relieve_disk_pressure(self, now_ns: int, dry_run: bool = False) -> PassReport:
        """Below ``storage.min_free_percent`` free, destroy the oldest unheld segments across
        cameras until free space is back above it plus :data:`DISK_PRESSURE_HYSTERESIS_PERCENT`."""
        report = PassReport(now_ns=now_ns, dry_run=dry_run)
        min_free = self.settings.storage.min_free_percent
        holds = self._holds(now_ns)
        done: set[int] = set()
        for _ in range(DISK_PRESSURE_MAX_ROUNDS):
            usage = self._disk_usage(self.root)
            need = bytes_to_free(usage.total, usage.free, min_free, DISK_PRESSURE_HYSTERESIS_PERCENT)
            if dry_run:
                need -= report.freed_bytes
            if need <= 0:
                break
            candidates = [s for s in self.index.oldest_unheld(now_ns, DISK_PRESSURE_BATCH + len(done))]
            candidates = [s for s in candidates if s.id not in done]
            chosen = plan_disk_pressure(candidates, holds, need, now_ns)
            if not chosen:
                self.log.error("disk_pressure_nothing_to_free", free_bytes=usage.free, needed_bytes=need)
                report.errors.append(f"disk pressure: {need} bytes to free but no unheld footage left")
                break
            if dry_run:
                report.destroyed.extend(self._summarise(chosen, REASON_DISK_PRESSURE))
                report.freed_bytes += sum(s.bytes for s in chosen)
                done.update(s.id for s in chosen)
            else:
                self.destroy(chosen, REASON_DISK_PRESSURE, now_ns, report)
        if report.destroyed:
            self.log.warning(
                "disk_pressure_destroyed",
                segments=report.count,
                bytes=sum(d.bytes for d in report.destroyed),
                dry_run=dry_run,
            )
        return report

    # -- the destruction steps (docs/storage.md) ------------------------------------------

    def destroy(
        self, segments: Sequence[SegmentRef], reason: str, now_ns: int, report: PassReport | None = None
    ) -> list[CameraDestruction]:
        """Steps 1-5 for ``segments``, a batch of at most :data:`DESTROY_BATCH` at a time (each
        batch marked, unlinked, synced and removed before the next is marked); returns per-camera
        summaries (also appended to ``report``), one per camera and batch."""
        summaries: list[CameraDestruction] = []
        for batch in _batches(segments):
            marked = self.index.mark_deleting([s.id for s in batch], reason, now_ns)  # step 1
            if marked:
                summaries += self._finish(marked, reason, now_ns, report, interrupted=False)
        return summaries

    def recover(self, now_ns: int) -> PassReport:
        """Startup: finish destructions a crash interrupted (rows still marked ``deleting``).

        The holds are checked again first: a hold added while the daemon was down (or between
        step 1 and the crash) wins, its rows are unmarked (journaled ``recovered``,
        ``action: held_unmarked``). If such a row's file was already unlinked, the row stays and
        startup recovery step 6 reports it missing."""
        report = PassReport(now_ns=now_ns, dry_run=False)
        held = self.index.unmark_held(now_ns, actor=self.actor)
        if held:
            self.log.warning("interrupted_destruction_held", segments=len(held))
        by_reason: dict[str, list[SegmentRef]] = {}
        for seg, reason in self.index.deleting():
            by_reason.setdefault(reason or REASON_RETENTION, []).append(seg)
        for reason, segs in by_reason.items():
            for batch in _batches(segs):
                self._finish(batch, reason, now_ns, report, interrupted=True)
        if report.destroyed:
            self.index.append_journal(
                RECOVERED,
                now_ns=now_ns,
                actor=self.actor,
                reason="interrupted destruction completed at startup",
                details={
                    "segments_destroyed": report.count,
                    "cameras": sorted({d.camera for d in report.destroyed}),
                },
            )
            self.log.warning("interrupted_destruction_completed", segments=report.count)
        return report

    def _finish(
        self,
        marked: Sequence[SegmentRef],
        reason: str,
        now_ns: int,
        report: PassReport | None,
        interrupted: bool,
    ) -> list[CameraDestruction]:
        failed: list[int] = []
        missing: set[int] = set()
        dirs: set[Path] = set()
        for seg in marked:  # step 2
            path = self.root / seg.path
            try:
                path.unlink()
            except FileNotFoundError:
                missing.add(seg.id)
            except OSError as e:
                failed.append(seg.id)
                msg = f"unlink {seg.path}: {e.strerror or e}"
                self.log.error("destroy_failed", path=seg.path, error=str(e.strerror or e))
                if report is not None:
                    report.errors.append(msg)
                continue
            dirs.add(path.parent)
        for directory in dirs:  # step 3
            with contextlib.suppress(FileNotFoundError):
                fsync_dir(directory)
        if failed:  # left for the next pass: the row must keep naming a file that still exists
            self.index.unmark_deleting(failed)
        gone = [s for s in marked if s.id not in set(failed)]
        summaries = self._summarise(gone, reason, missing)
        entries = []
        for d in summaries:
            segs = [s for s in gone if s.camera == d.camera and s.commune == d.commune]
            entries.append(
                {
                    "kind": SEGMENTS_DESTROYED,
                    "now_ns": now_ns,
                    "actor": self.actor,
                    "camera": d.camera,
                    "commune": d.commune,
                    "from_ns": d.from_ns,
                    "to_ns": d.to_ns,
                    "reason": reason,
                    "details": {
                        "count": d.count,
                        "bytes": d.bytes,
                        "missing_files": d.missing_files,
                        "interrupted": interrupted,
                        "days": _per_day(segs),
                    },
                }
            )
        self.index.remove_deleted([s.id for s in gone], entries)  # step 4
        for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):  # step 5
            self._remove_empty_date_dirs(directory)
        for d in summaries:
            metrics.retention_deleted.labels(d.commune, reason).inc(d.count)
        if report is not None:
            report.destroyed.extend(summaries)
            report.freed_bytes += sum(d.bytes for d in summaries)
        return summaries

    @staticmethod
    def _summarise(
        segments: Iterable[SegmentRef], reason: str, missing: set[int] | None = None
    ) -> list[CameraDestruction]:
        out: dict[tuple[str, str], CameraDestruction] = {}
        for s in segments:
            d = out.get((s.commune, s.camera))
            if d is None:
                d = out[(s.commune, s.camera)] = CameraDestruction(
                    s.commune, s.camera, reason, from_ns=s.start_ns, to_ns=s.end_ns
                )
            d.count += 1
            d.bytes += s.bytes
            d.from_ns = min(d.from_ns, s.start_ns)
            d.to_ns = max(d.to_ns, s.end_ns)
            if missing and s.id in missing:
                d.missing_files += 1
        return sorted(out.values(), key=lambda d: (d.commune, d.camera))

    def _remove_empty_date_dirs(self, directory: Path) -> None:
        """rmdir the day, month and year directories when empty; never the camera or commune
        directory (a recorder may be creating a date directory in it right now)."""
        try:
            rel = PurePosixPath(directory.relative_to(self.root).as_posix())
        except ValueError:
            return
        # <commune>/<camera>/YYYY/MM/DD: at most three levels below <camera>.
        depth = len(rel.parts) - 2
        current = directory
        for _ in range(max(0, min(depth, 3))):
            try:
                current.rmdir()
            except OSError:  # not empty (or already gone): stop climbing
                return
            with contextlib.suppress(OSError):
                fsync_dir(current.parent)
            current = current.parent

    # -- quarantine -------------------------------------------------------------------------

    def expire_quarantine(self, now_ns: int, report: PassReport, holds: Sequence[Hold] = ()) -> None:
        """Destroy the files of ``<root>/quarantine/`` whose name's start is at least
        ``legal.max_retention_days`` old (unless a hold on their camera overlaps them): unlink,
        fsync the directory, then one ``segments_destroyed`` entry (reason ``quarantine_expired``,
        ``details.path``) per file. A crash between the unlink and the entry loses the entry for
        that one file. Listed only, ``report.dry_run``."""
        base = self.root / QUARANTINE_DIR
        if not base.is_dir():
            return
        legal_days = self.policies.legal_max_days
        for dirpath, dirnames, names in os.walk(base):
            dirnames.sort()
            for name in sorted(names):
                start = quarantined_start_ns(name)
                path = Path(dirpath) / name
                rel = path.relative_to(self.root).as_posix()
                parts = rel.split("/")  # quarantine/<commune>/<camera>/YYYY/MM/DD/NAME
                commune, camera = (parts[1], parts[2]) if len(parts) == 7 else (None, None)
                if start is None or not quarantine_expired(start, camera, legal_days, holds, now_ns):
                    continue
                if report.dry_run:
                    report.quarantine_expired.append(rel)
                    continue
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as e:
                    self.log.error("destroy_failed", path=rel, error=str(e.strerror or e))
                    report.errors.append(f"unlink {rel}: {e.strerror or e}")
                    continue
                with contextlib.suppress(FileNotFoundError):
                    fsync_dir(path.parent)
                self.index.append_journal(
                    SEGMENTS_DESTROYED,
                    now_ns=now_ns,
                    actor=self.actor,
                    camera=camera,
                    commune=commune,
                    from_ns=start,
                    reason=REASON_QUARANTINE_EXPIRED,
                    details={"path": rel, "bytes": size, "count": 1, "legal_max_days": legal_days},
                )
                report.quarantine_expired.append(rel)
                report.freed_bytes += size
                self.log.warning("quarantine_expired", path=rel, bytes=size)

    # -- metrics ----------------------------------------------------------------------------

    def export_metrics(self, report: PassReport | None, now_ns: int) -> None:
        for u_commune, used in self._usage_by_commune().items():
            metrics.storage_used.labels(u_commune).set(used)
        metrics.holds_active.set(len(self._holds(now_ns)))
        # Extractions are made by the CLI, in another process: the journal is where they show.
        metrics.export_extractions(self.index.journal_counts(EXTRACTION))
        if report is not None:
            communes = {c.id for c in self.settings.communes} | set(report.overdue)
            for commune in communes:
                metrics.retention_overdue.labels(commune).set(report.overdue.get(commune, 0))

    def _usage_by_commune(self) -> dict[str, int]:
        out: dict[str, int] = {c.id: 0 for c in self.settings.communes}
        for u in self.index.usage():
            out[u.commune] = out.get(u.commune, 0) + u.bytes
        return out


def _batches(segments: Sequence[SegmentRef]) -> Iterable[Sequence[SegmentRef]]:
    """``segments`` by camera (so a camera's rows share a batch and a journal entry), oldest
    first within each, cut into batches of at most :data:`DESTROY_BATCH`."""
    ordered = sorted(segments, key=lambda s: (s.commune, s.camera, s.end_ns, s.id))
    for i in range(0, len(ordered), DESTROY_BATCH):
        yield ordered[i : i + DESTROY_BATCH]
