#!/usr/bin/env python3
"""Soak run: ``csud run`` records N simulated cameras for M minutes while faults rotate over them.

    .venv/bin/python scripts/soak.py --cameras 50 --minutes 10 --faults random

What one run does (every process stopped in a ``finally``):

1. The simulator runs in this process (asyncio, uvloop) with a :class:`csud.sim.faults.FaultInjector`,
   so that faults start and end exactly when this script says; ``csud run`` is a subprocess
   recording every camera into a temporary root, its metrics on a free port.
2. ``--faults random``: the first ``--controls`` cameras are never faulted (the control group);
   after a warm-up, one fault every ``--every`` seconds on the next camera of the others (each
   camera gets at most one fault, so its losses are that fault's), the kind rotating through
   every kind in a seeded random order. Conditions last ``--fault-seconds``; ``stall`` lasts
   that long too (longer than the cameras' ``stall_seconds``, so it is a reconnect).
3. The daemon's ``/metrics`` is scraped every second. A fault's **recovery time** is from its
   end (an event's instant, a condition's end) to the first scrape from which, for 4 scrapes
   (the daemon exports counters every 2 s: that is the resolution), the camera is up, its
   frame counter advances and its dropped-frame counters do not. **Frames lost** per faulted
   camera: the simulator's ``frames_sent_from_first_keyframe`` minus the frames indexed for it
   (frames the camera never sent while refusing or stalling are not "lost": they are the
   downtime that the recovery time and the ``down`` column show).
4. At the end: SIGTERM to the daemon (it must exit 0), then the simulator stops. RSS of the
   daemon (``VmRSS``) after the warm-up and at the end, its CPU over the run, and a per-kind table.

The 2-core development machine cannot carry 50 x 4 Mbit/s plus the simulator in Python plus the
faults: the default is 320x240 at 500 kbit/s (say so when quoting figures).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from csud.sim.faults import KINDS, FaultInjector
from csud.sim.server import SimOptions, serve
from tests.helpers import free_port, sim_site, write_config

CSUD = str(Path(sys.executable).parent / "csud")
CLK_TCK = os.sysconf("SC_CLK_TCK")
INDEX_FILENAME = "index.sqlite3"
HEALTHY_SCRAPES = 4


@dataclass
class Fault:
    kind: str
    camera: int
    arg: float | str | None
    start: float  # monotonic
    end: float  # monotonic: an event's instant, a condition's end
    recovery_seconds: float | None = None
    down_seconds: float = 0.0
    frames_lost: int = 0


@dataclass
class Sample:
    t: float
    up: dict[str, float] = field(default_factory=dict)
    frames: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, float] = field(default_factory=dict)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def scrape(port: int) -> Sample:
    sample = Sample(time.monotonic())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("#") or "camera=" not in line:
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        camera = name.split('camera="', 1)[1].split('"', 1)[0]
        if metric == "csud_camera_up":
            sample.up[camera] = float(value)
        elif metric == "csud_camera_frames_total":
            sample.frames[camera] = float(value)
        elif metric == "csud_camera_dropped_frames_total" and 'reason="wait_keyframe"' not in name:
            sample.dropped[camera] = sample.dropped.get(camera, 0.0) + float(value)
    return sample


def recovery(fault: Fault, samples: list[Sample]) -> tuple[float | None, float]:
    """(seconds from the fault's end to lasting health, seconds the camera was down meanwhile)."""
    cam = f"cam{fault.camera}"
    window = [s for s in samples if s.t >= fault.start]
    down = 0.0
    for a, b in itertools.pairwise(window):
        if a.up.get(cam, 0) < 1:
            down += b.t - a.t
    after = [i for i, s in enumerate(samples) if s.t >= fault.end]
    for i in after:
        run = samples[i : i + HEALTHY_SCRAPES + 1]
        if len(run) < HEALTHY_SCRAPES + 1:
            break
        healthy = all(s.up.get(cam, 0) >= 1 for s in run[:-1]) and all(
            run[j + 1].dropped.get(cam, 0) == run[j].dropped.get(cam, 0) for j in range(HEALTHY_SCRAPES)
        )
        if healthy and run[-1].frames.get(cam, 0) > run[0].frames.get(cam, 0):
            return max(0.0, samples[i].t - fault.end), down
    return None, down


async def soak(args: argparse.Namespace, tmp: Path) -> int:
    rng = random.Random(args.seed)
    injector = FaultInjector(seed=args.seed)
    options = SimOptions(
        cameras=args.cameras,
        port=0,
        width=args.width,
        height=args.height,
        bitrate=args.bitrate,
        fps=args.fps,
        gop_seconds=1.0,
        faults=injector,
        stats_file=tmp / "sim-stats.json",
    )
    server = await serve(options)
    if args.faults == "random":
        await injector.load_alt_clip()
    metrics_port = free_port()
    config = write_config(
        tmp,
        sim_site(server.port, args.cameras),
        segment_seconds=args.segment_seconds,
        metrics_listen=f"127.0.0.1:{metrics_port}",
    )
    log = (tmp / "csud.log").open("ab")
    env = {k: v for k, v in os.environ.items() if k != "CSUD_CONFIG"}
    proc = subprocess.Popen(
        [CSUD, "run", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    samples: list[Sample] = []
    faults: list[Fault] = []
    started = time.monotonic()
    deadline = started + args.minutes * 60
    rss_start = rss_max = 0.0
    cpu_start = 0.0
    try:
        kinds = list(KINDS)
        rng.shuffle(kinds)
        targets = list(range(args.controls + 1, args.cameras + 1))
        next_fault = started + args.warmup
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {proc.returncode}")
            try:
                samples.append(await asyncio.to_thread(scrape, metrics_port))
            except OSError:
                continue  # not listening yet
            rss = rss_mib(proc.pid)
            rss_max = max(rss_max, rss)
            now = time.monotonic()
            if not rss_start and now - started >= args.warmup:
                rss_start, cpu_start = rss, cpu_seconds(proc.pid)
            # Leave the last minute for recoveries to show.
            if args.faults == "random" and targets and now >= next_fault and now < deadline - 60:
                camera = targets.pop(0)
                kind = kinds[len(faults) % len(kinds)]
                arg: float | str | None = {"len65535": rng.choice(["stall", "close"]), "loss": 10.0}.get(kind)
                if kind == "stall":
                    arg = args.fault_seconds
                event = kind in ("fu-close", "reboot", "garbage", "len65535")
                duration = None if event or kind == "stall" else args.fault_seconds
                injector.inject(kind, arg, cameras=[camera], duration=duration)
                end = now + (0 if event else args.fault_seconds)
                faults.append(Fault(kind, camera, arg, now, end))
                next_fault = now + args.every
        rss_end = rss_mib(proc.pid)
        cpu = cpu_seconds(proc.pid) - cpu_start
        cpu_wall = time.monotonic() - started - args.warmup
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        await server.close()
    stats = json.loads((tmp / "sim-stats.json").read_text())
    import sqlite3

    conn = sqlite3.connect(f"file:{tmp / 'store' / INDEX_FILENAME}?mode=ro", uri=True)
    recorded = dict(conn.execute("SELECT camera, SUM(frames) FROM segments GROUP BY camera").fetchall())
    conn.close()

    def lost(camera: int) -> int:
        sent = stats["cameras"][f"cam{camera}"]["frames_sent_from_first_keyframe"]
        return int(sent - recorded.get(f"cam{camera}", 0))

    for fault in faults:
        fault.recovery_seconds, fault.down_seconds = recovery(fault, samples)
        fault.frames_lost = lost(fault.camera)
    controls = [lost(c) for c in range(1, args.controls + 1)]
    unfaulted = [
        lost(c) for c in range(args.controls + 1, args.cameras + 1) if c not in {f.camera for f in faults}
    ]

    print(
        f"soak: {args.cameras} cameras {args.width}x{args.height} {args.bitrate // 1000} kbit/s"
        f" {args.fps} fps, {args.minutes:g} min, {len(faults)} faults (one every {args.every:g} s,"
        f" conditions {args.fault_seconds:g} s), seed {args.seed}; daemon exit {code}"
    )
    print(
        f"{'kind':<12} {'n':>2} {'recovery s (median/max)':>24} {'down s (max)':>12}"
        f" {'frames lost (median/max)':>25}"
    )
    for kind in KINDS:
        of = [f for f in faults if f.kind == kind]
        if not of:
            continue
        rec = [f.recovery_seconds for f in of if f.recovery_seconds is not None]
        never = len(of) - len(rec)
        rec_text = f"{statistics.median(rec):.1f} / {max(rec):.1f}" if rec else "-"
        if never:
            rec_text += f" ({never} never)"
        lost_values = [f.frames_lost for f in of]
        print(
            f"{kind:<12} {len(of):>2} {rec_text:>24} {max(f.down_seconds for f in of):>12.1f} "
            f"{statistics.median(lost_values):>12.0f} / {max(lost_values):<10d}"
        )
    print(f"control cameras ({len(controls)}): frames lost {controls}")
    if unfaulted:
        print(f"cameras never faulted ({len(unfaulted)}): frames lost max {max(unfaulted)}")
    print(
        f"daemon RSS: {rss_start:.1f} MiB after the {args.warmup:g} s warm-up, {rss_end:.1f} MiB at the end "
        f"(max {rss_max:.1f}); CPU {100 * cpu / max(cpu_wall, 1e-9):.1f} % of one core"
    )
    print(
        f"simulator: frames dropped (slow clients, stalls) {stats['totals']['frames_dropped']},"
        f" clock resets {stats['clock_resets']}"
    )
    if args.json:
        out = {
            "faults": [f.__dict__ for f in faults],
            "controls_lost": controls,
            "rss_start_mib": rss_start,
            "rss_end_mib": rss_end,
            "rss_max_mib": rss_max,
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0 if code == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cameras", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--faults", choices=("random", "none"), default="random")
    parser.add_argument("--controls", type=int, default=5, help="cameras never faulted (default 5)")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between faults (default 10)")
    parser.add_argument(
        "--fault-seconds", type=float, default=15.0, help="length of a condition (default 15)"
    )
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--segment-seconds", type=int, default=20)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--bitrate", type=int, default=500_000)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="write the per-fault results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="csud-soak-"))
    try:
        import uvloop

        return uvloop.run(soak(args, tmp))
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
