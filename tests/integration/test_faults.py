"""One test per simulated camera fault (csud.sim.faults), in one event loop with two recorders.

Camera 1 misbehaves, camera 2 is healthy. Every test asserts that camera 1 recovers (or, for a
camera that never answers in time, is reported down with its failures counted) and that camera 2,
recorded in the same loop and index during the fault, lost nothing: every frame the simulator
sent it from its first keyframe is in its segments, no packet lost, no reconnect.

Also here, because they need the same rig: isolation under a slow writer (whole GOPs dropped as
``overload``, memory bounded, the other camera unaffected) and storage-error episodes (logged
once per episode, recording resumes by itself).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest

from csud.config import parse_settings
from csud.recording import pipeline as pipeline_module
from csud.recording import writer as writer_module
from csud.recording.recorder import CameraRecorder, IndexService
from csud.sim.faults import FaultInjector
from csud.sim.server import SimOptions, SimServer, serve
from csud.store.index import Index

pytestmark = pytest.mark.integration
GOP = 25


@dataclass
class Rig:
    sim: SimServer
    faults: FaultInjector
    faulty: CameraRecorder
    healthy: CameraRecorder
    root: Path

    def rows(self, camera: str) -> list[Any]:
        index = Index.open(self.root / "index.sqlite3", readonly=True)
        try:
            return index.segments(camera)
        finally:
            index.close()


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def rig(tmp_path: Path, stall_seconds: float = 2.0, **sim: Any) -> AsyncIterator[Rig]:
    """Simulator (2 cameras, faults installed) and two recorders sharing one index thread;
    returns once both record. On exit: both stop (TEARDOWN), then the simulator."""
    faults = FaultInjector(seed=7)
    options: dict[str, Any] = dict(
        cameras=2, port=0, width=320, height=240, bitrate=300_000, gop_seconds=1.0, faults=faults
    )
    options.update(sim)
    server = await serve(SimOptions(**options))
    root = tmp_path / "store"
    root.mkdir()
    settings = parse_settings(
        {
            "storage": {"root": str(root), "segment_seconds": 5},
            "communes": [{"id": "metz", "name": "Metz", "service": "live", "retention_days": 15}],
            "cameras": [
                {
                    "id": f"cam{i}",
                    "commune": "metz",
                    "url": f"rtsp://127.0.0.1:{server.port}/cam{i}",
                    "stall_seconds": stall_seconds,
                }
                for i in (1, 2)
            ],
        }
    )
    index = IndexService(Index.create(root / "index.sqlite3"))
    recorders = [CameraRecorder(cam, settings.communes[0], root, 5, index, None) for cam in settings.cameras]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in recorders]
    try:
        await wait_for(lambda: all(r.stats.frames_received > GOP for r in recorders), 15, "both cameras")
        yield Rig(server, faults, recorders[0], recorders[1], root)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        index.close()
        await server.close()


def assert_healthy_lost_nothing(r: Rig) -> None:
    """Camera 2 recorded every frame the simulator sent it from its first keyframe."""
    stats = r.healthy.stats
    sent = r.sim.stats()["cameras"]["cam2"]["frames_sent_from_first_keyframe"]
    recorded = sum(row.frames for row in r.rows("cam2"))
    assert (stats.lost_packets, stats.failures, stats.reconnects, stats.malformed_packets) == (0, 0, 0, 0)
    assert set(stats.dropped_frames) <= {"wait_keyframe"}, stats.dropped_frames
    assert recorded == sent == stats.frames_recorded, (recorded, sent)


async def recovered(r: Rig, since_ns: int, timeout: float = 12) -> None:
    """Camera 1 is up again and has received two GOPs after ``since_ns``."""
    start = r.faulty.stats.frames_received
    await wait_for(
        lambda: (
            r.faulty.stats.up
            and r.faulty.stats.frames_received >= start + 2 * GOP
            and r.faulty.stats.last_frame_ns > since_ns
        ),
        timeout,
        "the faulty camera to recover",
    )


def recorded_after(r: Rig, since_ns: int) -> int:
    return sum(row.frames for row in r.rows("cam1") if row.start_ns >= since_ns)


async def test_packet_loss_cuts_damaged_gops_and_recording_goes_on(tmp_path: Path) -> None:
    async with rig(tmp_path, bitrate=1_000_000) as r:
        r.faults.inject("loss", 10, cameras=[1], duration=2.0)
        await asyncio.sleep(2.2)
        ended = time.time_ns()
        await recovered(r, ended)
    stats = r.faulty.stats
    assert stats.lost_packets > 0 and stats.dropped_frames.get("gap", 0) > 0
    assert r.faults.stats["loss"].frames_altered > 0
    assert recorded_after(r, ended) >= GOP
    for row in r.rows("cam1"):  # nothing damaged was written
        with av.open(str(r.root / row.path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == row.frames
    assert_healthy_lost_nothing(r)


async def test_stall_without_closing_is_detected_and_recovers(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        since = time.time_ns()
        r.faults.inject("stall", 4.0, cameras=[1])
        await wait_for(lambda: r.faulty.stats.failures >= 1, 6, "the stall to be detected")
        assert "stall" in r.faulty.stats.last_error
        await asyncio.sleep(2.5)  # the stall ends 4 s after it began
        await recovered(r, time.time_ns())
    assert r.faulty.stats.reconnects >= 1 and recorded_after(r, since) >= 2 * GOP
    assert r.faults.stats["stall"].frames_dropped > 0
    assert_healthy_lost_nothing(r)


async def test_close_in_the_middle_of_an_fu_a_recovers(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        since = time.time_ns()
        r.faults.inject("fu-close", cameras=[1])
        await wait_for(lambda: r.faulty.stats.failures >= 1, 5, "the close to be seen")
        assert "closed the connection" in r.faulty.stats.last_error
        await recovered(r, time.time_ns())
    assert r.faults.stats["fu-close"].connections_closed == 1
    assert recorded_after(r, since) >= GOP
    assert_healthy_lost_nothing(r)


async def test_reboot_new_ssrc_and_timestamp_jump_starts_a_new_segment(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        rows_before = len(r.rows("cam1"))
        since = time.time_ns()
        r.faults.inject("reboot", cameras=[1])
        await wait_for(lambda: r.faults.stats["reboot"].fired == 1, 3, "the reboot")
        await recovered(r, time.time_ns())
    assert rows_before == 0
    rows = r.rows("cam1")
    assert len(rows) >= 2, "a reboot is a discontinuity: the segment closes, a new one opens"
    assert recorded_after(r, since) >= GOP
    # The new segment is on the server clock, not the camera's jumped RTP time.
    assert abs(rows[-1].end_ns - time.time_ns()) < 5 * 10**9
    assert_healthy_lost_nothing(r)


async def test_garbage_on_the_interleaved_channel_never_harms_the_daemon(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        since = time.time_ns()
        r.faults.inject("garbage", 4096, cameras=[1])
        await wait_for(lambda: r.faults.stats["garbage"].fired == 1, 3, "the garbage")
        await asyncio.sleep(0.5)
        await recovered(r, time.time_ns())
    assert recorded_after(r, since) >= GOP
    assert_healthy_lost_nothing(r)


@pytest.mark.parametrize("then", ["stall", "close"])
async def test_interleaved_length_65535_with_less_data(tmp_path: Path, then: str) -> None:
    async with rig(tmp_path) as r:
        since = time.time_ns()
        r.faults.inject("len65535", then, cameras=[1])
        await wait_for(lambda: r.faulty.stats.failures >= 1, 6, "the session to fail")
        assert ("stall" if then == "stall" else "closed") in r.faulty.stats.last_error
        await recovered(r, time.time_ns())
    assert recorded_after(r, since) >= GOP
    assert_healthy_lost_nothing(r)


async def test_slow_rtsp_responses_report_the_camera_down_then_it_recovers(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.faults.inject("slow-rtsp", 100, cameras=[1])  # one byte every 100 ms, until cleared
        await wait_for(lambda: not r.faulty.stats.up, 3, "the camera to be kicked")
        await wait_for(lambda: r.faulty.stats.failures >= 2, 14, "the request timeout")
        assert not r.faulty.stats.up
        assert "did not answer within the request timeout" in r.faulty.stats.last_error
        assert r.faults.stats["slow-rtsp"].responses_slowed >= 1
        r.faults.clear()
        ended = time.time_ns()
        await recovered(r, ended)
    assert recorded_after(r, ended) >= GOP
    assert_healthy_lost_nothing(r)


async def test_401_loop_reports_auth_failures_then_recovers(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.faults.inject("401-loop", cameras=[1], duration=3.0)
        await wait_for(lambda: r.faulty.stats.failures >= 2, 6, "refused attempts")
        assert not r.faulty.stats.up and "refused the credentials" in r.faulty.stats.last_error
        await asyncio.sleep(1.0)  # the 401 loop lasts 3 s
        ended = time.time_ns()
        await recovered(r, ended, timeout=15)
    assert r.faults.stats["401-loop"].requests_refused >= 1
    assert recorded_after(r, ended) >= GOP
    assert_healthy_lost_nothing(r)


async def test_sps_change_rotates_to_a_segment_at_the_new_resolution(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.faults.load_alt_clip()
        r.faults.inject("sps-change", cameras=[1], duration=2.5)
        await asyncio.sleep(4.5)  # switched at a keyframe, and back at a keyframe
    sizes = []
    for row in r.rows("cam1"):
        with av.open(str(r.root / row.path)) as container:
            stream = container.streams.video[0]
            sizes.append((stream.codec_context.width, stream.codec_context.height))
            assert sum(1 for _ in container.decode(video=0)) == row.frames
    assert (240, 180) in sizes and sizes[0] == sizes[-1] == (320, 240), sizes
    stats = r.faulty.stats
    assert (stats.failures, stats.lost_packets) == (0, 0)
    sent = r.sim.stats()["cameras"]["cam1"]["frames_sent_from_first_keyframe"]
    assert sum(row.frames for row in r.rows("cam1")) == sent  # a clean switch loses nothing
    assert_healthy_lost_nothing(r)


async def test_slow_writer_drops_whole_gops_with_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Camera 1's storage is slow (every write of its segments sleeps): its writer queue fills,
    the recorder drops whole GOPs ("overload"), memory stays bounded; camera 2 is untouched."""
    limit = 300_000
    monkeypatch.setattr(pipeline_module, "WRITER_QUEUE_MAX_BYTES", limit)
    original = writer_module.SegmentWriter.write

    async def slow_write(self: Any, frames: Any) -> None:
        if "/cam1/" in self.relpath:
            await asyncio.sleep(1.5)
        await original(self, frames)

    monkeypatch.setattr(writer_module.SegmentWriter, "write", slow_write)
    peak = {"bytes": 0, "items": 0}
    async with rig(tmp_path, bitrate=1_000_000) as r:
        for _ in range(100):  # 8 s
            peak["bytes"] = max(peak["bytes"], r.faulty.pipeline.queued_bytes)
            peak["items"] = max(peak["items"], r.faulty._queue.qsize())
            await asyncio.sleep(0.08)
    stats = r.faulty.stats
    assert stats.dropped_frames.get("overload", 0) > GOP
    # Bounded: the limit plus at most one GOP (the one that crossed it; ~5 kB a frame here).
    assert peak["bytes"] <= limit + GOP * 20_000, peak
    # The GOP in flight is cut where the queue overflowed (the frames before the cut are whole
    # and written), the next ones are dropped until a keyframe: every file decodes completely.
    for row in r.rows("cam1"):
        with av.open(str(r.root / row.path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == row.frames
    assert_healthy_lost_nothing(r)


async def test_storage_errors_are_logged_once_per_episode_and_recording_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """EIO on every write of camera 1 for 3 s (one episode, several errors), then one EIO on a
    close's fsync (a second episode): each segment is closed at its last good fragment and
    indexed, each episode is logged once (``storage_error`` ... ``storage_recovered``), every
    error is counted, recording resumes by itself, camera 2 is untouched."""
    import errno
    import json
    import os as os_module

    from csud import log

    log.configure("info", json=True)
    failing = {"writes": False, "fsync": False, "fsync_failed": 0}
    original_write_chunk = writer_module.SegmentWriter._write_chunk

    def write_chunk(self: Any, view: memoryview) -> int:  # the writer's one write(2)
        if failing["writes"] and "/cam1/" in self.relpath:
            raise OSError(errno.EIO, "Input/output error")
        return original_write_chunk(self, view)

    real_fsync = os_module.fsync

    def fsync(fd: int) -> None:
        if failing["fsync"]:
            target = os_module.readlink(f"/proc/self/fd/{fd}")
            if "/cam1/" in target and target.endswith(".partial"):
                failing["fsync"] = False
                failing["fsync_failed"] += 1
                raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(writer_module.SegmentWriter, "_write_chunk", write_chunk)
    monkeypatch.setattr(writer_module.os, "fsync", fsync)
    async with rig(tmp_path) as r:
        failing["writes"] = True
        await asyncio.sleep(3.0)
        failing["writes"] = False
        errors_first = r.faulty.stats.storage_errors
        failing["fsync"] = True
        await wait_for(lambda: failing["fsync_failed"] == 1, 8, "a segment close to fail its fsync")
        since = time.time_ns()
        await recovered(r, since)
        await asyncio.sleep(1.5)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    cam1 = [e["event"] for e in events if e.get("camera") == "cam1" and e["event"].startswith("storage_")]
    assert errors_first >= 2, "the first episode should see several errors"
    assert cam1 == ["storage_error", "storage_recovered", "storage_error", "storage_recovered"], cam1
    assert r.faulty.stats.storage_errors == errors_first + 1
    assert r.faulty.stats.dropped_frames.get("storage_error", 0) > 0
    rows = r.rows("cam1")
    assert any(row.start_ns >= since for row in rows), "recording resumed after the fsync error"
    for row in rows:  # every salvaged segment is whole
        with av.open(str(r.root / row.path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == row.frames
    assert not list(r.root.rglob("*.partial"))
    assert_healthy_lost_nothing(r)
