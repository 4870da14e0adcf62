"""Startup recovery, most recent first (docs/storage.md, "Startup", steps 4-7).

Cameras must record within seconds of a start whatever the store's size, and what matters for
them is the footage they were writing when the last daemon stopped: the ``.partial`` files and
the last day. So recovery is split:

- :func:`recover_recent` (step 4-6 on the ``RECENT_DAYS`` latest date directories of every
  camera directory) runs before any camera records. A crash leaves its ``.partial`` in the
  date directory of its segment's start, which is its camera's latest one (a recorder writes
  its segments in time order), so every partial of the last stop is recovered here. Cost: a
  few ``scandir`` calls and one indexed range query per camera, whatever the store holds.
- :class:`BackgroundCheck` (step 7) does the same for every other date directory (on disk or
  named by a row), one directory per batch, in a thread of its own with the lowest CPU
  priority (``nice 19`` for that thread), pausing between batches so that the recorders'
  threads and the event loop always come first. Files modified since the daemon started are
  never touched (the running recorders wrote them). When done it logs ``store_check_completed``,
  journals a ``recovered`` entry (``action: background_check``) and its :meth:`status` says
  ``done`` (``/status`` field ``store_check``). It stops at the next batch on shutdown; the
  next start checks everything again (every step is idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csud.log import get_logger
from csud.store.index import Index
from csud.store.journal import RECOVERED, os_actor
from csud.store.recovery import RecoveryReport, _Recovery, camera_dirs, recent_date_dirs

RECENT_DAYS = 2  # date directories per camera checked before recording starts
BATCH_PAUSE_SECONDS = 0.005  # between two date directories of the background check
BACKGROUND_NICE = 19


def _log() -> Any:
    return get_logger(component="recovery")


@dataclass(frozen=True, slots=True)
class RecentResult:
    report: RecoveryReport
    checked: dict[tuple[str, str], frozenset[str]]  # (commune, camera) -> days done before recording
    started_ns: int  # files modified from then on are the running daemon's


def recover_recent(
    index: Index,
    root: Path,
    now_ns: int | None = None,
    actor: str | None = None,
    recent_days: int = RECENT_DAYS,
) -> RecentResult:
    """Steps 4-6 on the latest ``recent_days`` date directories of each camera directory."""
    started = time.perf_counter()
    now = now_ns if now_ns is not None else time.time_ns()
    work = _Recovery(index, root, now, actor if actor is not None else os_actor())
    checked: dict[tuple[str, str], frozenset[str]] = {}
    for commune, camera in camera_dirs(root):
        days = recent_date_dirs(root / commune / camera, recent_days)
        for day in days:
            work.day(commune, camera, day)
        checked[(commune, camera)] = frozenset(days)
    report = work.report
    report.seconds = round(time.perf_counter() - started, 3)
    _log().info("store_recovered", scope=f"latest {recent_days} days", **_summary(report))
    return RecentResult(report, checked, now)


def _summary(report: RecoveryReport) -> dict[str, Any]:
    return {
        "published": len(report.published),
        "indexed_orphans": len(report.indexed_orphans),
        "quarantined": len(report.quarantined),
        "missing": len(report.missing),
        "frames_recovered": report.frames_recovered,
        "truncated_bytes": report.truncated_bytes,
        "errors": len(report.errors),
        "seconds": report.seconds,
    }


async def recover_at_startup(index_path: Path, root: Path) -> RecentResult:
    """The daemon's call: :func:`recover_recent` in a worker thread on its own connection."""

    def work() -> RecentResult:
        index = Index.open(index_path)
        try:
            return recover_recent(index, root)
        finally:
            index.close()

    return await asyncio.to_thread(work)


class BackgroundCheck:
    """Step 7: the rest of the store, checked in a low-priority thread (see the module doc)."""

    def __init__(
        self,
        index_path: Path,
        root: Path,
        recent: RecentResult,
        pause_seconds: float = BATCH_PAUSE_SECONDS,
    ) -> None:
        self.index_path = index_path
        self.root = root
        self.recent = recent
        self.pause_seconds = pause_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="csud-store-check", daemon=True)
        self.state = "pending"  # running, done, stopped, failed
        self.days_total = 0
        self.days_checked = 0
        self.report: RecoveryReport | None = None
        self.error = ""
        self.seconds = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop after its current date directory and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "state": self.state,
            "days_total": self.days_total,
            "days_checked": self.days_checked,
            "seconds": round(self.seconds, 3),
        }
        if self.report is not None:
            out.update(_summary(self.report), seconds=round(self.seconds, 3))
        if self.error:
            out["error"] = self.error
        return out

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # lowest CPU priority, this thread only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
        started = time.perf_counter()
        self.state = "running"
        try:
            index = Index.open(self.index_path)
        except Exception as e:  # reported in /status and the log; recording goes on
            self.state, self.error = "failed", str(e)
            _log().error("store_check_failed", error=str(e))
            return
        try:
            self._check(index, started)
        except Exception as e:  # a broken index or disk: reported, recording goes on
            self.state, self.error = "failed", str(e)
            _log().error("store_check_failed", error=str(e), days_checked=self.days_checked)
        finally:
            index.close()

    def _check(self, index: Index, started: float) -> None:
        recent = self.recent
        work = _Recovery(index, self.root, recent.started_ns, os_actor(), skip_newer_ns=recent.started_ns)
        self.report = work.report
        plan: list[tuple[str, str, list[str]]] = []
        for commune, camera in work.cameras():
            days = work.days(commune, camera, exclude=recent.checked.get((commune, camera), frozenset()))
            plan.append((commune, camera, days))
            self.days_total += len(days)
            if self._stop.wait(self.pause_seconds):
                break
        for commune, camera, days in plan:
            for day in days:
                if self._stop.wait(self.pause_seconds):
                    self.state = "stopped"
                    self.seconds = time.perf_counter() - started
                    _log().info(
                        "store_check_stopped", days_checked=self.days_checked, days_total=self.days_total
                    )
                    return
                work.day(commune, camera, day)
                self.days_checked += 1
        self.seconds = work.report.seconds = time.perf_counter() - started
        summary = _summary(work.report)
        index.append_journal(
            RECOVERED,
            now_ns=time.time_ns(),
            actor=os_actor(),
            reason="background store check completed",
            details={"action": "background_check", "days": self.days_checked, **summary},
        )
        self.state = "done"
        _log().info("store_check_completed", days=self.days_checked, **summary)
