"""Time and memory under a bad network, a bad clock and a slow disk: the simulator and recorders in
this event loop, over real loopback sockets (docs/time.md, README "Memory").

- A TCP proxy between simulator and recorder holds the camera's bytes 3 s, then releases them in
  one burst, repeatedly: every frame recorded, every frame's time from its RTP timestamp.
- The camera's RTP clock runs 5 % fast (500 ppm for 100 minutes, compressed into 20 s): every
  frame recorded, the clock stepped back only at keyframes, timestamps within the documented bound.
- One memory budget shared by two cameras, one of whose writes are slow: that camera drops whole
  GOPs (counted), the other loses nothing.
- B-frames (libx264, decode order != presentation order) recorded, extracted, ffprobe-clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import pytest

from csud.config import parse_settings
from csud.recording import writer as writer_module
from csud.recording.budget import MemoryBudget
from csud.recording.recorder import SHUTDOWN_DRAIN_SECONDS, CameraRecorder, IndexService
from csud.recording.timeline import DEFAULT_MAX_ERROR_SECONDS
from csud.sim.server import SimOptions, serve
from csud.store.identity import create_store
from csud.store.index import Index
from tests.conftest import skip_or_fail
from tests.integration.inproc import make_recorder, running, simulator, wait_for

pytestmark = pytest.mark.integration

NS_PER_SECOND = 1_000_000_000
FPS = 25
FRAME_NS = NS_PER_SECOND // FPS
GOP = 25
TICK_NS = NS_PER_SECOND / 90000


# -- a TCP proxy that holds the camera's bytes, then bursts them -------------------------------


@dataclass
class BurstProxy:
    """127.0.0.1 proxy: client -> server bytes pass at once; server -> client bytes are held while
    ``holding`` and released in one write when it ends."""

    upstream_port: int
    holding: bool = False
    holds: int = 0
    max_held_bytes: int = 0
    port: int = 0
    _writers: list[tuple[asyncio.StreamWriter, bytearray]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer, _ in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def hold(self) -> None:
        self.holding = True
        self.holds += 1

    def release(self) -> None:
        self.holding = False
        for writer, held in self._writers:
            if held:
                self.max_held_bytes = max(self.max_held_bytes, len(held))
                writer.write(bytes(held))  # the whole hold in one burst
                held.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        held = bytearray()
        self._writers.append((client_w, held))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gated: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if gated and self.holding:
                        held.extend(data)
                    else:
                        dst.write(data)
            dst.close()

        tasks = [
            asyncio.create_task(pump(client_r, up_w, gated=False)),
            asyncio.create_task(pump(up_r, client_w, gated=True)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)


def recorded_pts(root: Path, camera: str) -> list[list[int]]:
    """Per segment (in the order written), the recorded frames' times (UTC ns), decoded from the
    files: the segment's start plus each frame's pts from the file's first."""
    index = Index.open(root / "index.sqlite3", readonly=True)
    try:
        rows = sorted(index.segments(camera), key=lambda r: r.id)
    finally:
        index.close()
    out = []
    for row in rows:
        with av.open(str(root / row.path)) as c:
            stream = c.streams.video[0]
            ticks = [int(f.pts or 0) for f in c.decode(stream)]
        assert len(ticks) == row.frames
        out.append([row.start_ns + round((t - ticks[0]) * TICK_NS) for t in ticks])
    return out


async def test_network_bursts_cost_no_frame_and_never_move_time(tmp_path: Path) -> None:
    """The network holds the camera's bytes 3 s, then delivers them at once, every 6 s (four
    times): no frame lost, no discontinuity, no new segment; every recorded frame is exactly
    one frame interval after the previous one (its RTP time), and the last is within the
    documented bound of the server clock."""
    async with simulator(play_from_keyframe=True) as sim:
        proxy = BurstProxy(sim.port)
        await proxy.start()
        recorder = make_recorder(tmp_path, proxy.port)
        try:
            async with running(recorder):
                await wait_for(lambda: recorder.stats.frames_received >= GOP, 10, "recording")
                for _ in range(4):
                    await asyncio.sleep(3.0)
                    proxy.hold()
                    await asyncio.sleep(3.0)
                    proxy.release()
                await asyncio.sleep(2.0)
                arrival_ns = recorder.stats.last_frame_ns
                sent = sim.stats()["cameras"]["cam1"]["frames_sent_from_first_keyframe"]
                await wait_for(lambda: recorder.stats.frames_received >= sent, 5, "the last frames")
        finally:
            await proxy.close()
    stats = recorder.stats
    assert proxy.holds == 4 and proxy.max_held_bytes > 50_000  # ~3 s of a 300 kbit/s camera
    assert (stats.failures, stats.lost_packets, stats.time_discontinuities) == (0, 0, 0), stats.last_error
    assert set(stats.dropped_frames) <= {"wait_keyframe"}, stats.dropped_frames
    segments = recorded_pts(tmp_path / "store", "cam1")
    frames = [pts for seg in segments for pts in seg]
    assert len(frames) == stats.frames_recorded >= sent - 1  # the last frame may still be in flight
    # One timeline for the whole recording: each interval is the RTP one (40 ms) at a rate within
    # the slew bound (±1000 ppm), so the bursts (3 s each) moved no frame by more than a few ms.
    slew_ns = FRAME_NS * 1000 / 1_000_000 + TICK_NS
    assert all(abs(b - a - FRAME_NS) <= slew_ns for a, b in itertools.pairwise(frames))
    first = frames[0]
    worst = max(abs(pts - (first + k * FRAME_NS)) for k, pts in enumerate(frames))
    assert worst < 20_000_000, worst
    assert abs(arrival_ns - frames[-1]) < DEFAULT_MAX_ERROR_SECONDS * NS_PER_SECOND
    assert stats.arrival_jitter_seconds > 0.001  # the bursts show as jitter, not as time


async def test_fast_camera_clock_records_every_frame_within_the_bound(tmp_path: Path) -> None:
    """RTP timestamps rewritten as a camera clock 5 % fast (50 times 1000 ppm: the drift of a
    500 ppm camera over 100 minutes, in 20 s). The slew (±1000 ppm) cannot absorb it: the error
    grows to the bound, then the time steps back at a keyframe, a new segment starts there; not
    a frame is lost and every frame is within the bound of its true time."""
    ppm = 50_000

    def fast_clock(session: Any, frame: Any, wire: bytes) -> bytes:
        shift = round(session.frame_number * 3600 * ppm / 1_000_000)
        blob, offset = bytearray(wire), 0
        while offset + 4 <= len(blob):  # interleaved: '$', channel, length, RTP packet
            length = blob[offset + 2] << 8 | blob[offset + 3]
            ts = struct.unpack_from("!I", blob, offset + 8)[0]
            struct.pack_into("!I", blob, offset + 8, (ts + shift) % 2**32)
            offset += 4 + length
        return bytes(blob)

    async with simulator(frame_hook=fast_clock, play_from_keyframe=True) as sim:
        recorder = make_recorder(tmp_path, sim.port)
        async with running(recorder):
            await wait_for(lambda: recorder.stats.time_discontinuities >= 2, 30, "two clock steps")
            await asyncio.sleep(1.0)
        sent = sim.stats()["cameras"]["cam1"]["frames_sent_from_first_keyframe"]
    stats = recorder.stats
    assert (stats.failures, stats.lost_packets) == (0, 0), stats.last_error
    assert set(stats.dropped_frames) <= {"wait_keyframe"}, stats.dropped_frames
    assert stats.clock_drift_ppm == pytest.approx(1000, rel=0.05)  # saturated at the slew bound
    segments = recorded_pts(tmp_path / "store", "cam1")
    frames = [pts for seg in segments for pts in seg]
    assert len(frames) == stats.frames_recorded and sent - 1 <= len(frames) <= sent
    assert len(segments) >= 3  # each step started a segment (at a keyframe: every file decodes)
    # The simulator sends frame k at t0 + k * 40 ms on the server clock; the first frame's time is
    # its arrival. Bound: the documented error plus one GOP at the excess drift, plus loop slack.
    bound_ns = DEFAULT_MAX_ERROR_SECONDS * NS_PER_SECOND + 1.0 * (ppm - 1000) * 1000 + 100_000_000
    first = frames[0]
    worst = max(abs(pts - (first + k * FRAME_NS)) for k, pts in enumerate(frames))
    assert worst <= bound_ns, worst / 1e6


# -- one memory budget ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def two_cameras(
    tmp_path: Path, budget: MemoryBudget, timing: dict[str, float]
) -> AsyncIterator[tuple[Any, list[CameraRecorder]]]:
    server = await serve(
        SimOptions(cameras=2, port=0, width=320, height=240, bitrate=300_000, gop_seconds=1.0)
    )
    root = tmp_path / "store"
    create_store(root)  # as csud init does
    settings = parse_settings(
        {
            "storage": {"root": str(root), "segment_seconds": 5},
            "communes": [{"id": "metz", "name": "Metz", "service": "live", "retention_days": 15}],
            "cameras": [
                {"id": f"cam{i}", "commune": "metz", "url": f"rtsp://127.0.0.1:{server.port}/cam{i}"}
                for i in (1, 2)
            ],
        }
    )
    index = IndexService(Index.open(root / "index.sqlite3"))
    recorders = [
        CameraRecorder(cam, settings.communes[0], root, 5, index, None, budget=budget)
        for cam in settings.cameras
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in recorders]
    try:
        await wait_for(lambda: all(r.stats.frames_received > GOP for r in recorders), 15, "both cameras")
        yield server, recorders
    finally:
        stopped_at = time.monotonic()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        timing["stop_seconds"] = time.monotonic() - stopped_at
        index.close()
        await server.close()


async def test_shared_budget_slow_storage_drops_whole_gops_of_that_camera_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cam1's writes are slow (each sleeps 3 s): its queue grows past its fair share and the
    pool; it drops whole GOPs, counted. cam2 shares the same budget and loses nothing. The
    budget's use stays bounded (total plus one GOP estimate per camera)."""
    # GOPs of ~37 kB (300 kbit/s): each camera's fair share (100 kB) holds more than two; the
    # pool (50 kB) lets cam1 queue four at most.
    budget = MemoryBudget(250_000, reserved_fraction=0.8)
    original = writer_module.SegmentWriter.write

    async def slow_write(self: Any, frames: Any) -> None:
        if "/cam1/" in self.relpath:
            await asyncio.sleep(3.0)
        await original(self, frames)

    monkeypatch.setattr(writer_module.SegmentWriter, "write", slow_write)
    peak = 0
    timing: dict[str, float] = {}
    async with two_cameras(tmp_path, budget, timing) as (sim, (slow, healthy)):
        assert budget.cameras == 2
        for _ in range(100):  # 8 s
            peak = max(peak, budget.used_bytes)
            await asyncio.sleep(0.08)
        assert slow.stats.gops_dropped > 0
    sent = sim.stats()["cameras"]["cam2"]["frames_sent_from_first_keyframe"]
    index = Index.open(tmp_path / "store" / "index.sqlite3", readonly=True)
    try:
        rows2 = index.segments("cam2")
        rows1 = index.segments("cam1")
    finally:
        index.close()
    assert slow.stats.dropped_frames.get("overload", 0) >= GOP * slow.stats.gops_dropped // 2
    assert sum(r.frames for r in rows2) == sent == healthy.stats.frames_recorded
    assert healthy.stats.gops_dropped == 0 and set(healthy.stats.dropped_frames) <= {"wait_keyframe"}
    assert peak <= budget.total_bytes + 2 * 60_000, peak  # one GOP per camera
    for row in rows1:  # whole GOPs dropped: every file decodes completely
        with av.open(str(tmp_path / "store" / row.path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == row.frames
    assert budget.cameras == 0 and budget.used_bytes == 0
    # Stopping: cam1's queue (over its share) is dropped after the drain time, counted; the
    # write in progress (3 s here) is the longest wait.
    assert timing["stop_seconds"] < 3.0 + SHUTDOWN_DRAIN_SECONDS + 2.0, timing
    assert slow.stats.dropped_frames.get("shutdown", 0) > 0 and "shutdown" not in healthy.stats.dropped_frames


# -- B-frames: recorded, extracted, ffprobe-clean ------------------------------------------------


def test_b_frames_recorded_and_extracted_frame_exact(tmp_path: Path) -> None:
    """libx264 with 2 B-frames, 6 s in 2-s segments: every frame recorded; an extraction across
    the segment boundaries decodes to exactly the pictures of the raw stream, in order, and
    ffprobe reads it and the segments without a warning."""
    from tests.integration.test_extract import run as csud_run
    from tests.integration.test_extract import t
    from tests.media import encode, record_store, timed_frames

    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        skip_or_fail("ffprobe (Debian package ffmpeg) is not installed")
    assert ffprobe is not None
    root = tmp_path / "store"
    create_store(root)  # as csud init does
    aus = encode(150, bframes=2)
    timed = [(au, pts) for (_, pts), au in zip(timed_frames(aus), aus, strict=True)]
    # Presentation times from the RTP timestamps (frame n at T0 + n * 40 ms), units in decode order.
    from tests.media import T0_NS

    timed = [(au, T0_NS + au.rtp_timestamp * 100_000 // 9) for au, _ in timed]
    index = Index.open(root / "index.sqlite3")
    try:
        recording = asyncio.run(record_store(root, index, timed, camera="cam-1"))
    finally:
        index.close()
    assert sum(s.frames for s in recording.segments) == 150 and len(recording.segments) == 3
    for seg in recording.segments:
        probe = subprocess.run(
            [ffprobe, "-v", "warning", "-show_packets", "-of", "csv", str(root / seg.relpath)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert probe.stderr == "", probe.stderr
    config = tmp_path / "csud.toml"
    config.write_text(
        f'[storage]\nroot = "{root}"\n[metrics]\nlisten = ""\n'
        '[[communes]]\nid = "metz"\nname = "Metz"\nservice = "live"\nretention_days = 15\n'
        '[[cameras]]\nid = "cam-1"\ncommune = "metz"\nurl = "rtsp://127.0.0.1/1"\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    done = csud_run(
        "extract", "--config", config, "--camera", "cam-1", "--from", t(0), "--to", t(6),
        "--requisition", "PV-1", "--officer", "Lt. Dupont", "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (clip,) = out.glob("PV-1/*.mp4")
    probe = subprocess.run(
        [ffprobe, "-v", "warning", "-show_packets", "-of", "csv", str(clip)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert probe.stderr == "", probe.stderr
    with av.open(str(clip)) as c:
        decoded = list(c.decode(video=0))
        extracted = [f.to_ndarray(format="gray").tobytes() for f in decoded]
        times = [int(f.pts or 0) for f in decoded]
    assert [t - times[0] for t in times] == [k * 3600 for k in range(150)]  # the RTP times, kept
    raw = av.CodecContext.create("h264", "r")
    reference = [
        f.to_ndarray(format="gray").tobytes()
        for au in [*aus, None]
        for f in raw.decode(None if au is None else av.Packet(au.annexb()))
    ]
    assert len(extracted) == 150 and extracted == reference
