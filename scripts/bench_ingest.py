#!/usr/bin/env python3
"""Ingest benchmark: CPU, memory and frame loss of ``csud run`` recording N simulated cameras,
and optionally of K ``ffmpeg -c copy`` processes recording K cameras, run one after the other.

What one run does (every process on 127.0.0.1, every process stopped in a ``finally``):

1. Idle baseline: ``csud run`` with one camera that never answers, pinned to ``--core``; its
   RSS after start-up is subtracted for the "RSS per camera" figure (the raw one is shown too).
2. ``csud simulate --cameras N`` (pinned to ``--sim-core``, by default the other core), then
   ``csud run`` (pinned to ``--core`` with ``taskset``) recording ``/cam1``..``/camN`` into a
   temporary storage root. Once every camera is playing and has been sent a keyframe, a
   ``--warmup`` pause, then ``--seconds`` of measurement cut into ``--window`` windows: CPU
   time (utime + stime of all threads, from ``/proc/<pid>/stat``) over wall time, per window.
   The median window is reported, with the whole-interval mean and its split into user time,
   system time and the main thread (the event loop, which no second core can help).
3. The simulator is stopped first (SIGTERM: it writes its final stats), then, ``--settle``
   seconds later, the recorder (SIGTERM; it must exit 0 within 30 s). Frames sent (the
   simulator's ``frames_sent_from_first_keyframe``: a recorder can only start at a keyframe)
   are compared with frames recorded (``frames`` of the index's segment rows). The script exits
   1 if the recorder does not exit 0 within 30 s of SIGTERM; a missed target is only reported.
4. With ``--ffmpeg K``: a fresh simulator with K cameras and K ``ffmpeg -rtsp_transport tcp
   -i rtsp://... -c copy -f segment`` processes, all pinned to ``--core``, measured the same
   way (their CPU summed). Run after csud, never beside it, so the two never compete.

Issue 15 options: ``--sweep 50,100,200,330`` runs step 2 at each count in turn (one simulator
and one recorder each) and ``--ffmpeg K`` once after them: every row gets its csud/ffmpeg ratio
(CPU per camera). ``--ab TREE --rounds N`` alternates A (csud from the source tree TREE, e.g. a
``git archive`` of the baseline, through PYTHONPATH) and B (this environment), ABBA..., and prints
the medians and B/A ratios. While measuring, the recorder's ``/status`` is polled every 0.5 s
for ``event_loop_lag_seconds`` (its loop monitor; ``--no-lag`` to skip): p99 and max are shown.
The load average before and after is printed: on a shared machine, compare A and B of one run.

CPU is process CPU time, not wall-clock load, so other work on the machine disturbs the
figures less than it would a ``top`` reading; it still costs cache and frequency, and a
busy pinned core can make the recorder fall behind (then the simulator drops frames, which
this script reports). Run it on a quiet machine for figures worth publishing.

    .venv/bin/python scripts/bench_ingest.py --cameras 100 --seconds 60 --ffmpeg 20
    .venv/bin/python scripts/bench_ingest.py --sweep 50,100,200,330 --seconds 20 --ffmpeg 30
    .venv/bin/python scripts/bench_ingest.py --cameras 100 --seconds 20 --ab /tmp/base --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
CSUD = str(BIN / "csud")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
INDEX_FILENAME = "index.sqlite3"  # csud.service.daemon.INDEX_FILENAME (not imported: keep this script light)
SIM_START_TIMEOUT_SECONDS = 300.0  # the first run at a new size encodes the clip
READY_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 30.0
IDLE_BASELINE_SECONDS = 4.0
POLL_SECONDS = 0.5
LAG_POLL_SECONDS = 0.5  # /status polled this often while measuring (the loop monitor ticks every 0.5 s)


# --- /proc ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (fields 14 and 15 of /proc/<pid>/stat)."""
    user, system = cpu_user_sys(pid)
    return user + system


def cpu_user_sys(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(utime, stime) in seconds of process ``pid``, or of its thread ``tid`` only."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_split(pids: Sequence[int]) -> tuple[float, float, float]:
    """(user, system, main thread) CPU seconds summed over ``pids``: where the time goes."""
    user = system = main = 0.0
    for pid in pids:
        u, s = cpu_user_sys(pid)
        mu, ms = cpu_user_sys(pid, pid)  # the main thread's tid is the pid
        user, system, main = user + u, system + s, main + mu + ms
    return user, system, main


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def total_cpu(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


# --- processes -----------------------------------------------------------------------------


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import free_port  # noqa: E402  (one definition, shared with the tests)


def pinned(core: int | None, argv: list[str]) -> list[str]:
    # taskset execs the command: the child's pid is the measured process itself.
    return argv if core is None else ["taskset", "-c", str(core), *argv]


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> tuple[int, float]:
    """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns (exit status, seconds to exit)."""
    started = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode), time.monotonic() - started


@contextlib.contextmanager
def running(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process with stdout+stderr to ``log``; killed on the way out if still alive."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                stop_process(proc, timeout=10)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: the simulator exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"bench: nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def read_stats(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return None


def wait_playing(
    stats_file: Path, cameras: int, procs: Sequence[subprocess.Popen[bytes]], timeout: float
) -> None:
    """Until every camera has a playing session that has been sent a keyframe."""
    deadline = time.monotonic() + timeout
    ready = 0
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"bench: {proc.args!r} exited with status {proc.returncode}")
        stats = read_stats(stats_file)
        if stats is not None:
            ready = sum(
                1
                for cam in stats["cameras"].values()
                if any(
                    s["state"] == "playing" and s["frames_before_first_keyframe"] is not None
                    for s in cam["sessions"]
                )
            )
            if ready >= cameras:
                return
        time.sleep(POLL_SECONDS)
    raise SystemExit(f"bench: only {ready} of {cameras} cameras playing after {timeout:.0f} s")


def simulator_argv(args: argparse.Namespace, cameras: int, port: int, stats_file: Path) -> list[str]:
    return pinned(
        args.sim_core,
        [
            CSUD,
            "simulate",
            "--cameras",
            str(cameras),
            "--port",
            str(port),
            "--bitrate",
            str(args.bitrate),
            "--width",
            str(args.width),
            "--height",
            str(args.height),
            "--fps",
            str(args.fps),
            "--stats-file",
            str(stats_file),
        ],
    )


def write_config(
    path: Path, root: Path, port: int, cameras: int, segment_seconds: int, metrics_port: int = 0
) -> Path:
    lines = [
        "[storage]",
        f'root = "{root}"',
        f"segment_seconds = {segment_seconds}",
        "[metrics]",
        f'listen = "127.0.0.1:{metrics_port}"' if metrics_port else 'listen = ""',
        "[[communes]]",
        'id = "bench"',
        'name = "Bench"',
        'service = "storage"',
        "retention_days = 1",
    ]
    for k in range(1, cameras + 1):
        lines += [
            "[[cameras]]",
            f'id = "cam{k}"',
            'commune = "bench"',
            f'url = "rtsp://127.0.0.1:{port}/cam{k}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    from csud.store.identity import create_store

    create_store(root)  # what csud init does: csud run never creates a store
    return path


def recorder_env(extra: Sequence[str] = ()) -> dict[str, str]:
    """The recorder's environment: ours without CSUD_* overrides, plus ``extra`` KEY=VALUE items."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSUD_")}
    env["PYTHONUNBUFFERED"] = "1"
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"bench: --recorder-env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


# --- measurement ---------------------------------------------------------------------------


@dataclass
class Windows:
    """CPU % of one core per window, for the measured processes and the simulator."""

    seconds: float = 0.0
    measured: list[float] = field(default_factory=list)
    simulator: list[float] = field(default_factory=list)
    measured_mean: float = 0.0
    simulator_mean: float = 0.0
    user_mean: float = 0.0  # whole interval: user time, system time, main thread (event loop)
    system_mean: float = 0.0
    main_thread_mean: float = 0.0

    @property
    def measured_median(self) -> float:
        return statistics.median(self.measured) if self.measured else 0.0

    @property
    def simulator_median(self) -> float:
        return statistics.median(self.simulator) if self.simulator else 0.0


def measure(
    pids: Sequence[int],
    sim_pid: int,
    seconds: float,
    window: float,
    poll: Callable[[], None] | None = None,
) -> Windows:
    out = Windows()
    n = max(1, round(seconds / window))
    t_first = t0 = time.monotonic()
    c_first = c0 = total_cpu(pids)
    s_first = s0 = cpu_seconds(sim_pid)
    split0 = cpu_split(pids)
    for i in range(n):
        due = t_first + (i + 1) * seconds / n
        while (left := due - time.monotonic()) > 0:
            time.sleep(min(left, LAG_POLL_SECONDS if poll else left))
            if poll is not None and due - time.monotonic() > 0:
                poll()
        t1, c1, s1 = time.monotonic(), total_cpu(pids), cpu_seconds(sim_pid)
        out.measured.append(100 * (c1 - c0) / (t1 - t0))
        out.simulator.append(100 * (s1 - s0) / (t1 - t0))
        t0, c0, s0 = t1, c1, s1
    out.seconds = t0 - t_first
    out.measured_mean = 100 * (c0 - c_first) / out.seconds
    out.simulator_mean = 100 * (s0 - s_first) / out.seconds
    split1 = cpu_split(pids)
    elapsed = time.monotonic() - t_first
    out.user_mean, out.system_mean, out.main_thread_mean = (
        100 * (b - a) / elapsed for a, b in zip(split0, split1, strict=True)
    )
    return out


@dataclass
class Result:
    name: str
    cameras: int
    cpu: Windows
    rss_mib: float
    rss_max_mib: float
    pss_mib: float
    rss_start_mib: float = 0.0  # at the start of the measurement (after warm-up)
    lag_p99_ms: float = float("nan")  # event-loop lag sampled from /status (csud only)
    lag_max_ms: float = float("nan")
    lag_samples: int = 0
    lag_failures: int = 0  # /status polls that failed or took over 5 s: a lag above 5 s
    frames_sent: int = 0
    frames_recorded: int = 0
    sim_frames_dropped: int = 0
    sim_sessions_total: int = 0
    worst_camera: str = ""
    worst_camera_lost: int = 0
    exit_status: int = 0
    stop_seconds: float = 0.0
    idle_rss_mib: float = 0.0
    idle_cpu_percent: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    log_events: dict[str, int] = field(default_factory=dict)
    after_stop_events: dict[str, int] = field(default_factory=dict)

    @property
    def frames_lost(self) -> int:
        return self.frames_sent - self.frames_recorded

    @property
    def lost_percent(self) -> float:
        return 100 * self.frames_lost / self.frames_sent if self.frames_sent else 0.0

    @property
    def cpu_per_camera(self) -> float:
        return self.cpu.measured_median / self.cameras


def frames_sent(stats: dict[str, Any], cameras: int) -> tuple[dict[str, int], int, int]:
    per_camera = {
        f"cam{k}": int(stats["cameras"][f"cam{k}"]["frames_sent_from_first_keyframe"])
        for k in range(1, cameras + 1)
    }
    return per_camera, int(stats["totals"]["frames_dropped"]), int(stats["totals"]["sessions_total"])


def frames_recorded(root: Path) -> dict[str, int]:
    index = root / INDEX_FILENAME
    if not index.exists():
        return {}
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT camera, SUM(frames) FROM segments GROUP BY camera").fetchall()
    finally:
        conn.close()
    return {str(camera): int(frames) for camera, frames in rows}


def scrape_metrics(port: int, timeout: float = 10) -> dict[str, float]:
    """Counters of the recorder's Prometheus endpoint, summed over cameras (``reason`` kept)."""
    totals: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        text = response.read().decode()
    for line in text.splitlines():
        m = re.match(r"^(csud_camera_\w+_total)(?:\{([^}]*)\})? ([0-9.e+-]+)$", line)
        if not m:
            continue
        reason = re.search(r'reason="([^"]*)"', m.group(2) or "")
        key = m.group(1) + (f"{{{reason.group(1)}}}" if reason else "")
        totals[key] = totals.get(key, 0.0) + float(m.group(3))
    return totals


class LagPoller:
    """Samples ``event_loop_lag_seconds`` of the recorder's ``/status`` (its loop monitor: the
    overshoot of a 0.5-s sleep) while measuring; the request itself is served by that loop."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/status"
        self.samples: list[float] = []
        self.failures = 0

    def __call__(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                self.samples.append(float(json.loads(response.read())["event_loop_lag_seconds"]))
        except (OSError, ValueError, KeyError):
            self.failures += 1

    def percentile_ms(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def log_events(log: Path, start: int = 0, end: int | None = None) -> dict[str, int]:
    """``level:event`` counts of the recorder's warnings and errors in ``log[start:end]``."""
    counts: Counter[str] = Counter()
    with log.open("rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(end - start)
    for line in data.decode(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if line.strip():  # a traceback or a stray print: show the first ones verbatim
                counts["non-json"] += 1
                if counts["non-json"] <= 3:
                    counts[f"non-json: {line.strip()[:160]}"] += 1
            continue
        level = entry.get("level", "")
        if level not in ("debug", "info"):
            counts[f"{level}:{entry.get('event', '?')}"] += 1
    return dict(counts)


def idle_baseline(args: argparse.Namespace, tmp: Path) -> tuple[float, float]:
    """RSS (MiB) and CPU % of a recorder with nothing to record, after start-up.

    Its one camera points at a port nobody listens on, so it only retries with backoff: the
    baseline holds every import, the index, the metrics task and one idle camera task.
    """
    config = write_config(tmp / "idle.toml", tmp / "idle-store", free_port(), 1, args.segment_seconds)
    log = tmp / "idle.log"
    with running(
        pinned(args.core, [CSUD, "run", "--config", str(config)]), log, recorder_env(args.recorder_env)
    ) as proc:
        time.sleep(IDLE_BASELINE_SECONDS / 2)
        if proc.poll() is not None:
            raise SystemExit(f"bench: idle recorder exited with {proc.returncode}; see {log}")
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(IDLE_BASELINE_SECONDS / 2)
        cpu = 100 * (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        rss = status_kib(proc.pid, "VmRSS") / 1024
        status, _ = stop_process(proc)
    if status != 0:
        print(f"bench: the idle recorder exited with status {status}; see {log}", file=sys.stderr)
    return rss, cpu


def run_csud(
    args: argparse.Namespace,
    tmp: Path,
    cameras: int,
    idle: tuple[float, float],
    name: str = "csud",
    pythonpath: str | None = None,
) -> Result:
    """One recorder run of ``cameras`` cameras in ``tmp``; ``pythonpath`` (a source tree) runs
    another revision of csud with the same console script (for --ab)."""
    tmp.mkdir(exist_ok=True)
    idle_rss, idle_cpu = idle
    port = free_port()
    stats_file = tmp / "sim-csud.json"
    root = tmp / "store"
    metrics_port = free_port()  # for /status (loop lag) and, with --scrape-metrics, /metrics
    config = write_config(tmp / "csud.toml", root, port, cameras, args.segment_seconds, metrics_port)
    log = tmp / "csud.log"
    env = recorder_env(args.recorder_env)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
        if not Path(pythonpath, "csud", "store", "identity.py").exists():
            shutil.rmtree(root)  # a revision from before `csud init` makes its own store
    lag = LagPoller(metrics_port)
    with running(simulator_argv(args, cameras, port, stats_file), tmp / "sim-csud.log") as sim:
        wait_port(port, sim, SIM_START_TIMEOUT_SECONDS)
        with running(pinned(args.core, [CSUD, "run", "--config", str(config)]), log, env) as rec:
            wait_playing(stats_file, cameras, (sim, rec), READY_TIMEOUT_SECONDS)
            time.sleep(args.warmup)
            rss_start = status_kib(rec.pid, "VmRSS") / 1024
            cpu = measure([rec.pid], sim.pid, args.seconds, args.window, None if args.no_lag else lag)
            rss = status_kib(rec.pid, "VmRSS") / 1024
            rss_max = status_kib(rec.pid, "VmHWM") / 1024
            pss = pss_kib(rec.pid) / 1024
            if args.stop_under_load:  # SIGTERM while the cameras still send (storage behind)
                metrics_under_load = {}
                if args.scrape_metrics:
                    try:
                        metrics_under_load = scrape_metrics(metrics_port, timeout=30)
                    except OSError as exc:  # a saturated event loop answers late, or not at all
                        print(f"bench: cannot scrape the recorder's metrics: {exc}", file=sys.stderr)
                status, stop_seconds = stop_process(rec)
            sim_status, _ = stop_process(sim)
            log_mark = log.stat().st_size
            time.sleep(args.settle)
            metrics: dict[str, float] = {}
            if args.scrape_metrics and not args.stop_under_load:  # exported every 2 s
                time.sleep(max(0.0, 2.5 - args.settle))
                try:
                    metrics = scrape_metrics(metrics_port)
                except OSError as exc:
                    print(f"bench: cannot scrape the recorder's metrics: {exc}", file=sys.stderr)
            if args.stop_under_load:
                metrics = metrics_under_load
            else:
                status, stop_seconds = stop_process(rec)
    if sim_status != 0:
        print(f"bench: the simulator exited with status {sim_status}", file=sys.stderr)
    stats = read_stats(stats_file)
    if stats is None:
        raise SystemExit(f"bench: no final simulator stats in {stats_file}")
    sent, dropped, sessions = frames_sent(stats, cameras)
    recorded = frames_recorded(root)
    shutil.rmtree(root, ignore_errors=True)  # 330 cameras write 5 GB a run: free it now
    lost = {cam: n - recorded.get(cam, 0) for cam, n in sent.items()}
    worst = max(lost, key=lambda cam: lost[cam])
    return Result(
        name=name,
        cameras=cameras,
        cpu=cpu,
        rss_mib=rss,
        rss_max_mib=rss_max,
        pss_mib=pss,
        rss_start_mib=rss_start,
        lag_p99_ms=lag.percentile_ms(0.99),
        lag_max_ms=lag.percentile_ms(1.0),
        lag_samples=len(lag.samples),
        lag_failures=lag.failures,
        frames_sent=sum(sent.values()),
        frames_recorded=sum(recorded.get(cam, 0) for cam in sent),
        sim_frames_dropped=dropped,
        sim_sessions_total=sessions,
        worst_camera=worst,
        worst_camera_lost=lost[worst],
        exit_status=status,
        stop_seconds=stop_seconds,
        idle_rss_mib=idle_rss,
        idle_cpu_percent=idle_cpu,
        metrics=metrics,
        log_events=log_events(log, 0, log_mark),
        after_stop_events=log_events(log, log_mark),
    )


def ffmpeg_frames(progress: Path) -> int:
    """The last ``frame=`` that ``ffmpeg -progress`` wrote (packets muxed, for stream copy)."""
    frames = 0
    with contextlib.suppress(OSError):
        for line in progress.read_text().splitlines():
            if line.startswith("frame="):
                with contextlib.suppress(ValueError):
                    frames = int(line.split("=", 1)[1])
    return frames


def run_ffmpeg(args: argparse.Namespace, tmp: Path) -> Result:
    tmp.mkdir(exist_ok=True)
    k_cameras = args.ffmpeg
    port = free_port()
    stats_file = tmp / "sim-ffmpeg.json"
    out_dir = tmp / "ffmpeg"
    out_dir.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    statuses: list[int] = []
    with running(simulator_argv(args, k_cameras, port, stats_file), tmp / "sim-ffmpeg.log") as sim:
        wait_port(port, sim, SIM_START_TIMEOUT_SECONDS)
        with contextlib.ExitStack() as stack:
            for k in range(1, k_cameras + 1):
                cam_dir = out_dir / f"cam{k}"
                cam_dir.mkdir()
                argv = [
                    args.ffmpeg_bin,
                    "-nostdin",
                    "-hide_banner",
                    "-loglevel",
                    "warning",
                    "-nostats",
                    "-progress",
                    str(cam_dir / "progress.txt"),
                    "-rtsp_transport",
                    "tcp",
                    "-i",
                    f"rtsp://127.0.0.1:{port}/cam{k}",
                    "-map",
                    "0:v",
                    "-c",
                    "copy",
                    "-f",
                    "segment",
                    "-segment_time",
                    str(args.segment_seconds),
                    "-segment_format",
                    "mp4",
                    "-reset_timestamps",
                    "1",
                    str(cam_dir / "%05d.mp4"),
                ]
                procs.append(stack.enter_context(running(pinned(args.core, argv), cam_dir / "ffmpeg.log")))
            wait_playing(stats_file, k_cameras, [sim, *procs], READY_TIMEOUT_SECONDS)
            time.sleep(args.warmup)
            pids = [p.pid for p in procs]
            rss_start = sum(status_kib(p, "VmRSS") for p in pids) / 1024
            cpu = measure(pids, sim.pid, args.seconds, args.window)
            rss = sum(status_kib(p, "VmRSS") for p in pids) / 1024
            rss_max = sum(status_kib(p, "VmHWM") for p in pids) / 1024
            pss = sum(pss_kib(p) for p in pids) / 1024
            stop_process(sim)
            # ffmpeg ends by itself at the end of the stream; give it --settle seconds.
            deadline = time.monotonic() + args.settle + 5
            while time.monotonic() < deadline and any(p.poll() is None for p in procs):
                time.sleep(0.2)
            statuses = [stop_process(p)[0] for p in procs]
    stats = read_stats(stats_file)
    if stats is None:
        raise SystemExit(f"bench: no final simulator stats in {stats_file}")
    # ffmpeg's segment muxer also starts at the first keyframe (checked with ffprobe).
    sent, _, _ = frames_sent(stats, k_cameras)
    recorded = {
        f"cam{k}": ffmpeg_frames(out_dir / f"cam{k}" / "progress.txt") for k in range(1, k_cameras + 1)
    }
    shutil.rmtree(out_dir, ignore_errors=True)
    lost = {cam: n - recorded[cam] for cam, n in sent.items()}
    worst = max(lost, key=lambda cam: lost[cam])
    return Result(
        name="ffmpeg -c copy",
        cameras=k_cameras,
        cpu=cpu,
        rss_mib=rss,
        rss_max_mib=rss_max,
        pss_mib=pss,
        rss_start_mib=rss_start,
        frames_sent=sum(sent.values()),
        frames_recorded=sum(recorded.values()),
        sim_frames_dropped=int(stats["totals"]["frames_dropped"]),
        sim_sessions_total=int(stats["totals"]["sessions_total"]),
        worst_camera=worst,
        worst_camera_lost=lost[worst],
        exit_status=max(statuses, default=0),
    )


# --- report --------------------------------------------------------------------------------


def source_revision() -> str:
    """The git revision the recorder runs from, ``+`` when the tree has local changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+" if dirty else "")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_report(args: argparse.Namespace, results: list[Result]) -> None:
    print(
        f"\ningest benchmark: {args.width}x{args.height}@{args.fps}, {args.bitrate / 1e6:g} Mbit/s, "
        f"segments of {args.segment_seconds} s, measured {args.seconds:g} s in {args.window:g} s windows "
        f"after {args.warmup:g} s warm-up; measured processes on core {args.core}, "
        f"simulator on {'any core' if args.sim_core is None else f'core {args.sim_core}'}"
    )
    print(
        f"csud {source_revision()}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
        + (f", recorder environment {' '.join(args.recorder_env)}" if args.recorder_env else "")
        + (f", PYTHONPATH={os.environ['PYTHONPATH']}" if os.environ.get("PYTHONPATH") else "")
        + (f", A (baseline) = {args.ab}" if args.ab else "")
    )
    print(f"load average before: {args.load_before}; after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ff_runs = [r for r in results if r.name.startswith("ffmpeg")]
    ff_per_cam = _median([r.cpu_per_camera for r in ff_runs])
    rows: list[tuple[str, ...]] = [
        (
            "recorder",
            "cams",
            "CPU % 1 core (median [min-max], mean)",
            "CPU %/cam",
            "user/sys/main %",
            "RSS MiB start->end (peak)",
            "RSS MiB/cam",
            "sent",
            "lost",
            "sim drops",
            "lag p99/max ms",
            "stop s",
            "/ffmpeg",
        )
    ]
    for r in results:
        w = r.cpu
        per_cam_rss = (
            f"{(r.rss_mib - r.idle_rss_mib) / r.cameras:.2f}"
            if r.idle_rss_mib
            else f"{r.rss_mib / r.cameras:.2f} (PSS {r.pss_mib / r.cameras:.2f})"
        )
        is_ff = r.name.startswith("ffmpeg")
        rows.append(
            (
                r.name,
                str(r.cameras),
                f"{w.measured_median:.1f} [{min(w.measured):.1f}-{max(w.measured):.1f}], "
                f"{w.measured_mean:.1f}",
                f"{r.cpu_per_camera:.3f}",
                f"{w.user_mean:.1f}/{w.system_mean:.1f}/" + ("-" if is_ff else f"{w.main_thread_mean:.1f}"),
                f"{r.rss_start_mib:.0f}->{r.rss_mib:.0f} ({r.rss_max_mib:.0f})",
                per_cam_rss,
                str(r.frames_sent),
                str(r.frames_lost),
                str(r.sim_frames_dropped),
                "-"
                if is_ff
                else f"{r.lag_p99_ms:.0f}/{r.lag_max_ms:.0f} (n={r.lag_samples}"
                + (f", {r.lag_failures} timeouts)" if r.lag_failures else ")"),
                "-" if is_ff else f"{r.stop_seconds:.1f}",
                "-" if is_ff or not ff_runs else f"{r.cpu_per_camera / ff_per_cam:.2f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if args.verbose:
        for r in results:
            print(f"\n{r.name} ({r.cameras} cameras):")
            print(f"  CPU % per window: {' '.join(f'{v:.1f}' for v in r.cpu.measured)}")
            print(f"  simulator CPU % per window: {' '.join(f'{v:.1f}' for v in r.cpu.simulator)}")
            print(
                f"  worst camera {r.worst_camera}: {r.worst_camera_lost} frames lost; "
                f"sessions set up {r.sim_sessions_total}; exit {r.exit_status}"
            )
            if not r.name.startswith("ffmpeg"):
                gops = r.metrics.get("csud_camera_gops_dropped_total")
                if gops is not None:
                    print(f"  GOPs dropped by the memory budget: {gops:.0f}")
                when = "under load" if args.stop_under_load else "after the simulator stopped"
                print(f"  SIGTERM ({when}) -> exit {r.exit_status} in {r.stop_seconds:.1f} s")
                if r.metrics:
                    print(f"  recorder counters at the end: {r.metrics}")
                print(f"  warnings/errors while recording: {r.log_events or 'none'}")
                print(f"  after the simulator stopped (reconnects expected): {r.after_stop_events or 'none'}")
    csud = [r for r in results if not r.name.startswith("ffmpeg")]
    if csud:
        print(
            f"\nidle recorder (one unreachable camera): RSS {csud[0].idle_rss_mib:.0f} MiB, "
            f"CPU {csud[0].idle_cpu_percent:.1f} %"
        )
    if ff_runs:
        print(
            f"ffmpeg -c copy: {ff_per_cam:.3f} % of a core per camera (median of {len(ff_runs)} run(s) of "
            f"{ff_runs[0].cameras} processes), PSS {ff_runs[0].pss_mib / ff_runs[0].cameras:.1f} MiB each"
        )
    if args.ab:
        print("\nA/B, medians over the alternating runs (B/A ratio):")
        a = [r for r in csud if r.name == "A"]
        b = [r for r in csud if r.name == "B"]
        for label, get in (
            ("CPU % (median window)", lambda r: r.cpu.measured_median),
            ("user %", lambda r: r.cpu.user_mean),
            ("system %", lambda r: r.cpu.system_mean),
            ("main thread %", lambda r: r.cpu.main_thread_mean),
            ("RSS end MiB", lambda r: r.rss_mib),
            ("loop lag p99 ms", lambda r: r.lag_p99_ms),
        ):
            ma, mb = _median([get(r) for r in a]), _median([get(r) for r in b])
            print(
                f"  {label:22} A {ma:7.1f}  B {mb:7.1f}  B/A {mb / ma if ma else float('nan'):.3f}   "
                f"(A: {' '.join(f'{get(r):.1f}' for r in a)}; B: {' '.join(f'{get(r):.1f}' for r in b)})"
            )
    for r in csud:
        if r.cameras == max(x.cameras for x in csud):
            ok = (
                r.cpu.measured_median <= 70
                and r.frames_lost == 0
                and r.sim_frames_dropped == 0
                and r.lag_p99_ms < 50
                and not r.lag_failures
                and (not ff_runs or r.cpu_per_camera / ff_per_cam <= 0.5)
            )
            print(
                f"goal of issue 15 (<= 70 % of a core, 0 lost, lag p99 < 50 ms, csud/ffmpeg <= 0.5) "
                f"at {r.cameras} cameras ({r.name}): {'met' if ok else 'NOT met'}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cameras", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement (default 30)")
    parser.add_argument("--bitrate", type=int, default=4_000_000)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--segment-seconds", type=int, default=60)
    parser.add_argument("--ffmpeg", type=int, default=0, metavar="K", help="also run K ffmpeg -c copy")
    parser.add_argument("--ffmpeg-bin", default="/usr/bin/ffmpeg")
    parser.add_argument("--no-csud", action="store_true", help="only the ffmpeg side")
    parser.add_argument("--core", type=int, default=1, help="core the recorder(s) are pinned to")
    parser.add_argument(
        "--sim-core", default="other", help="core for the simulator: a number, 'other' (default), 'none'"
    )
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=5.0, help="CPU measurement window (default 5 s)")
    parser.add_argument("--settle", type=float, default=2.0, help="from simulator stop to recorder stop")
    parser.add_argument(
        "--scrape-metrics",
        action="store_true",
        help="enable the recorder's metrics endpoint and read its counters after the run",
    )
    parser.add_argument(
        "--stop-under-load",
        action="store_true",
        help="SIGTERM the recorder while the cameras still send (then stop the simulator)",
    )
    parser.add_argument(
        "--recorder-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the recorder (and the idle baseline), e.g. MALLOC_TRIM_THRESHOLD_=...",
    )
    parser.add_argument("--tmp-dir", type=Path, help="parent of the temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--keep-on-loss", action="store_true", help="keep it if frames were lost")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--sweep",
        help="camera counts run in turn instead of --cameras, e.g. 50,100,200,330",
    )
    parser.add_argument(
        "--ab",
        metavar="TREE",
        help="A/B: alternate runs of csud from TREE (A, the baseline; PYTHONPATH=TREE) and from this "
        "environment (B), --rounds times each, at --cameras",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repetitions of the sweep, or A/B pairs")
    parser.add_argument("--no-lag", action="store_true", help="do not poll /status for the loop lag")
    parser.add_argument("-v", "--verbose", action="store_true", help="per-run details")
    args = parser.parse_args()
    ncpu = os.cpu_count() or 1
    if args.sim_core == "none":
        args.sim_core = None
    elif args.sim_core == "other":
        args.sim_core = next((c for c in sorted(os.sched_getaffinity(0)) if c != args.core), None)
    else:
        args.sim_core = int(args.sim_core)
    if args.cameras < 1 or args.seconds <= 0 or args.ffmpeg < 0 or not 0 <= args.core < ncpu:
        parser.error("--cameras >= 1, --seconds > 0, --ffmpeg >= 0, --core within the machine's cores")
    try:
        sweep = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.cameras]
    except ValueError:
        parser.error(f"--sweep wants comma-separated camera counts, got {args.sweep!r}")
    if min(sweep) < 1 or args.rounds < 1 or (args.ab and not Path(args.ab, "csud").is_dir()):
        parser.error("--sweep counts >= 1, --rounds >= 1, --ab a source tree holding csud/")
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())

    tmp = Path(tempfile.mkdtemp(prefix="csud-bench-", dir=args.tmp_dir))
    results: list[Result] = []
    try:
        idle = (0.0, 0.0) if args.no_csud else idle_baseline(args, tmp)
        for k in range(args.rounds):
            if args.ab:  # A then B, B then A: neither always runs first
                order = [("A", args.ab), ("B", None)]
                for name, tree in order if k % 2 == 0 else order[::-1]:
                    results.append(run_csud(args, tmp / f"{name}{k}", args.cameras, idle, name, tree))
            elif not args.no_csud:
                for n in sweep:
                    results.append(run_csud(args, tmp / f"csud{n}-{k}", n, idle))
            if args.ffmpeg:
                results.append(run_ffmpeg(args, tmp / f"ffmpeg-{k}"))
    finally:
        lost = any(r.frames_lost or r.sim_frames_dropped for r in results)
        if args.keep or (lost and args.keep_on_loss):
            print(f"bench: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print_report(args, results)
    status = 0
    for r in results:
        if not r.name.startswith("ffmpeg") and r.exit_status != 0:
            print(f"bench: the recorder exited with status {r.exit_status} after SIGTERM", file=sys.stderr)
            status = 1
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "results": [
                        {
                            **asdict(r),
                            "cpu_median": r.cpu.measured_median,
                            "cpu_per_camera": r.cpu_per_camera,
                            "simulator_cpu_median": r.cpu.simulator_median,
                            "frames_lost": r.frames_lost,
                        }
                        for r in results
                    ],
                },
                indent=2,
            )
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
