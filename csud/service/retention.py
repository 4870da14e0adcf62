"""The daemon's retention task, and the daemon's start and stop entries in the journal.

:class:`RetentionService` runs :class:`csud.store.retention.Retention` passes in its own thread
with its own SQLite connection (why: :mod:`csud.store.retention`). Since that connection is the
one the daemon opens first and closes last, it also journals ``config_loaded``,
``daemon_started``, ``unclean_stop_detected`` (a previous run that never journaled its stop) and
``daemon_stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from csud import __version__
from csud.config import LoadedConfig, Settings
from csud.errors import CsudError
from csud.log import get_logger
from csud.service import metrics
from csud.store.index import Index
from csud.store.journal import (
    CONFIG_LOADED,
    DAEMON_STARTED,
    DAEMON_STOPPED,
    UNCLEAN_STOP_DETECTED,
    JournalEntry,
)
from csud.store.retention import PassReport, Retention, policies_from


def unclean_previous_run(index: Index) -> JournalEntry | None:
    """The last ``daemon_started`` when no ``daemon_stopped`` follows it (the daemon was killed,
    or the machine lost power), else ``None``. Reads only the (few) start and stop entries."""
    started = index.journal_entries(kind=DAEMON_STARTED)
    if not started:
        return None
    stopped = index.journal_entries(kind=DAEMON_STOPPED)
    if stopped and stopped[-1].id > started[-1].id:
        return None
    return started[-1]


def recovery_details(recovery: Any) -> dict[str, Any]:
    """What startup recovery did (a :class:`csud.store.recovery.RecoveryReport`), for the journal."""
    return {
        "partials_published": len(recovery.published),
        "truncated_bytes": recovery.truncated_bytes,
        "frames_recovered": recovery.frames_recovered,
        "orphans_indexed": len(recovery.indexed_orphans),
        "quarantined": len(recovery.quarantined),
        "rows_marked_missing": len(recovery.missing),
        "errors": list(recovery.errors[:20]),
        "published": list(recovery.published[:100]),
    }


class RetentionService:
    """The daemon's retention task: its own thread and SQLite connection (see the module doc)."""

    def __init__(self, index_path: Path, settings: Settings, clock: Callable[[], int] = time.time_ns) -> None:
        self.settings = settings
        self._clock = clock
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="csud-retention")
        self._index_path = index_path
        self.retention: Retention | None = None
        self.log = get_logger(component="retention")
        # Set by start(): the previous run's daemon_started when it never journaled its stop,
        # and how many interrupted destructions this start completed.
        self.unclean: JournalEntry | None = None
        self._destructions_completed = 0

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args))

    async def start(self, loaded: LoadedConfig, cameras: int) -> None:
        """Open the index, finish interrupted destructions, journal config_loaded and daemon_started."""

        def work() -> None:
            index = Index.open(self._index_path)
            self.retention = Retention(index, self.settings.storage.root, self.settings)
            now = self._clock()
            self.unclean = unclean_previous_run(index)
            self._destructions_completed = self.retention.recover(now).count
            index.append_journal(
                CONFIG_LOADED,
                now_ns=now,
                details={"path": str(loaded.path), "sha256": loaded.sha256},
            )
            entry = index.append_journal(
                DAEMON_STARTED,
                now_ns=now,
                details={"version": __version__, "pid": os.getpid(), "cameras": cameras},
            )
            # An anchor outside the database file (docs/storage.md, "Journal").
            self.log.info("journal_head", id=entry.id, hash=entry.hash)

        await self._call(work)

    async def journal_unclean_stop(self, recovery: Any) -> JournalEntry | None:
        """After startup recovery (``recovery``: its report): if the previous run stopped
        uncleanly, journal ``unclean_stop_detected`` naming that run and what recovery did."""
        unclean = self.unclean
        if unclean is None or self.retention is None:
            return None
        index = self.retention.index

        def work() -> JournalEntry:
            details = {
                "previous_start_id": unclean.id,
                "previous_start_ns": unclean.time_ns,
                "previous_pid": unclean.details.get("pid"),
                "previous_version": unclean.details.get("version"),
                "recovery": {
                    **recovery_details(recovery),
                    "interrupted_destructions_completed": self._destructions_completed,
                },
            }
            return index.append_journal(
                UNCLEAN_STOP_DETECTED,
                now_ns=self._clock(),
                reason="no daemon_stopped after the previous daemon_started (killed or power loss)",
                details=details,
            )

        entry: JournalEntry = await self._call(work)
        done = entry.details["recovery"]
        self.log.warning(
            "unclean_stop_detected",
            previous_start=unclean.id,
            partials_published=done["partials_published"],
            frames_recovered=done["frames_recovered"],
            quarantined=done["quarantined"],
        )
        return entry

    async def run(self, stop: asyncio.Event) -> None:
        """A pass (retention, then disk pressure) every ``retention.interval_seconds``."""
        while not stop.is_set():
            try:
                await self._call(self.run_once)
            except (CsudError, OSError) as exc:  # the next pass retries; the gauge shows it
                self.log.error("retention_pass_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):  # read each time: a reload may change it
                await asyncio.wait_for(stop.wait(), self.settings.retention.interval_seconds)

    async def reload(self, loaded: LoadedConfig, details: dict[str, Any]) -> None:
        """Adopt a reloaded configuration and journal ``config_loaded`` for it.

        Runs on the retention thread, so a pass in progress finishes with the policies it
        started with and the next one uses the new ones (a shortened window applies at once).
        """

        def work() -> None:
            self.settings = loaded.settings
            if self.retention is None:
                return
            self.retention.settings = loaded.settings
            self.retention.policies = policies_from(loaded.settings)
            self.retention.index.append_journal(
                CONFIG_LOADED,
                now_ns=self._clock(),
                details={"path": str(loaded.path), "sha256": loaded.sha256, "reload": True, **details},
            )

        await self._call(work)

    def run_once(self) -> PassReport:
        assert self.retention is not None
        now = self._clock()
        started = time.perf_counter()
        report = self.retention.run_pass(now)
        pressure = self.retention.relieve_disk_pressure(now)
        metrics.disk_pressure.set(1 if pressure.destroyed or pressure.errors else 0)
        self.retention.export_metrics(report, now)
        if report.destroyed or pressure.destroyed or report.errors or report.quarantine_expired:
            self.log.info(
                "retention_pass",
                destroyed=report.count,
                quarantine_expired=len(report.quarantine_expired),
                disk_pressure_destroyed=pressure.count,
                overdue=sum(report.overdue.values()),
                errors=len(report.errors) + len(pressure.errors),
                seconds=round(time.perf_counter() - started, 3),
            )
        return report

    async def close(self, segments_written: int) -> None:
        """Journal daemon_stopped (with the head as an anchor in the log) and close."""

        def work() -> None:
            if self.retention is None:
                return
            index = self.retention.index
            try:
                entry = index.append_journal(
                    DAEMON_STOPPED, now_ns=self._clock(), details={"segments_written": segments_written}
                )
                self.log.info("journal_head", id=entry.id, hash=entry.hash)
            finally:
                index.close()

        try:
            await self._call(work)
        finally:
            self._executor.shutdown(wait=True)
