"""``/healthz`` in-process: a blocked event loop and an index that does not take writes give 503."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from csud.config import LoadedConfig, parse_settings
from csud.errors import StorageError
from csud.service import metrics
from csud.service.daemon import HEALTH_MAX_LOOP_LAG_SECONDS, Daemon
from csud.service.health import WritableProbe

pytestmark = pytest.mark.integration


def get(port: int, path: str, delay: float = 0.0) -> tuple[int, str]:
    time.sleep(delay)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def make_daemon(tmp_path: Path) -> Daemon:
    settings = parse_settings({"storage": {"root": str(tmp_path / "store")}})
    return Daemon(LoadedConfig(settings, tmp_path / "csud.toml", "0" * 64))


async def test_healthz_503_while_the_loop_is_blocked(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path)

    async def writable() -> None:
        return None

    daemon.probe = WritableProbe(writable)
    monitor = asyncio.create_task(daemon.monitor.run())
    await daemon._start_http("127.0.0.1:0")
    assert daemon.http is not None
    port = daemon.http.port
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(1.2)  # a couple of clean ticks
        assert await loop.run_in_executor(None, get, port, "/healthz") == (200, "ok\n")
        # The request arrives while a callback holds the loop for 3 s; it is answered after.
        answer = loop.run_in_executor(None, get, port, "/healthz", 0.3)
        loop.call_soon(time.sleep, 3.0)
        status, body = await answer
        assert status == 503, body
        assert body.startswith("event loop lag ") and f"exceeds {HEALTH_MAX_LOOP_LAG_SECONDS:g} s" in body
        lag = daemon.monitor.take_max()
        assert lag >= 2.0
        metrics.event_loop_lag.set(lag)  # what the export loop does
        _, scrape = await loop.run_in_executor(None, get, port, "/metrics")
        value = next(
            float(line.split()[1])
            for line in scrape.splitlines()
            if line.startswith("csud_event_loop_lag_seconds ")
        )
        assert value >= 2.0
        await asyncio.sleep(1.2)  # responsive again: healthy again
        assert await loop.run_in_executor(None, get, port, "/healthz") == (200, "ok\n")
    finally:
        monitor.cancel()
        assert daemon.http is not None
        await daemon.http.close()
        await daemon.probe.close()


async def test_healthz_503_when_the_index_refuses_or_hangs(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path)
    calls = 0

    async def refuses() -> None:
        nonlocal calls
        calls += 1
        raise StorageError("index not writable: attempt to write a readonly database")

    daemon.probe = WritableProbe(refuses, cache_seconds=60)
    await daemon._start_http("127.0.0.1:0")
    assert daemon.http is not None
    port = daemon.http.port
    loop = asyncio.get_running_loop()
    try:
        for _ in range(3):  # cached: one check for three requests
            status, body = await loop.run_in_executor(None, get, port, "/healthz")
            assert (status, body) == (503, "index not writable: attempt to write a readonly database\n")
        assert calls == 1

        async def hangs() -> None:
            await asyncio.sleep(30)

        await daemon.probe.close()
        daemon.probe = WritableProbe(hangs, timeout_seconds=0.2)
        status, body = await loop.run_in_executor(None, get, port, "/healthz")
        assert status == 503 and body.startswith("index did not answer within 0.2 s")
        assert (await loop.run_in_executor(None, get, port, "/nothing"))[0] == 404
    finally:
        await daemon.http.close()
        await daemon.probe.close()


async def test_real_index_probe(tmp_path: Path) -> None:
    from csud.recording.recorder import IndexService
    from csud.store.index import Index

    service = IndexService(Index.create(tmp_path / "index.sqlite3"))
    try:
        assert await WritableProbe(service.check_writable).problem() is None
    finally:
        service.close()
    readonly = IndexService(Index.open(tmp_path / "index.sqlite3", readonly=True))
    try:
        problem = await WritableProbe(readonly.check_writable).problem()
        assert problem is not None and problem.startswith("index not writable")
    finally:
        readonly.close()
