"""``csud run``: one event loop, one recorder task per camera, until SIGTERM or SIGINT.

Startup: open the index (off the loop: a migration may take a while), bind the HTTP endpoint,
journal ``config_loaded`` and ``daemon_started`` (retention service), start one recorder per
enabled camera, then tell systemd ``READY=1``. The watchdog (``WATCHDOG=1``) is pinged from the
event loop from the very start, so a slow startup is not mistaken for a hang but a stuck loop is.

Reload (SIGHUP, ``systemctl reload``): re-read the same file; all or nothing. An invalid file, an
unreadable ``password_file``, or a change of ``storage.root`` or ``metrics.listen`` (they need a
restart) is refused: the running configuration stays, the reason is logged on one line and
``csud_config_reload_failures_total`` counts it. Otherwise cameras are diffed by id: removed ones
stop (their open segment is closed and indexed), changed ones (any camera field, its commune,
its password, ``segment_seconds`` or ``[network]``) stop and start again, added ones start, and unchanged ones
are not touched at all (same task, same session, same open segment: no gap). The retention
service takes the new policies before its next pass and journals ``config_loaded``.

Shutdown order: ``STOPPING=1``; let a reload in progress finish; stop every session (TEARDOWN),
let each recorder close, fsync, rename and index its open segment; journal ``daemon_stopped``;
close the index and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from csud import __version__
from csud.config import CameraConfig, CommuneConfig, LoadedConfig, load_config
from csud.errors import ConfigError, CsudError
from csud.log import get_logger
from csud.recording.budget import MIB, MemoryBudget, default_budget_bytes
from csud.recording.recorder import NS_PER_SECOND, CameraRecorder, IndexService
from csud.service import metrics
from csud.service.health import LoopMonitor, WritableProbe
from csud.service.http import HttpServer, Response, text
from csud.service.retention import RetentionService
from csud.service.systemd import Notifier
from csud.store.identity import verify_store
from csud.store.index import Index
from csud.store.recovery import StoreLock
from csud.store.startup import BackgroundCheck, recover_at_startup

if TYPE_CHECKING:
    from csud.cluster.runtime import ClusterRuntime

METRICS_EXPORT_SECONDS = 2.0
SHUTDOWN_TIMEOUT_SECONDS = 30.0
INDEX_FILENAME = "index.sqlite3"
HEALTH_MAX_LOOP_LAG_SECONDS = 1.0  # /healthz answers 503 above this
RATE_WINDOW_SECONDS = 10.0  # bitrate and fps in `csud status` are averaged over this
STATUS_PATH = "/status"


async def run_daemon(loaded: LoadedConfig, stop: asyncio.Event | None = None) -> int:
    """Record until ``stop`` is set (or SIGTERM/SIGINT); reload on SIGHUP. Returns the exit code."""
    return await Daemon(loaded).run(stop or asyncio.Event())


class RateMeter:
    """Bitrate and frame rate over the last ``window_seconds``, from samples of two counters.

    Sampled by the export loop every few seconds: nothing here runs per packet.
    """

    def __init__(self, window_seconds: float = RATE_WINDOW_SECONDS) -> None:
        self.window_seconds = window_seconds
        self._samples: deque[tuple[float, int, int]] = deque()
        self.bitrate_bps = 0.0
        self.fps = 0.0

    def sample(self, now: float, bytes_total: int, frames_total: int) -> None:
        samples = self._samples
        samples.append((now, bytes_total, frames_total))
        # Keep one sample at or before the window's start, so the span covers the whole window.
        while len(samples) > 2 and samples[1][0] <= now - self.window_seconds:
            samples.popleft()
        then, bytes_then, frames_then = samples[0]
        span = now - then
        if span > 0:
            self.bitrate_bps = max(0, bytes_total - bytes_then) * 8 / span
            self.fps = max(0, frames_total - frames_then) / span


@dataclass
class RunningCamera:
    """A recorder with its own stop event and task, so a reload can stop it alone."""

    recorder: CameraRecorder
    stop: asyncio.Event
    task: asyncio.Task[None]
    password: str | None
    rates: RateMeter = field(default_factory=RateMeter)


@dataclass
class ReloadPlan:
    added: list[tuple[CameraConfig, CommuneConfig, str | None]] = field(default_factory=list)
    changed: list[tuple[CameraConfig, CommuneConfig, str | None]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


class Daemon:
    """The recording daemon's state: running cameras, index, retention, HTTP endpoint, systemd."""

    def __init__(self, loaded: LoadedConfig, notifier: Notifier | None = None) -> None:
        self.loaded = loaded
        self.root = loaded.settings.storage.root
        self.notifier = notifier or Notifier()
        self.monitor = LoopMonitor()
        self.cameras: dict[str, RunningCamera] = {}
        self.log = get_logger()
        self.started_ns = time.time_ns()
        self.index: IndexService | None = None
        self.retention: RetentionService | None = None
        self.http: HttpServer | None = None
        self.probe: WritableProbe | None = None
        self.live: Any = None  # csud.live.web.LiveServer when [web] listen is set
        self.store_lock: StoreLock | None = None  # one daemon per store (csud.store.recovery)
        self.store_check: BackgroundCheck | None = None  # startup step 7 (csud.store.startup)
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload: dict[str, Any] = {}
        self._segments_of_stopped = 0  # segments written by recorders a reload stopped
        # Last segment per camera across recorder sessions (reload, restart): `csud status`.
        self.last_segments: dict[str, tuple[str, int]] = {}
        self._reload_requested = asyncio.Event()
        self._lock = asyncio.Lock()  # one reload at a time; shutdown waits for it
        self.cluster: ClusterRuntime | None = None  # [cluster]: csud.cluster decides the cameras

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        settings = self.loaded.settings
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        background = [
            asyncio.create_task(self.monitor.run(), name="loop-monitor"),
            asyncio.create_task(self._watchdog_loop(), name="watchdog"),
        ]
        retention_task: asyncio.Task[None] | None = None
        try:
            # Refuse (exit 2) a root that is not our store: never create one (csud init does).
            await asyncio.to_thread(verify_store, self.root)
            self.store_lock = StoreLock.acquire(self.root)
            enabled = [c for c in settings.cameras if c.enabled]
            passwords = {c.id: c.resolve_password() for c in enabled}  # ConfigError: exit 2
            self._cluster_init()
            index = await asyncio.to_thread(Index.open, self.root / INDEX_FILENAME)
            self.last_segments = await asyncio.to_thread(
                last_segments, index, [c.id for c in enabled], time.time_ns()
            )
            self.index = self.cluster.index_service(index) if self.cluster else IndexService(index)
            self.probe = WritableProbe(self.index.check_writable)
            await self._start_http(settings.metrics.listen)
            if settings.web.listen:  # live viewing (csud.live): operators' wall and streams
                from csud.live.web import LiveServer

                self.live = LiveServer(settings, self.index.index, self._camera_up)
                await self.live.start()
            self.log.info(
                "daemon_started",
                version=__version__,
                config=str(self.loaded.path),
                config_sha256=self.loaded.sha256,
                cameras=len(enabled),
                root=str(self.root),
                pid=os.getpid(),
                metrics=settings.metrics.listen or None,
                watchdog_seconds=self.notifier.watchdog_seconds,
            )
            # Retention: own thread and connection; finishes interrupted destructions and journals
            # config_loaded + daemon_started before any camera records (docs/storage.md, "Startup").
            self.retention = RetentionService(self.root / INDEX_FILENAME, settings)
            await self.retention.start(self.loaded, cameras=len(enabled))
            # Then partial and orphan segment files, rows without a file, of the latest days
            # ("Startup", steps 4-6); the rest in the background once cameras record (step 7).
            recent = await recover_at_startup(self.root / INDEX_FILENAME, self.root)
            await self.retention.journal_unclean_stop(recent.report)  # after a SIGKILL or power loss
            communes = {c.id: c for c in settings.communes}
            if self.cluster is not None:
                await self.cluster.start()  # starts and stops the cameras this node owns
            else:
                for camera in enabled:
                    self._start_camera(camera, communes[camera.commune], passwords[camera.id])
            self.store_check = BackgroundCheck(self.root / INDEX_FILENAME, self.root, recent)
            self.store_check.start()
            background.append(asyncio.create_task(self._export_loop(stop), name="metrics-export"))
            background.append(asyncio.create_task(self._reload_loop(stop), name="reload"))
            retention_task = asyncio.create_task(self.retention.run(stop), name="retention")
            self.notifier.ready(self._status_line())
            await stop.wait()
            self.notifier.stopping("stopping: closing open segments")
            self.log.info("daemon_stopping")
            async with self._lock:  # a reload in progress finishes first
                await self._cluster_stop()
                await self._stop_cameras(list(self.cameras))
        finally:
            stop.set()
            await self._cluster_stop()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if retention_task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await retention_task  # a pass in progress finishes (its steps are not interrupted)
            if self.cameras:  # startup failed half-way: stop what did start
                await self._stop_cameras(list(self.cameras))
            if self.store_check is not None:
                await asyncio.to_thread(self.store_check.stop)
            written = self._segments_of_stopped
            if self.retention is not None:
                await self.retention.close(written)  # journals daemon_stopped
            if self.live is not None:
                await self.live.close()
            if self.http is not None:
                await self.http.close()
            if self.probe is not None:
                await self.probe.close()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if self.index is not None:
                await asyncio.to_thread(self.index.close)
            self.notifier.close()
            if self.store_lock is not None:
                self.store_lock.release()
        self.log.info("daemon_stopped", segments_written=written)
        return 0

    def _memory_budget(self) -> MemoryBudget:
        """The one budget every recorder charges its queued bytes to (``[storage] memory_budget_mb``,
        default 1/32 of the RAM, at most 1 GiB); built once, kept across reloads."""
        budget: MemoryBudget | None = getattr(self, "_budget", None)
        if budget is None:
            mib = self.loaded.settings.storage.memory_budget_mb
            if mib is None:
                ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                total = default_budget_bytes(ram)
            else:
                total = mib * MIB
            budget = self._budget = MemoryBudget(total)
            self.log.info("memory_budget", bytes=total)
        return budget

    def _start_camera(self, camera: CameraConfig, commune: CommuneConfig, password: str | None) -> None:
        assert self.index is not None
        recorder = CameraRecorder(
            camera,
            commune,
            self.root,
            self.loaded.settings.storage.segment_seconds,
            self.index,
            password,
            udp_bind=self.loaded.settings.network.udp_bind,
            budget=self._memory_budget(),
        )
        if self.live is not None:
            recorder.set_tap(self.live.frame_sink(camera.id))
        stop = asyncio.Event()
        task = asyncio.create_task(recorder.run(stop), name=f"camera:{camera.id}")
        self.cameras[camera.id] = RunningCamera(recorder, stop, task, password)

    async def _stop_cameras(self, camera_ids: list[str]) -> None:
        """Stop these cameras together; each closes and indexes its open segment first."""
        running = [self.cameras.pop(cid) for cid in camera_ids if cid in self.cameras]
        if not running:
            return  # asyncio.wait refuses an empty set
        for cam in running:
            cam.stop.set()
        tasks = {cam.task for cam in running}
        _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_SECONDS)
        for task in pending:
            self.log.error("camera_stop_timeout", task=task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        for cam in running:
            self._segments_of_stopped += cam.recorder.stats.segments_written
            if cam.recorder.stats.last_segment_end_ns:
                stats = cam.recorder.stats
                self.last_segments[cam.recorder.camera.id] = (
                    stats.last_segment_relpath,
                    stats.last_segment_end_ns,
                )
            if cam.task.done() and not cam.task.cancelled() and cam.task.exception() is not None:
                self.log.error(
                    "camera_task_failed", camera=cam.recorder.camera.id, error=str(cam.task.exception())
                )
        metrics.export(cam.recorder for cam in running)  # their last counts, before forgetting them

    async def _start_http(self, listen: str) -> None:
        if not listen:
            return
        host, _, port = listen.rpartition(":")
        self.http = HttpServer(
            {"/metrics": self._metrics, "/healthz": self._healthz, STATUS_PATH: self._status}
        )
        try:
            await self.http.start(host, int(port))
        except OSError as exc:
            self.http = None
            raise CsudError(f"metrics.listen {listen}: cannot listen: {exc.strerror or exc}") from None

    # -- cluster (csud.cluster; absent [cluster], none of this runs) -----------------------------

    def _cluster_init(self) -> None:
        config = self.loaded.settings.cluster
        if config is not None and self.cluster is None:
            from csud.cluster.runtime import ClusterRuntime

            self.cluster = ClusterRuntime(self, config)

    async def _cluster_stop(self) -> None:
        """Leave the cluster first: no camera may start again while the daemon stops them."""
        if self.cluster is not None:
            await self.cluster.stop()

    # -- reload ------------------------------------------------------------------------------

    async def _reload_loop(self, stop: asyncio.Event) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()  # several SIGHUPs in a row make one reload
            async with self._lock:
                if stop.is_set():
                    return
                await self.reload()

    async def reload(self) -> bool:
        """Re-read the configuration file and apply it (see the module doc). True if applied."""
        path = self.loaded.path
        self.notifier.reloading()
        try:
            try:
                new = await asyncio.to_thread(load_config, path)
                plan = self._plan_reload(new)
            except ConfigError as exc:
                self.reload_failures += 1
                metrics.config_reload_failures.inc()
                self.last_reload = {"ok": False, "at_ns": time.time_ns(), "error": str(exc)}
                self.log.error("config_reload_failed", error=str(exc), config=str(path))
                return False
            await self._apply(new, plan)
            return True
        finally:
            self.notifier.ready(self._status_line())

    def _plan_reload(self, new: LoadedConfig) -> ReloadPlan:
        """What a reload to ``new`` changes; :class:`ConfigError` when it must be refused."""
        old_s, new_s = self.loaded.settings, new.settings
        if new_s.storage.root != old_s.storage.root:
            raise ConfigError(
                f"storage.root changed ({old_s.storage.root} -> {new_s.storage.root}): "
                "moving the store needs a restart; reload refused"
            )
        if new_s.metrics.listen != old_s.metrics.listen:
            raise ConfigError(
                f"metrics.listen changed ({old_s.metrics.listen!r} -> {new_s.metrics.listen!r}): "
                "needs a restart; reload refused"
            )
        if new_s.web != old_s.web:
            raise ConfigError("[web] changed: the live-viewing server needs a restart; reload refused")
        communes = {c.id: c for c in new_s.communes}
        wanted = {c.id: c for c in new_s.cameras if c.enabled}
        passwords = {cid: cam.resolve_password() for cid, cam in wanted.items()}  # all or nothing
        # Settings every recorder was built with: a change restarts them all.
        same_shared = (
            new_s.storage.segment_seconds == old_s.storage.segment_seconds and new_s.network == old_s.network
        )
        plan = ReloadPlan(removed=[cid for cid in self.cameras if cid not in wanted])
        for cid, camera in wanted.items():
            if self.cluster is not None and cid not in self.cameras:
                continue  # in a cluster, the node loop starts the cameras this node owns
            commune, password = communes[camera.commune], passwords[cid]
            running = self.cameras.get(cid)
            if running is None:
                plan.added.append((camera, commune, password))
            elif (
                running.recorder.camera != camera
                or running.recorder.commune != commune
                or running.password != password
                or not same_shared
            ):
                plan.changed.append((camera, commune, password))
            else:
                plan.unchanged.append(cid)
        return plan

    async def _apply(self, new: LoadedConfig, plan: ReloadPlan) -> None:
        old_labels = {
            cid: (cam.recorder.camera.id, cam.recorder.commune.id) for cid, cam in self.cameras.items()
        }
        restarted = [camera.id for camera, _, _ in plan.changed]
        await self._stop_cameras(plan.removed + restarted)
        for cid in plan.removed:
            metrics.forget(*old_labels[cid])
        for camera, commune, _ in plan.changed:
            if old_labels[camera.id] == (camera.id, commune.id):
                metrics.restarted(camera.id, commune.id)  # same series, counting on from there
            else:
                metrics.forget(*old_labels[camera.id])
        self.loaded = new
        if self.live is not None:
            self.live.update_settings(new.settings)  # a withdrawn right closes its streams now
        for camera, commune, password in plan.added + plan.changed:
            self._start_camera(camera, commune, password)
        summary = {
            "cameras_added": sorted(c.id for c, _, _ in plan.added),
            "cameras_removed": sorted(plan.removed),
            "cameras_restarted": sorted(restarted),
        }
        if self.retention is not None:
            await self.retention.reload(new, summary)
        self.reloads += 1
        metrics.config_reloads.inc()
        self.last_reload = {"ok": True, "at_ns": time.time_ns(), "sha256": new.sha256, **summary}
        self.log.info(
            "config_reloaded", config_sha256=new.sha256, cameras_unchanged=len(plan.unchanged), **summary
        )

    # -- background tasks --------------------------------------------------------------------

    async def _export_loop(self, stop: asyncio.Event) -> None:
        """Every few seconds: counters into Prometheus, rates for status, disk usage, STATUS=."""
        while not stop.is_set():
            cameras = list(self.cameras.values())
            metrics.export(cam.recorder for cam in cameras)
            now = time.monotonic()
            for cam in cameras:
                stats = cam.recorder.stats
                cam.rates.sample(now, stats.bytes_received, stats.frames_received)
            metrics.event_loop_lag.set(self.monitor.take_max())
            budget = self._memory_budget()
            metrics.memory_budget.set(budget.total_bytes)
            metrics.memory_budget_used.set(budget.used_bytes)
            usage = await asyncio.to_thread(shutil.disk_usage, self.root)
            metrics.storage_free.set(usage.free)
            metrics.storage_size.set(usage.total)
            self.notifier.status(self._status_line())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), METRICS_EXPORT_SECONDS)

    async def _watchdog_loop(self) -> None:
        """``WATCHDOG=1`` at half the watchdog timeout, from this loop: a stuck loop stops pinging."""
        timeout = self.notifier.watchdog_seconds
        if timeout is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(timeout / 2)

    def _camera_up(self, camera_id: str) -> bool:
        running = self.cameras.get(camera_id)
        return running is not None and running.recorder.stats.up

    def _status_line(self) -> str:
        up = sum(1 for cam in self.cameras.values() if cam.recorder.stats.up)
        return f"recording: {up}/{len(self.cameras)} cameras up"

    # -- HTTP routes -------------------------------------------------------------------------

    async def _metrics(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        # Rendering thousands of series takes milliseconds: off the loop (the registry locks).
        body = await asyncio.to_thread(generate_latest, metrics.REGISTRY)
        return Response(200, body, CONTENT_TYPE_LATEST)

    async def _healthz(self) -> Response:
        """200 while the loop is responsive and the index takes writes; else 503 and why."""
        problems = []
        lag = self.monitor.current_lag()
        if lag > HEALTH_MAX_LOOP_LAG_SECONDS:
            problems.append(f"event loop lag {lag:.3f} s exceeds {HEALTH_MAX_LOOP_LAG_SECONDS:g} s")
        problem = await self.probe.problem() if self.probe is not None else "index not open"
        if problem:
            problems.append(problem)
        if problems:
            return text(503, "; ".join(problems) + "\n")
        return text(200, "ok\n")

    async def _status(self) -> Response:
        import json

        return Response(200, json.dumps(self.status()).encode(), "application/json")

    def status(self) -> dict[str, Any]:
        """The live camera table that ``csud status`` prints (a JSON contract: keys only added)."""
        now_ns = time.time_ns()
        cameras = []
        for cid in sorted(self.cameras):
            cam = self.cameras[cid]
            stats = cam.recorder.stats
            last_path, last_end_ns = (
                (stats.last_segment_relpath, stats.last_segment_end_ns)
                if stats.last_segment_end_ns
                else self.last_segments.get(cid, ("", 0))
            )
            cameras.append(
                {
                    "camera": cid,
                    "commune": cam.recorder.commune.id,
                    "up": stats.up,
                    "last_frame_age_seconds": _age(stats.last_frame_ns, now_ns),
                    "bitrate_bps": round(cam.rates.bitrate_bps),
                    "fps": round(cam.rates.fps, 2),
                    "last_segment": last_path or None,
                    "last_segment_end_ns": last_end_ns or None,
                    "last_segment_age_seconds": _age(last_end_ns, now_ns),
                    "segments_written": stats.segments_written,
                    "reconnects": stats.reconnects,
                    "clock_offset_seconds": stats.clock_offset_seconds,
                    "last_error": stats.last_error or None,
                }
            )
        return {
            "version": __version__,
            "pid": os.getpid(),
            "started_ns": self.started_ns,
            "config": {"path": str(self.loaded.path), "sha256": self.loaded.sha256},
            "root": str(self.root),
            "event_loop_lag_seconds": round(self.monitor.current_lag(), 4),
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "last_reload": self.last_reload or None,
            "store_check": self.store_check.status() if self.store_check is not None else None,
            "cameras": cameras,
        }


LAST_SEGMENT_LOOKBACKS_SECONDS = (3600, 86_400, 31 * 86_400)  # widened until one is found


def last_segments(index: Index, cameras: list[str], now_ns: int) -> dict[str, tuple[str, int]]:
    """(path, end) of each camera's last indexed segment, for `csud status` after a restart.
    Looks back one hour first (one query of a few rows per camera), then wider."""
    found: dict[str, tuple[str, int]] = {}
    for camera in cameras:
        for lookback in LAST_SEGMENT_LOOKBACKS_SECONDS:
            rows = index.segments(camera, now_ns - lookback * NS_PER_SECOND)
            if rows:
                last = max(rows, key=lambda r: r.end_ns)
                found[camera] = (last.path, last.end_ns)
                break
    return found


def _age(then_ns: int, now_ns: int) -> float | None:
    return round((now_ns - then_ns) / NS_PER_SECOND, 3) if then_ns else None
