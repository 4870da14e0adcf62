"""The session and the per-camera loop against the simulator, in one event loop.

Authentication, keep-alive within the session timeout, stall detection, TEARDOWN on stop,
backoff after refused credentials, and no credential in any message.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from csud import log
from csud.errors import AuthError, StreamError
from csud.recording.pipeline import Backoff
from csud.rtsp.client import RtspSession
from csud.store.index import Index
from tests.integration.inproc import make_recorder, running, simulator, split_blob, wait_for

pytestmark = pytest.mark.integration
SECRET = "s3cr3t-Pa55"


async def test_digest_auth_accepts_right_and_refuses_wrong_password() -> None:
    async with simulator(username="csud", password=SECRET) as sim:
        url = sim.camera_url(1)
        ok = RtspSession("127.0.0.1", sim.port, url, "csud", SECRET, lambda *a: None)
        try:
            description = await ok.start()
        finally:
            await ok.close()
        assert (description.encoding, description.payload_type, description.clock_rate) == ("H264", 96, 90000)
        assert [nal[0] & 0x1F for nal in description.parameter_sets] == [7, 8]
        bad = RtspSession("127.0.0.1", sim.port, url, "csud", "wrong-" + SECRET, lambda *a: None)
        with pytest.raises(AuthError, match=r"refused the credentials \(401") as info:
            await bad.start()
        await bad.close()
        assert SECRET not in str(info.value)


async def test_unreachable_camera_is_a_stream_error() -> None:
    from tests.integration.helpers import free_port

    session = RtspSession("127.0.0.1", free_port(), "rtsp://127.0.0.1/x", None, None, lambda *a: None)
    with pytest.raises(StreamError, match=r"cannot connect to 127\.0\.0\.1"):
        await session.start()
    await session.close()


async def test_keepalive_holds_a_short_session_timeout_and_teardown_on_stop(tmp_path: Path) -> None:
    async with simulator(session_timeout=2.0) as sim:
        recorder = make_recorder(tmp_path, sim.port)
        async with running(recorder):
            await asyncio.sleep(7)  # 3.5 times the server's session timeout
            stats = sim.stats()
            assert stats["sessions_timed_out"] == 0
            assert stats["cameras"]["cam1"]["sessions_total"] == 1
            assert recorder.stats.up and recorder.stats.reconnects == 0
        await asyncio.sleep(0.2)
        stats = sim.stats()
        assert stats["teardowns"] == 1, "the recorder must send TEARDOWN when it stops"
        assert stats["cameras"]["cam1"]["sessions_active"] == 0
    assert recorder.stats.segments_written >= 1


async def test_stall_is_detected_and_recording_resumes(tmp_path: Path) -> None:
    stalled = {"on": False}

    def hook(session: Any, frame: Any, wire: bytes) -> bytes | None:
        return None if stalled["on"] else wire

    # Sender reports keep flowing during the stall (every 0.3 s): only missing RTP counts.
    async with simulator(frame_hook=hook, sr_interval=0.3) as sim:
        recorder = make_recorder(tmp_path, sim.port, stall_seconds=1.0)
        async with running(recorder):
            await wait_for(lambda: recorder.stats.frames_received > 25, 10, "frames")
            stalled["on"] = True
            await wait_for(lambda: recorder.stats.failures >= 1, 5, "the stall to be detected")
            assert "stall" in recorder.stats.last_error
            stalled["on"] = False
            frames = recorder.stats.frames_received
            await wait_for(lambda: recorder.stats.frames_received > frames + 25, 10, "recording to resume")
            assert recorder.stats.reconnects >= 1
    rows = Index.open(tmp_path / "store" / "index.sqlite3", readonly=True).segments("cam1")
    assert len(rows) >= 2  # one before the stall, one after


async def test_refused_credentials_back_off_and_never_print_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log.configure("info", json=True)
    async with simulator(username="csud", password=SECRET) as sim:
        recorder = make_recorder(tmp_path, sim.port, password="not-" + SECRET)
        async with running(recorder):
            await asyncio.sleep(5)
        failures = recorder.stats.failures
        auth_failures = sim.stats()["auth_failures"]
    # Backoff 1 s -> 2 s -> 4 s with jitter: 2 to 4 attempts in 5 s, never a storm.
    assert 2 <= failures <= 4, failures
    assert auth_failures <= 2 * failures  # aiortsp answers the challenge once per attempt
    assert "refused the credentials" in recorder.stats.last_error
    assert recorder.stats.auth_failures == failures
    out = capsys.readouterr().out
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sum(e["event"] == "auth_failed" for e in events) == failures
    assert all(e.get("camera") == "cam1" for e in events if e["event"] == "auth_failed")
    assert SECRET not in out


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    import random

    backoff = Backoff(random.Random(7), 1.0, 60.0)
    delays = [backoff.next_delay() for _ in range(10)]
    bases = [min(2.0**i, 60.0) for i in range(10)]
    for delay, base in zip(delays, bases, strict=True):
        assert base / 2 <= delay <= base
    assert len(set(delays)) == len(delays)  # jittered
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0


async def test_udp_transport_records_and_sends_receiver_reports(tmp_path: Path) -> None:
    async with simulator(sr_interval=1.0) as sim:
        recorder = make_recorder(tmp_path, sim.port, transport="udp")
        recorder.udp_bind = "127.0.0.1"
        async with running(recorder):
            await asyncio.sleep(6.5)
            stats = sim.stats()
            assert stats["udp_rtcp_received"] >= 1, "no RTCP receiver report reached the camera"
            assert recorder.stats.up and recorder.stats.frames_received > 5 * 25
            assert recorder.stats.lost_packets == 0
            # The simulator's sender reports carry its wall clock: the offset is tiny.
            assert recorder.stats.clock_offset_seconds != 0.0
            assert abs(recorder.stats.clock_offset_seconds) < 0.5
    rows = Index.open(tmp_path / "store" / "index.sqlite3", readonly=True).segments("cam1")
    assert sum(r.frames for r in rows) >= recorder.stats.frames_received - 25


async def test_udp_reordering_within_the_window_loses_nothing(tmp_path: Path) -> None:
    swapped = {"frames": 0}

    def reorder(session: Any, frame: Any, wire: bytes) -> bytes:
        packets = split_blob(wire)
        if len(packets) >= 2:  # deliver the first packet of the frame after the second
            packets[0], packets[1] = packets[1], packets[0]
            swapped["frames"] += 1
        return b"".join(packets)

    async with simulator(frame_hook=reorder, bitrate=1_500_000) as sim:
        recorder = make_recorder(tmp_path, sim.port, transport="udp")
        recorder.udp_bind = "127.0.0.1"
        async with running(recorder):
            await asyncio.sleep(4)
        sent = sim.stats()["cameras"]["cam1"]["frames_sent_from_first_keyframe"]
    assert swapped["frames"] > 25
    assert recorder.stats.lost_packets == 0 and recorder.stats.dropped_frames.get("gap", 0) == 0
    rows = Index.open(tmp_path / "store" / "index.sqlite3", readonly=True).segments("cam1")
    assert sent - 25 <= sum(r.frames for r in rows) <= sent


async def test_lost_packets_are_counted_and_damaged_gops_dropped(tmp_path: Path) -> None:
    def lose(session: Any, frame: Any, wire: bytes) -> bytes:
        packets = split_blob(wire)
        if frame.index % 50 == 0:  # one packet of every other keyframe
            assert len(packets) >= 2
            del packets[1]
        return b"".join(packets)

    async with simulator(frame_hook=lose, bitrate=1_000_000) as sim:
        recorder = make_recorder(tmp_path, sim.port)
        async with running(recorder):
            await asyncio.sleep(6)
        assert sim.stats()["cameras"]["cam1"]["frames_sent"] > 125
    stats = recorder.stats
    assert stats.lost_packets >= 2
    # A damaged keyframe takes its whole GOP with it; the intact GOPs are recorded.
    dropped = stats.dropped_frames.get("gap", 0) + stats.dropped_frames.get("wait_keyframe", 0)
    assert dropped >= 2 * 24
    assert stats.frames_recorded >= 2 * 25
    import av

    for row in Index.open(tmp_path / "store" / "index.sqlite3", readonly=True).segments("cam1"):
        with av.open(str(tmp_path / "store" / row.path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == row.frames


async def test_media_right_after_play_is_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Media may arrive in the same read as PLAY's answer, before the recorder's task resumes
    (under load, 100 sessions starting at once: up to a second later). The pipeline is ready
    before PLAY is sent, so the camera's first keyframe and its GOP are recorded."""
    from csud.rtsp import client as session_module

    original = session_module.RtspSession.start

    async def slow_to_resume(self: Any, *args: Any, **kwargs: Any) -> Any:
        description = await original(self, *args, **kwargs)
        await asyncio.sleep(1.0)  # the loop is busy elsewhere; packets keep arriving meanwhile
        return description

    monkeypatch.setattr(session_module.RtspSession, "start", slow_to_resume)
    async with simulator(play_from_keyframe=True) as sim:
        recorder = make_recorder(tmp_path, sim.port)
        async with running(recorder):
            await wait_for(lambda: recorder.stats.frames_received >= 50, 10, "two GOPs")
    assert recorder.stats.foreign_packets == 0
    assert recorder.stats.dropped_frames.get("wait_keyframe", 0) == 0


async def test_timestamps_in_decode_order_are_recorded(tmp_path: Path) -> None:
    """Timestamps that step back frame after frame (B-frames in decode order) are recorded: no
    failure, no frame dropped, no discontinuity (they used to fail the camera)."""
    import struct

    def b_frame_order(session: Any, frame: Any, wire: bytes) -> bytes:
        if frame.keyframe:
            return wire
        # Decode order I P B P B...: t0 t2 t1 t4 t3, i.e. a step back every other frame.
        shift = 3600 if frame.index % 2 == 1 else -3600
        blob, offset = bytearray(wire), 0
        while offset + 4 <= len(blob):
            length = blob[offset + 2] << 8 | blob[offset + 3]
            ts = struct.unpack_from("!I", blob, offset + 8)[0]
            struct.pack_into("!I", blob, offset + 8, (ts + shift) % 2**32)
            offset += 4 + length
        return bytes(blob)

    async with simulator(frame_hook=b_frame_order) as sim:
        recorder = make_recorder(tmp_path, sim.port)
        async with running(recorder):
            await wait_for(lambda: recorder.stats.segments_written >= 1, 15, "a segment")
    stats = recorder.stats
    assert stats.failures == 0 and stats.time_discontinuities == 0, stats.last_error
    assert set(stats.dropped_frames) <= {"wait_keyframe"}, stats.dropped_frames


async def test_a_busy_index_delays_a_row_but_never_drops_it(tmp_path: Path) -> None:
    from csud.recording.recorder import IndexService

    failures = {"left": 2}
    original = IndexService.add_segment

    async def flaky(
        self: Any, camera: str, commune: str, info: Any, retention_days: int | None = None
    ) -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("database is locked")
        return await original(self, camera, commune, info, retention_days)

    async with simulator() as sim:
        recorder = make_recorder(tmp_path, sim.port)
        recorder.index.add_segment = flaky.__get__(recorder.index)  # type: ignore[method-assign]
        async with running(recorder):
            await wait_for(lambda: recorder.stats.segments_written >= 2, 20, "two segments")
    rows = Index.open(tmp_path / "store" / "index.sqlite3", readonly=True).segments("cam1")
    on_disk = sorted(
        p.relative_to(tmp_path / "store").as_posix() for p in (tmp_path / "store").rglob("*.mp4")
    )
    assert sorted(r.path for r in rows) == on_disk and failures["left"] == 0


async def test_an_unexpected_writer_error_is_a_storage_episode_not_a_dead_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from csud.recording.writer import SegmentWriter

    original = SegmentWriter.write
    calls = {"n": 0}

    async def broken_once(self: Any, frames: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("Invalid data found when processing input")  # e.g. a PyAV error
        await original(self, frames)

    monkeypatch.setattr(SegmentWriter, "write", broken_once)
    async with simulator() as sim:
        recorder = make_recorder(tmp_path, sim.port)
        async with running(recorder):
            await wait_for(lambda: calls["n"] >= 3, 10, "the failing write")
            written = recorder.stats.segments_written
            await wait_for(lambda: recorder.stats.segments_written > written + 1, 20, "recording to go on")
    assert recorder.stats.storage_errors == 1
