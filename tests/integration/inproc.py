"""In-process fixtures: the simulator and one camera's recorder in the test's own event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from csud.config import parse_settings
from csud.recording.recorder import CameraRecorder, IndexService
from csud.sim.server import SimOptions, SimServer, serve
from csud.store.identity import create_store
from csud.store.index import Index


def sim_options(**kw: Any) -> SimOptions:
    base: dict[str, Any] = dict(cameras=1, port=0, width=320, height=240, bitrate=300_000, gop_seconds=1.0)
    base.update(kw)
    return SimOptions(**base)


@asynccontextmanager
async def simulator(**kw: Any) -> AsyncIterator[SimServer]:
    server = await serve(sim_options(**kw))
    try:
        yield server
    finally:
        await server.close()


def make_recorder(tmp_path: Path, port: int, password: str | None = None, **camera: Any) -> CameraRecorder:
    cam: dict[str, Any] = {"id": "cam1", "commune": "metz", "url": f"rtsp://127.0.0.1:{port}/cam1"}
    if password is not None:
        cam.update(username="csud", password=password)
    cam.update(camera)
    settings = parse_settings(
        {
            "storage": {"root": str(tmp_path / "store"), "segment_seconds": 5},
            "communes": [{"id": "metz", "name": "Metz", "service": "live", "retention_days": 15}],
            "cameras": [cam],
        }
    )
    create_store(tmp_path / "store")
    index = IndexService(Index.open(tmp_path / "store" / "index.sqlite3"))
    camera_cfg = settings.cameras[0]
    return CameraRecorder(
        camera_cfg, settings.communes[0], tmp_path / "store", 5, index, camera_cfg.resolve_password()
    )


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(recorder: CameraRecorder) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(recorder.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        recorder.index.close()


def split_blob(blob: bytes | bytearray) -> list[bytes]:
    """The interleaved frames of a simulator frame blob, each with its 4-byte header."""
    out, offset = [], 0
    while offset + 4 <= len(blob):
        length = blob[offset + 2] << 8 | blob[offset + 3]
        out.append(bytes(blob[offset : offset + 4 + length]))
        offset += 4 + length
    return out
