"""``csud run``: one event loop, one recorder task per camera, until SIGTERM or SIGINT.

Shutdown order: stop every session (TEARDOWN), let each recorder close, fsync, rename and index
its open segment, then close the index and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

from csud import __version__, metrics
from csud.aio.index import Index
from csud.aio.recorder import CameraRecorder, IndexService
from csud.aio.retention import RetentionService
from csud.config import LoadedConfig
from csud.log import get_logger

METRICS_EXPORT_SECONDS = 2.0
SHUTDOWN_TIMEOUT_SECONDS = 30.0
INDEX_FILENAME = "index.sqlite3"


async def run_daemon(loaded: LoadedConfig, stop: asyncio.Event | None = None) -> int:
    settings = loaded.settings
    log = get_logger()
    root = settings.storage.root
    root.mkdir(parents=True, exist_ok=True)
    index = IndexService(Index.open(root / INDEX_FILENAME))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    communes = {c.id: c for c in settings.communes}
    recorders = [
        CameraRecorder(
            camera,
            communes[camera.commune],
            root,
            settings.storage.segment_seconds,
            index,
            camera.resolve_password(),
        )
        for camera in settings.cameras
        if camera.enabled
    ]
    _start_metrics_server(settings.metrics.listen, log)
    log.info(
        "daemon_started",
        version=__version__,
        config=str(loaded.path),
        config_sha256=loaded.sha256,
        cameras=len(recorders),
        root=str(root),
        pid=os.getpid(),
    )
    # Retention: own thread and connection; finishes interrupted destructions and journals
    # config_loaded + daemon_started before any camera records (docs/storage.md, "Startup").
    retention = RetentionService(root / INDEX_FILENAME, settings)
    await retention.start(loaded, cameras=len(recorders))
    tasks = [asyncio.create_task(r.run(stop), name=f"camera:{r.camera.id}") for r in recorders]
    exporter = asyncio.create_task(_export_loop(recorders, root, stop))
    retention_task = asyncio.create_task(retention.run(stop), name="retention")
    try:
        await stop.wait()
        log.info("daemon_stopping")
        pending: set[asyncio.Task[None]] = set()
        if tasks:  # asyncio.wait refuses an empty set (a site with no enabled camera)
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_SECONDS)
        for task in pending:
            log.error("camera_stop_timeout", task=task.get_name())
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
    finally:
        exporter.cancel()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await retention_task  # a pass in progress finishes (its steps are not interrupted)
        written = sum(r.stats.segments_written for r in recorders)
        await retention.close(written)  # journals daemon_stopped
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await asyncio.to_thread(index.close)
    log.info("daemon_stopped", segments_written=written)
    return 0


def _start_metrics_server(listen: str, log: object) -> None:
    if not listen:
        return
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"), registry=metrics.REGISTRY)


async def _export_loop(recorders: list[CameraRecorder], root: Path, stop: asyncio.Event) -> None:
    while not stop.is_set():
        metrics.export(recorders)
        usage = await asyncio.to_thread(shutil.disk_usage, root)
        metrics.storage_free.set(usage.free)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), METRICS_EXPORT_SECONDS)
