#!/usr/bin/env python3
"""Live-viewing benchmark: CPU added per viewer, server latency, frames skipped, frames lost.

One run (every process on 127.0.0.1, every process stopped in a ``finally``):

1. ``csud simulate --cameras N`` (``--bitrate``, 1280x720 by default), an operator made with
   ``csud operator add``, then ``csud run`` with ``[web]`` and ``[metrics]`` on free ports,
   pinned to ``--core`` when ``taskset`` exists (the simulator and the viewers to the other one).
2. ``--warmup`` seconds, then ``--seconds`` with no viewer: the recorder's CPU (utime + stime
   from ``/proc/<pid>/stat``) over wall time.
3. V WebSocket viewers (Python, aiohttp; one login, viewers spread over the cameras), a
   ``--warmup`` pause, then ``--seconds`` measured again. CPU added per viewer = the
   difference / V. The first viewer's stream is decoded with PyAV at the end (frames counted).
4. From ``/metrics``: ``csud_live_send_latency_seconds`` (a frame's last packet received -> its
   fragment handed to the viewer's socket; p50/p99 interpolated within histogram buckets) over
   phase 3, ``csud_live_frames_skipped_total``, ``csud_camera_dropped_frames_total`` and
   ``csud_camera_rtp_packets_lost_total`` (recorded frames lost).

    .venv/bin/python scripts/bench_live.py --cameras 4 --viewers 20 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from csud.store.identity import create_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import free_port, wait_port

MAX_VIEWS_PER_OPERATOR = 64  # csud.live.web's (not imported: the "before" tree has none)

BIN = Path(sys.executable).parent
CSUD = str(BIN / "csud")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "benchmark password 1"
DROPPED = r'^csud_camera_dropped_frames_total{.*reason="([^"]+)"} (\S+)$'


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def metric_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def buckets(text: str) -> list[tuple[float, float]]:
    pattern = r'^csud_live_send_latency_seconds_bucket{le="([^"]+)"} (\S+)$'
    return [(float(le), float(n)) for le, n in re.findall(pattern, text, re.M)]


def quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float:
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1]
    if total <= 0:
        return float("nan")
    target, lower, below = q * total, 0.0, 0.0
    for le, cum in counts:
        if cum >= target:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (target - below) / max(cum - below, 1e-9)
        lower, below = le, cum
    return lower


def pin(core: int | None) -> list[str]:
    return ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []


async def viewers(web: int, cameras: int, count: int, stop: asyncio.Event, first: list[bytes]) -> list[int]:
    import aiohttp

    got = [0] * count
    sessions = [
        aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) for _ in range(operators(count))
    ]
    try:
        for n, s in enumerate(sessions):
            form = {"username": f"bench{n}", "password": PASSWORD}
            async with s.post(f"http://127.0.0.1:{web}/login", data=form, allow_redirects=False) as r:
                assert r.status == 303, r.status

        async def one(i: int) -> None:
            s = sessions[i // MAX_VIEWS_PER_OPERATOR]
            async with s.ws_connect(f"ws://127.0.0.1:{web}/live/cam{i % cameras + 1}", max_msg_size=0) as ws:
                while not stop.is_set():
                    try:
                        msg = await asyncio.wait_for(ws.receive(), 1)
                    except TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        got[i] += 1
                        if i == 0 and sum(map(len, first)) < 8_000_000:
                            first.append(msg.data)
                    elif msg.type != aiohttp.WSMsgType.TEXT:
                        return

        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        for s in sessions:
            await s.close()
    return got


def operators(viewers: int) -> int:
    """Operators needed for ``viewers`` streams (each may open MAX_VIEWS_PER_OPERATOR)."""
    return max(1, -(-viewers // MAX_VIEWS_PER_OPERATOR))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--viewers", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--bitrate", type=int, default=4_000_000)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--core", type=int, default=0, help="core for csud run (-1: no pinning)")
    ap.add_argument(
        "--profile", type=Path, help="py-spy the daemon while viewed: collapsed stacks to this file"
    )
    args = ap.parse_args()
    core = None if args.core < 0 else args.core
    other = None if core is None else (core + 1) % (os.cpu_count() or 1)
    tmp = Path(tempfile.mkdtemp(prefix="csud-bench-live-"))
    rtsp, web, met = free_port(), free_port(), free_port()
    config = tmp / "csud.toml"
    lines = [
        f'[storage]\nroot = "{tmp / "store"}"\nsegment_seconds = 10',
        f'[metrics]\nlisten = "127.0.0.1:{met}"',
        f'[web]\nlisten = "127.0.0.1:{web}"',
        '[[communes]]\nid = "metz"\nname = "Metz"\nservice = "live"\nretention_days = 15',
    ]
    for i in range(1, args.cameras + 1):
        lines.append(f'[[cameras]]\nid = "cam{i}"\ncommune = "metz"\nurl = "rtsp://127.0.0.1:{rtsp}/cam{i}"')
    config.write_text("\n\n".join(lines) + "\n")
    create_store(tmp / "store")
    (tmp / "pw").write_text(PASSWORD + "\n")
    for n in range(operators(args.viewers)):
        subprocess.run(
            [CSUD, "operator", "add", f"bench{n}", "--name", f"Bench {n}", "--communes", "metz",
             "--password-file", str(tmp / "pw"), "--config", str(config)],
            check=True, capture_output=True,
        )  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    log = (tmp / "csud.log").open("wb")
    try:
        sim = [CSUD, "simulate", "--cameras", str(args.cameras), "--port", str(rtsp), "--bitrate",
               str(args.bitrate), "--width", str(args.width), "--height", str(args.height)]  # fmt: skip
        quiet = subprocess.DEVNULL
        procs.append(subprocess.Popen([*pin(other), *sim], stdout=quiet, stderr=quiet))
        wait_port(rtsp)
        daemon = subprocess.Popen([*pin(core), CSUD, "run", "--config", str(config)], stdout=log, stderr=log)
        procs.append(daemon)
        wait_port(web)
        wait_port(met)
        time.sleep(args.warmup)
        s0, t0 = cpu_split(daemon.pid), time.monotonic()
        time.sleep(args.seconds)
        s1, t1 = cpu_split(daemon.pid), time.monotonic()
        idle_split = [(b - a) / (t1 - t0) for a, b in zip(s0, s1, strict=True)]
        idle = sum(idle_split)
        if other is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {other})
        before = scrape(met)
        stop = asyncio.Event()
        first: list[bytes] = []
        measured: dict[str, float] = {}

        async def phase() -> list[int]:
            task = asyncio.create_task(viewers(web, args.cameras, args.viewers, stop, first))
            await asyncio.sleep(args.warmup)
            split0, measured["t"] = cpu_split(daemon.pid), time.monotonic()
            spy = None
            if args.profile is not None:  # sampled from outside, not paused: --nonblocking
                spy = subprocess.Popen(
                    [str(BIN / "py-spy"), "record", "--nonblocking", "--format", "raw", "-r", "200",
                     "-d", str(int(args.seconds)), "-p", str(daemon.pid), "-o", str(args.profile)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            await asyncio.sleep(args.seconds)
            if spy is not None:
                await asyncio.to_thread(spy.wait, 30)
            split1, elapsed = cpu_split(daemon.pid), time.monotonic() - measured["t"]
            measured["busy_user"], measured["busy_system"] = (
                (b - a) / elapsed for a, b in zip(split0, split1, strict=True)
            )
            measured["busy"] = measured["busy_user"] + measured["busy_system"]
            stop.set()
            return await task

        got = asyncio.run(phase())
        after = scrape(met)
        import av

        with av.open(io.BytesIO(b"".join(first)), format="mp4") as c:
            decoded = sum(1 for _ in c.decode(video=0))
        busy = measured["busy"]
        result: dict[str, Any] = {
            "cameras": args.cameras,
            "viewers": args.viewers,
            "bitrate": args.bitrate,
            "seconds": args.seconds,
            "cpu_no_viewer_pct_core": round(100 * idle, 2),
            "cpu_with_viewers_pct_core": round(100 * busy, 2),
            "cpu_added_per_viewer_pct_core": round(100 * (busy - idle) / args.viewers, 3),
            "cpu_added_per_viewer_user_system_pct_core": [
                round(100 * (measured["busy_user"] - idle_split[0]) / args.viewers, 3),
                round(100 * (measured["busy_system"] - idle_split[1]) / args.viewers, 3),
            ],
            "latency_p50_ms": round(1000 * quantile(buckets(before), buckets(after), 0.50), 2),
            "latency_p99_ms": round(1000 * quantile(buckets(before), buckets(after), 0.99), 2),
            "messages_received_min_per_viewer": min(got),
            "first_viewer_frames_decoded_pyav": decoded,
            "frames_skipped": metric_sum(after, "csud_live_frames_skipped_total"),
            "recorded_frames_dropped_by_reason": {
                m.group(1): float(m.group(2)) for m in re.finditer(DROPPED, after, re.M)
            },
            "rtp_packets_lost": metric_sum(after, "csud_camera_rtp_packets_lost_total"),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
