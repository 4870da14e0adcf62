#!/usr/bin/env python3
"""Benchmark the camera simulator: CPU of one simulator process feeding N cameras.

Starts ``python -m csud.sim`` as a child process with N cameras, then, in this process, opens N
lean raw TCP clients (SETUP and PLAY by hand, then they only count bytes), lets them settle,
and measures over a window: the simulator's CPU (utime + stime from /proc/<pid>/stat), its
RSS, the bytes received per camera, and the frames the simulator dropped for slow clients
(from its stats file). The target is N=100 at 4 Mbit/s under 50 % of one core.

    .venv/bin/python scripts/bench_sim.py --cameras 100 --bitrate 4000000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import free_port  # noqa: E402  (one definition, shared with the tests)


class CountingClient(asyncio.Protocol):
    """SETUP, PLAY, then count bytes. Responses are recognised only until PLAY's 200."""

    def __init__(self, url: str, playing: asyncio.Future[None]) -> None:
        self.url = url
        self.playing = playing
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.bytes = 0
        self.state = "setup"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(
            f"SETUP {self.url}/trackID=0 RTSP/1.0\r\nCSeq: 1\r\n"
            "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        if self.state == "playing":
            self.bytes += len(data)
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        response, rest = self.head[:end].decode(), self.head[end + 4 :]
        self.head = b""
        if not response.startswith("RTSP/1.0 200"):
            self.playing.set_exception(RuntimeError(f"{self.url}: {response.splitlines()[0]}"))
            return
        if self.state == "setup":
            session = next(
                line.split(":", 1)[1].strip().split(";")[0]
                for line in response.split("\r\n")
                if line.lower().startswith("session:")
            )
            assert self.transport is not None
            self.transport.write(
                f"PLAY {self.url}/ RTSP/1.0\r\nCSeq: 2\r\nSession: {session}\r\n\r\n".encode()
            )
            self.state = "play"
            self.head = rest
        else:
            self.state = "playing"
            self.bytes += len(rest)
            self.playing.set_result(None)


async def run_clients(
    port: int, cameras: int, warmup: float, seconds: float, sim_pid: int
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    clients: list[CountingClient] = []
    for k in range(1, cameras + 1):
        client = CountingClient(f"rtsp://127.0.0.1:{port}/cam{k}", loop.create_future())
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]
        clients.append(client)
    await asyncio.wait_for(asyncio.gather(*(c.playing for c in clients)), 30)
    await asyncio.sleep(warmup)
    bytes0 = sum(c.bytes for c in clients)
    cpu0, own0, t0 = cpu_seconds(sim_pid), time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    bytes1 = sum(c.bytes for c in clients)
    cpu1, own1, t1 = cpu_seconds(sim_pid), time.process_time(), time.monotonic()
    elapsed = t1 - t0
    result = {
        "elapsed_s": elapsed,
        "sim_cpu_percent": 100 * (cpu1 - cpu0) / elapsed,
        "client_cpu_percent": 100 * (own1 - own0) / elapsed,
        "received_mbit_s_per_camera": (bytes1 - bytes0) * 8 / elapsed / 1e6 / cameras,
        "sim_rss_mib": rss_mib(sim_pid),
        "min_camera_bytes": min(c.bytes for c in clients),
    }
    for c in clients:
        assert c.transport is not None
        c.transport.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cameras", type=int, default=100)
    parser.add_argument("--bitrate", type=int, default=4_000_000)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "stats.json"
        cmd = [
            sys.executable,
            "-m",
            "csud.sim",
            "--cameras",
            str(args.cameras),
            "--port",
            str(port),
            "--fps",
            str(args.fps),
            "--bitrate",
            str(args.bitrate),
            "--width",
            str(args.width),
            "--height",
            str(args.height),
            "--stats-file",
            str(stats_file),
        ]
        sim = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert sim.stdout is not None
            deadline = time.monotonic() + 120  # the first run encodes the clip
            while time.monotonic() < deadline:
                line = sim.stdout.readline()
                if not line:
                    raise SystemExit(f"simulator exited with {sim.wait()}")
                if line.strip() == f"rtsp://127.0.0.1:{port}/cam{args.cameras}":
                    break
            try:
                import uvloop

                runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
            except ImportError:
                runner = asyncio.Runner()
            with runner:
                result = runner.run(run_clients(port, args.cameras, args.warmup, args.seconds, sim.pid))
        finally:
            sim.send_signal(signal.SIGTERM)
            try:
                sim.wait(10)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
        stats = json.loads(stats_file.read_text())
    result["frames_dropped"] = stats["totals"]["frames_dropped"]
    result["clock_resets"] = stats["clock_resets"]
    print(f"cameras={args.cameras} bitrate={args.bitrate} {args.width}x{args.height}@{args.fps}")
    for key, value in result.items():
        print(f"  {key:28s} {value:.2f}" if isinstance(value, float) else f"  {key:28s} {value}")
    target = result["sim_cpu_percent"] < 50
    print(f"  simulator CPU {'under' if target else 'OVER'} 50 % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
