"""Processes for integration tests: the simulator and the daemon, each started and always stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from csud.store.identity import create_store
from tests.helpers import free_port as free_port  # one definition; re-exported for the integration tests

CSUD = str(Path(sys.executable).parent / "csud")
FPS = 25
SMALL = ["--width", "320", "--height", "240", "--bitrate", "500000", "--fps", str(FPS), "--gop-seconds", "1"]


def wait_port(port: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"process {proc.args!r} ignored signal {sig} for {timeout} s") from None
    return int(proc.returncode)


@contextmanager
def simulator(
    tmp: Path, port: int, cameras: int, *extra: str, name: str = "sim"
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    stats = tmp / f"{name}-stats.json"
    log = (tmp / f"{name}.log").open("ab")
    args = [CSUD, "simulate", "--cameras", str(cameras), "--port", str(port), "--stats-file", str(stats)]
    proc = subprocess.Popen([*args, *SMALL, *extra], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        yield proc, stats
    finally:
        stop_process(proc)
        log.close()


def write_config(
    tmp: Path,
    port: int,
    cameras: int,
    segment_seconds: int = 5,
    auth: str = "",
    camera_options: Sequence[Mapping[str, str | float | int]] = (),
    metrics_listen: str = "",
    init: bool = True,
) -> Path:
    """A config for ``cameras`` cameras ``cam1``.. at ``rtsp://127.0.0.1:port/camN``, and
    (``init``) its store ``tmp/store``, made as ``csud init`` makes it.

    ``camera_options[i]`` overrides camera ``i + 1``: ``path`` (URL path, default ``/camN``)
    and any camera key (``username``, ``password``, ``transport``, ``stall_seconds``...).
    ``metrics_listen`` is ``metrics.listen`` (default ``""``: no HTTP endpoint).
    """
    root = tmp / "store"
    lines = [
        "[storage]",
        f'root = "{root}"',
        f"segment_seconds = {segment_seconds}",
        "[network]",
        'udp_bind = "127.0.0.1"',
        "[metrics]",
        f"listen = {json.dumps(metrics_listen)}",
        "[[communes]]",
        'id = "metz"',
        'name = "Metz"',
        'service = "live"',
        "retention_days = 15",
    ]
    for i in range(1, cameras + 1):
        options = dict(camera_options[i - 1]) if i <= len(camera_options) else {}
        url_path = options.pop("path", f"/cam{i}")
        options.setdefault("stall_seconds", 5)
        lines += [
            "[[cameras]]",
            f'id = "cam{i}"',
            'commune = "metz"',
            f'url = "rtsp://{auth}127.0.0.1:{port}{url_path}"',
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]  # JSON is valid TOML here
    path = tmp / "csud.toml"
    path.write_text("\n".join(lines) + "\n")
    if init:
        create_store(root)
    return path


@contextmanager
def daemon(
    config: Path, tmp: Path, extra_env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp / "csud.log").open("ab")
    env = dict(os.environ)
    env.pop("CSUD_CONFIG", None)
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [CSUD, "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            stop_process(proc)
        log.close()


def segments(config: Path, camera: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [CSUD, "segments", "--config", str(config), "--camera", camera, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def log_lines(tmp: Path) -> list[dict[str, Any]]:
    out = []
    for line in (tmp / "csud.log").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            out.append({"event": "non-json", "line": line})
    return out
