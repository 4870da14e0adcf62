"""Processes for integration tests: the simulator and the daemon, each started and always stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import free_port as free_port  # one definition each; re-exported for the integration tests
from tests.helpers import wait_port as wait_port

CSUD = str(Path(sys.executable).parent / "csud")
FPS = 25
SMALL = ["--width", "320", "--height", "240", "--bitrate", "500000", "--fps", str(FPS), "--gop-seconds", "1"]


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
