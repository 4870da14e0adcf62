"""The daemon (`csud run`) recording GStreamer's RTSP server (x264enc/x265enc, rtph264pay/rtph265pay).

Each case starts its own server (tests/interop/gst_rtsp_server.py, under /usr/bin/python3),
records with the real daemon, then checks the segments: indexed hash and size, PyAV decodes
every frame the index claims, ``ffprobe -v error`` prints nothing, codec and picture size are
the server's. With ``num-buffers`` set the server produces an exact number of frames: the
recording holds all of them minus at most one GOP at each end.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest

from tests.helpers import sim_site, write_config
from tests.integration.helpers import CSUD, daemon, log_lines, segments, stop_process
from tests.interop.conftest import GstServer, describe, inband_h264_nal_types

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

FPS = 25
GOP = 25  # key-int-max: one keyframe a second
FRAMES = 200  # num-buffers: 8 s at 25 fps
SEGMENT_SECONDS = 3
PLAY_TIMEOUT_SECONDS = 15.0
USER = "csud-interop"
PASSWORD = "Pw-4e2f9c1b-interop"  # distinctive: searched for in the daemon's log


StartServer = Callable[[dict[str, Any]], GstServer]


def mount(path: str, **options: Any) -> dict[str, Any]:
    return {"path": path, "fps": FPS, "key_int": GOP, "num_buffers": FRAMES, **options}


def record(
    tmp_path: Path, server: GstServer, path: str, seconds_after_play: float, **camera: Any
) -> list[dict[str, Any]]:
    """Run the daemon on one camera until ``seconds_after_play`` after the server saw PLAY."""
    options = {"path": path, "stall_seconds": 30, **camera}  # no stall reconnect after the EOS
    config = write_config(
        tmp_path, sim_site(server.port, 1, camera_options=[options]), segment_seconds=SEGMENT_SECONDS
    )
    with daemon(config, tmp_path) as proc:
        server.wait_event("REQUEST", PLAY_TIMEOUT_SECONDS, "PLAY")
        time.sleep(seconds_after_play)
        assert proc.poll() is None, "the daemon died"
        assert stop_process(proc) == 0
    return segments(config, "cam1")


FFPROBE = ("ffprobe", "-v", "error", "-show_entries")


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [*FFPROBE, "stream=codec_name,codec_tag_string,width,height", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and out.stderr == "", f"ffprobe on {path}: {out.stderr}"
    stream: dict[str, Any] = json.loads(out.stdout)["streams"][0]
    return stream


def check_segments(tmp_path: Path, rows: list[dict[str, Any]], codec: str, width: int, height: int) -> int:
    """Every segment is intact, decodes and probes cleanly; returns the frames decoded."""
    assert rows, "nothing recorded"
    total = 0
    for row in rows:
        path = tmp_path / "store" / row["path"]
        data = path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (row["bytes"], row["sha256"])
        with av.open(str(path)) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        assert decoded == row["frames"], f"{row['path']}: {decoded} decoded, {row['frames']} indexed"
        stream = ffprobe(path)
        assert (stream["codec_name"], stream["width"], stream["height"]) == (codec, width, height)
        total += decoded
    for a, b in itertools.pairwise(rows):
        assert abs(b["start_ns"] - a["end_ns"]) <= 1_000_000_000 // FPS, (a, b)
    assert not list((tmp_path / "store").rglob("*.partial"))
    return total


def assert_all_frames(decoded: int, produced: int = FRAMES) -> None:
    assert produced - 2 * GOP <= decoded <= produced, f"{decoded} frames recorded of {produced} produced"


def events(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in log_lines(tmp_path) if e.get("event") == name]


# --- H.264 over TCP: resolutions and where the parameter sets are ----------------------------


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (1920, 1080)])
def test_x264_over_tcp(gst_server: StartServer, tmp_path: Path, width: int, height: int) -> None:
    server = gst_server({"mounts": [mount("/cam", width=width, height=height, config_interval=-1)]})
    rows = record(tmp_path, server, "/cam", FRAMES / FPS + 2)
    assert_all_frames(check_segments(tmp_path, rows, "h264", width, height))
    assert len(server.events("CLIENT")) == 1  # one session, no reconnect


def test_parameter_sets_only_in_the_sdp(gst_server: StartServer, tmp_path: Path) -> None:
    """config-interval=0 and x264 repeat-headers=0: SPS/PPS only in sprop-parameter-sets."""
    server = gst_server({"mounts": [mount("/cam", config_interval=0)]})
    status, sdp = describe(server.port, "/cam")
    assert status == 200 and "sprop-parameter-sets=" in sdp, sdp
    types = inband_h264_nal_types(server.port, "/cam")
    assert 5 in types and not types & {7, 8}, types
    server.lines.clear()  # the clients above are not the daemon
    rows = record(tmp_path, server, "/cam", FRAMES / FPS + 2)
    assert_all_frames(check_segments(tmp_path, rows, "h264", 1280, 720))


def test_parameter_sets_only_in_band(gst_server: StartServer, tmp_path: Path) -> None:
    """config-interval=-1 with the sprop removed from the SDP: SPS/PPS arrive with every IDR only."""
    server = gst_server({"mounts": [mount("/cam", config_interval=-1, sdp_sprop=False)]})
    status, sdp = describe(server.port, "/cam")
    assert status == 200 and "a=rtpmap:96 H264/90000" in sdp and "sprop" not in sdp, sdp
    assert {5, 7, 8} <= inband_h264_nal_types(server.port, "/cam")
    server.lines.clear()
    rows = record(tmp_path, server, "/cam", FRAMES / FPS + 2)
    assert_all_frames(check_segments(tmp_path, rows, "h264", 1280, 720))


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["basic", "digest"])
def test_authentication(gst_server: StartServer, tmp_path: Path, method: str) -> None:
    auth = {"method": method, "user": USER, "password": PASSWORD}
    server = gst_server({"auth": auth, "mounts": [mount("/cam", num_buffers=100)]})
    status, _ = describe(server.port, "/cam")
    assert status == 401  # the mount really is protected
    server.lines.clear()
    rows = record(tmp_path, server, "/cam", 100 / FPS + 2, username=USER, password=PASSWORD)
    assert_all_frames(check_segments(tmp_path, rows, "h264", 1280, 720), produced=100)
    assert PASSWORD not in (tmp_path / "csud.log").read_text()


def test_wrong_password_is_reported_counted_and_retried_with_backoff(
    gst_server: StartServer, tmp_path: Path
) -> None:
    auth = {"method": "digest", "user": USER, "password": PASSWORD}
    server = gst_server({"auth": auth, "mounts": [mount("/cam")]})
    wrong = "Wrong-" + PASSWORD[::-1]
    config = write_config(
        tmp_path,
        sim_site(server.port, 1, camera_options=[{"path": "/cam", "username": USER, "password": wrong}]),
        segment_seconds=5,
    )
    with daemon(config, tmp_path) as proc:
        first = server.wait_event("CLIENT", PLAY_TIMEOUT_SECONDS)
        time.sleep(5.0)
        assert stop_process(proc) == 0
    # Server side: each attempt is one connection; in 5 s, at least 2 and not hammered.
    attempts = [t for _, t in server.events("CLIENT") if t <= first + 5.0]
    assert 2 <= len(attempts) < 6, attempts
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(attempts)), attempts
    assert not server.requests("PLAY")
    # Daemon side: a clear error per attempt, each failure counted by a scheduled reconnect.
    failures = events(tmp_path, "auth_failed")
    assert len(failures) >= 2
    assert all(re.search(r"refused the credentials \(401", e["error"]) for e in failures), failures
    delays = [e["delay_seconds"] for e in events(tmp_path, "reconnect_scheduled")]
    assert len(delays) >= 2 and all(d >= 0.5 for d in delays), delays
    log = (tmp_path / "csud.log").read_text()
    assert wrong not in log and PASSWORD not in log
    assert not list((tmp_path / "store").rglob("*.mp4"))


# --- session timeout -------------------------------------------------------------------------

SESSION_TIMEOUT_SECONDS = 4


def _keepalive_case(gst_server: StartServer, tmp_path: Path, transport: str) -> None:
    server = gst_server(
        {
            "session_timeout": SESSION_TIMEOUT_SECONDS,
            "mounts": [mount("/cam", num_buffers=0, config_interval=-1)],  # endless
        }
    )
    duration = 3 * SESSION_TIMEOUT_SECONDS
    config = write_config(
        tmp_path,
        sim_site(server.port, 1, camera_options=[{"path": "/cam", "transport": transport}]),
        segment_seconds=SEGMENT_SECONDS,
    )
    with daemon(config, tmp_path) as proc:
        play = server.wait_event("REQUEST", PLAY_TIMEOUT_SECONDS, "PLAY")
        time.sleep(duration)
        assert not server.events("SESSION_REMOVED"), "the server expired the session"
        assert stop_process(proc) == 0
    assert len(server.events("CLIENT")) == 1 and len(server.requests("PLAY")) == 1
    keepalives = sorted(
        t for t in server.requests("GET_PARAMETER") + server.requests("OPTIONS") if play < t < play + duration
    )
    # Keep-alive at half the timeout: about 6 in 12 s; never a gap near the timeout.
    assert len(keepalives) >= duration / (SESSION_TIMEOUT_SECONDS / 2) - 2, keepalives
    assert all(b - a < SESSION_TIMEOUT_SECONDS * 0.75 for a, b in itertools.pairwise([play, *keepalives]))
    assert not events(tmp_path, "reconnect_scheduled")
    rows = segments(config, "cam1")
    decoded = check_segments(tmp_path, rows, "h264", 1280, 720)
    assert decoded >= (duration - 2) * FPS


def test_session_timeout_survived_with_keepalives_over_tcp(gst_server: StartServer, tmp_path: Path) -> None:
    _keepalive_case(gst_server, tmp_path, "tcp")


def test_session_timeout_survived_with_keepalives_over_udp(gst_server: StartServer, tmp_path: Path) -> None:
    _keepalive_case(gst_server, tmp_path, "udp")


def test_server_expires_a_silent_udp_session(gst_server: StartServer) -> None:
    """Harness check: the configured timeout is enforced (GStreamer adds a few seconds of slack),
    so the keep-alive cases above prove something. Over TCP GStreamer keeps a streaming session
    alive by itself; over UDP only requests (or RTCP) do."""
    server = gst_server({"session_timeout": 2, "mounts": [mount("/cam", num_buffers=0)]})
    status, sdp = describe(server.port, "/cam")
    assert status == 200
    control = re.findall(r"a=control:(\S+)", sdp)[-1]
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        base = server.url("/cam")
        setup_url = control if control.startswith("rtsp://") else f"{base}/{control}"
        sock.sendall(
            f"SETUP {setup_url} RTSP/1.0\r\nCSeq: 1\r\n"
            "Transport: RTP/AVP;unicast;client_port=9-10\r\n\r\n".encode()  # discard port: nobody reads
        )
        reply = sock.recv(4096).decode()
        session = re.search(r"Session: ([^;\r\n]+)", reply)
        assert session, reply
        sock.sendall(f"PLAY {base} RTSP/1.0\r\nCSeq: 2\r\nSession: {session.group(1)}\r\n\r\n".encode())
        play = server.wait_event("REQUEST", 10, "PLAY")
        removed = server.wait_event("SESSION_REMOVED", 15)
    assert 2 <= removed - play <= 12


# --- UDP and H.265 ----------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (1920, 1080)])
def test_x264_over_udp(gst_server: StartServer, tmp_path: Path, width: int, height: int) -> None:
    server = gst_server({"mounts": [mount("/cam", width=width, height=height, config_interval=-1)]})
    rows = record(tmp_path, server, "/cam", FRAMES / FPS + 2, transport="udp")
    assert_all_frames(check_segments(tmp_path, rows, "h264", width, height))
    assert len(server.events("CLIENT")) == 1


def test_x265_over_tcp(gst_server: StartServer, tmp_path: Path) -> None:
    server = gst_server({"mounts": [mount("/cam", codec="h265", config_interval=-1)]})
    status, sdp = describe(server.port, "/cam")
    assert status == 200 and "H265/90000" in sdp and "sprop-vps=" in sdp, sdp
    server.lines.clear()
    rows = record(tmp_path, server, "/cam", FRAMES / FPS + 2)
    assert_all_frames(check_segments(tmp_path, rows, "hevc", 1280, 720))
    tags = {ffprobe(tmp_path / "store" / row["path"])["codec_tag_string"] for row in rows}
    assert tags <= {"hvc1", "hev1"}


# --- B-frames: x264enc without zerolatency, profile main --------------------------------------


def test_x264_with_b_frames_recorded_extracted_frame_exact(gst_server: StartServer, tmp_path: Path) -> None:
    """x264enc bframes=2 (decode order != presentation order): every frame recorded, segments
    carry composition offsets (pts != dts) and ffprobe reads them without a warning (no
    non-monotonic DTS); an extraction of the whole recording decodes to the same pictures."""
    server = gst_server({"mounts": [mount("/cam", width=640, height=360, config_interval=-1, bframes=2)]})
    rows = record(tmp_path, server, "/cam", FRAMES / FPS + 2)
    assert_all_frames(check_segments(tmp_path, rows, "h264", 640, 360))
    recorded = []
    reordered = 0
    for row in rows:
        path = tmp_path / "store" / row["path"]
        probe = subprocess.run(
            ["ffprobe", "-v", "warning", "-show_packets", "-of", "csv", str(path)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert probe.stderr == "", probe.stderr
        with av.open(str(path)) as container:
            reordered += sum(1 for p in container.demux(video=0) if p.size and p.pts != p.dts)
        with av.open(str(path)) as container:
            recorded += [f.to_ndarray(format="gray").tobytes() for f in container.decode(video=0)]
    assert reordered > len(recorded) // 2, "no B-frames recorded"
    config = tmp_path / "csud.toml"
    out = tmp_path / "out"
    start = rows[0]["start_ns"] / 1e9
    end = rows[-1]["end_ns"] / 1e9
    iso = [time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t))) + f".{int(t * 1000) % 1000:03d}+00:00"
           for t in (start, end + 0.001)]  # fmt: skip
    done = subprocess.run(
        [CSUD, "extract", "--config", str(config), "--camera", "cam1", "--from", iso[0], "--to", iso[1],
         "--requisition", "PV-B", "--officer", "Lt. Dupont", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (clip,) = out.glob("PV-B/*.mp4")
    probe = subprocess.run(
        ["ffprobe", "-v", "warning", "-show_packets", "-of", "csv", str(clip)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert probe.stderr == "", probe.stderr
    with av.open(str(clip)) as container:
        extracted = [f.to_ndarray(format="gray").tobytes() for f in container.decode(video=0)]
    assert extracted == recorded
