"""Service plumbing without a daemon: sd_notify, the HTTP request line, rates, reload planning, status."""

from __future__ import annotations

import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from csud.cli.service import format_table, status_url
from csud.config import LoadedConfig, parse_settings
from csud.errors import ConfigError
from csud.service.daemon import Daemon, RateMeter
from csud.service.http import Response, parse_request_line, render
from csud.service.systemd import Notifier, notify_address, watchdog_seconds


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@csud/notify", b"\0csud/notify"),
        ("relative/path", None),
        ("", None),
        (None, None),
    ],
)
def test_notify_address(value: str | None, address: str | bytes | None) -> None:
    assert notify_address(value) == address


@pytest.mark.parametrize(
    ("env", "seconds"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1234"}, 0.4),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "99"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_seconds(env: dict[str, str], seconds: float | None) -> None:
    assert watchdog_seconds(env, pid=1234) == seconds


def test_notifier_without_systemd_is_a_no_op() -> None:
    notifier = Notifier(environ={})
    assert not notifier.enabled and notifier.watchdog_seconds is None
    assert notifier.send(ready=1) is False
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping()
    notifier.close()


def test_notifier_on_a_path_socket_and_an_abstract_one() -> None:
    with (
        tempfile.TemporaryDirectory(dir="/tmp") as tmp,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock,
    ):
        path = str(Path(tmp) / "notify")
        sock.bind(path)
        sock.settimeout(2)
        notifier = Notifier(environ={"NOTIFY_SOCKET": path})
        notifier.ready("recording: 0/0 cameras up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=recording: 0/0 cameras up"
        notifier.status("recording: 0/0 cameras up")  # unchanged: not sent again
        notifier.status("recording: 1/1 cameras up")
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping()
        got = [sock.recv(4096).decode() for _ in range(4)]
        assert got[:2] == ["STATUS=recording: 1/1 cameras up", "WATCHDOG=1"]
        assert got[2].startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert got[3] == "STOPPING=1"
        notifier.close()
    name = f"csud-unit-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        notifier = Notifier(environ={"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.send(watchdog=1)
        assert sock.recv(4096) == b"WATCHDOG=1"
        notifier.close()


def test_notifier_survives_a_vanished_socket() -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": f"/tmp/csud-absent-{uuid.uuid4().hex}"})
    assert notifier.send(ready=1) is False
    assert notifier.send(watchdog=1) is False  # logged once, never raised
    notifier.close()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", ("GET", "/metrics")),
        (b"HEAD /healthz?verbose=1 HTTP/1.0\r\n\r\n", ("HEAD", "/healthz")),
    ],
)
def test_request_line(head: bytes, expected: tuple[str, str]) -> None:
    assert parse_request_line(head) == expected


@pytest.mark.parametrize(
    "head", [b"GET /metrics\r\n\r\n", b"GET metrics HTTP/1.1\r\n\r\n", b"\r\n\r\n", b"SSH-2.0\r\n"]
)
def test_bad_request_line(head: bytes) -> None:
    with pytest.raises(ValueError, match="malformed request line"):
        parse_request_line(head)


def test_render() -> None:
    out = render(Response(503, b"lag\n"))
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Content-Length: 4\r\n" in out and out.endswith(b"\r\n\r\nlag\n")
    assert render(Response(200, b"abc"), head_only=True).endswith(b"\r\n\r\n")


def test_rate_meter_over_its_window() -> None:
    meter = RateMeter(window_seconds=10)
    meter.sample(0.0, 0, 0)
    assert (meter.bitrate_bps, meter.fps) == (0.0, 0.0)
    for t in range(2, 21, 2):  # 1 Mbit/s, 25 fps
        meter.sample(float(t), t * 125_000, t * 25)
    assert meter.bitrate_bps == pytest.approx(1_000_000)
    assert meter.fps == pytest.approx(25)
    for t in range(22, 35, 2):  # the camera stops: rates fall to 0 within the window
        meter.sample(float(t), 20 * 125_000, 20 * 25)
    assert (meter.bitrate_bps, meter.fps) == (0.0, 0.0)


def _loaded(tmp: Path, root: str = "store", listen: str = "127.0.0.1:9108") -> LoadedConfig:
    settings = parse_settings(
        {
            "storage": {"root": str(tmp / root)},
            "metrics": {"listen": listen},
            "communes": [{"id": "metz", "name": "Metz", "service": "live", "retention_days": 15}],
        }
    )
    return LoadedConfig(settings, tmp / "csud.toml", "0" * 64)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"root": "elsewhere"}, "storage.root changed"),
        ({"listen": "127.0.0.1:9200"}, "metrics.listen changed"),
    ],
)
def test_reload_refuses_process_wide_changes(tmp_path: Path, change: dict[str, str], message: str) -> None:
    daemon = Daemon(_loaded(tmp_path))
    with pytest.raises(ConfigError, match=message):
        daemon._plan_reload(_loaded(tmp_path, **change))


def test_status_url_and_table() -> None:
    assert status_url("127.0.0.1:9108") == "http://127.0.0.1:9108/status"
    assert status_url("0.0.0.0:9108") == "http://127.0.0.1:9108/status"
    assert status_url("[::]:9108") == "http://[::1]:9108/status"
    table = format_table(
        {
            "version": "0.1.0",
            "pid": 42,
            "event_loop_lag_seconds": 0.001,
            "cameras": [
                {
                    "camera": "metz-gare-01",
                    "commune": "metz",
                    "up": True,
                    "last_frame_age_seconds": 0.04,
                    "bitrate_bps": 4_200_000,
                    "fps": 25.0,
                    "last_segment": "metz/metz-gare-01/2026/11/26/20261126T130000.000Z.mp4",
                    "last_segment_age_seconds": 12.5,
                    "reconnects": 2,
                    "clock_offset_seconds": -0.25,
                },
                {"camera": "metz-port-02", "commune": "metz", "up": False, "last_frame_age_seconds": None},
            ],
        }
    )
    lines = table.splitlines()
    assert lines[1].split() == [
        "metz-gare-01",
        "metz",
        "up",
        "0.0s",
        "4.20",
        "Mb/s",
        "25.0",
        "metz/metz-gare-01/2026/11/26/20261126T130000.000Z.mp4",
        "(12.5s",
        "ago)",
        "2",
        "-0.250s",
        "-",
    ]
    assert lines[2].split()[:4] == ["metz-port-02", "metz", "DOWN", "-"]
    assert lines[2].split()[-1] == "connecting"  # the reason for DOWN (issue 12, point 13)
    assert lines[-2].startswith("1/2 cameras up; csud 0.1.0 pid 42")
    assert lines[-1] == "config reloads: 0 applied, 0 refused"
