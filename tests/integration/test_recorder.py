"""The daemon against the simulator over loopback: what was sent is what was recorded."""

from __future__ import annotations

import hashlib
import itertools
import json
import signal
import subprocess
import time
from pathlib import Path

import av
import pytest

from tests.helpers import sim_site, write_config
from tests.integration.helpers import (
    CSUD,
    FPS,
    daemon,
    free_port,
    log_lines,
    segments,
    simulator,
    stop_process,
)

pytestmark = pytest.mark.integration
FRAME_NS = 1_000_000_000 // FPS
GOP_FRAMES = FPS  # --gop-seconds 1


def decode_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def ffprobe_ok(path: Path) -> None:
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and out.stderr == "", f"ffprobe on {path}: {out.stderr}"
    stream = json.loads(out.stdout)["streams"][0]
    assert (stream["codec_name"], stream["width"], stream["height"]) == ("h264", 320, 240)


def test_three_cameras_recorded_frame_exact(tmp_path: Path) -> None:
    """3 cameras for 22 s, then SIGTERM: every frame sent after the first keyframe is recorded."""
    port = free_port()
    config = write_config(tmp_path, sim_site(port, 3), segment_seconds=5)
    with simulator(tmp_path, port, 3) as (_sim, stats_file), daemon(config, tmp_path) as proc:
        time.sleep(22)
        # SIGTERM while the cameras stream: the recorder tears the sessions down, muxes what
        # it holds, closes, fsyncs and indexes every open segment, and exits 0.
        assert stop_process(proc, signal.SIGTERM) == 0
    final = json.loads(stats_file.read_text())  # written by the simulator as it exits
    assert final["teardowns"] == 3
    sent = final["cameras"]
    root = tmp_path / "store"
    for i in (1, 2, 3):
        cam = f"cam{i}"
        rows = segments(config, cam)
        assert len(rows) >= 4, f"{cam}: only {len(rows)} segments in 22 s of 5 s segments"
        decoded_total = 0
        for row in rows:
            path = root / row["path"]
            data = path.read_bytes()
            assert len(data) == row["bytes"]
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
            decoded = decode_count(path)
            assert decoded == row["frames"], f"{row['path']}: {decoded} decoded, {row['frames']} indexed"
            decoded_total += decoded
        ffprobe_ok(root / rows[0]["path"])
        # Consecutive segments are contiguous within one frame duration.
        for a, b in itertools.pairwise(rows):
            assert abs(b["start_ns"] - a["end_ns"]) <= FRAME_NS, (a, b)
        expected = sent[cam]["frames_sent_from_first_keyframe"]
        assert expected > 20 * FPS
        # Frames still on the wire when TEARDOWN arrived are lost: at most the GOP in flight.
        assert expected - GOP_FRAMES <= decoded_total <= expected, (cam, decoded_total, expected)
    assert not list(root.rglob("*.partial"))
    events = log_lines(tmp_path)
    assert "daemon_stopped" in [e["event"] for e in events]
    assert not [e for e in events if e.get("level") in ("error", "critical")]


def test_recording_resumes_after_the_camera_restarts(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, sim_site(port, 1), segment_seconds=5)
    with daemon(config, tmp_path) as proc:
        with simulator(tmp_path, port, 1, name="sim-a") as (sim, _):
            time.sleep(8)
            sim.kill()  # the camera vanishes without TEARDOWN
            sim.wait()
        time.sleep(3)
        restarted_ns = time.time_ns()
        with simulator(tmp_path, port, 1, name="sim-b"):
            time.sleep(10)
        time.sleep(1)
        assert stop_process(proc) == 0
    rows = segments(config, "cam1")
    gaps = [
        (a["end_ns"], b["start_ns"])
        for a, b in itertools.pairwise(rows)
        if b["start_ns"] - a["end_ns"] > FRAME_NS
    ]
    assert len(gaps) == 1, rows
    gap_end_ns = gaps[0][1]
    assert gap_end_ns - restarted_ns < 5_000_000_000, "recording did not resume within 5 s of the restart"
    listing = subprocess.run(
        [CSUD, "segments", "--config", str(config), "--camera", "cam1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "gap of" in listing
    for row in rows:
        assert decode_count(tmp_path / "store" / row["path"]) == row["frames"]
