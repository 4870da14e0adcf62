#!/usr/bin/env python3
"""`make demo`: three simulated cameras recorded into ./demo-store, then a summary.

Starts `csud simulate` (3 cameras, Digest auth) and `csud run --config config/demo.toml`, records
for --seconds, stops both with SIGTERM (the recorder closes and indexes its open segments),
then lists what was recorded and checks that every segment decodes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CSUD = str(BIN / "csud")
PORT = 8554
CAMERAS = ("metz-gare-01", "metz-gare-02", "woippy-mairie-01")


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"demo: the simulator exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"demo: the simulator did not listen on port {port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], name: str, timeout: float = 40) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"demo: {name} did not stop within {timeout:.0f} s; killing it")
        proc.kill()
        return proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to record (default 30)")
    parser.add_argument("--store", type=Path, default=REPO / "demo-store")
    args = parser.parse_args()

    store = args.store.resolve()
    env = dict(os.environ, CSUD_STORAGE__ROOT=str(store), CSUD_CONFIG=str(REPO / "config" / "demo.toml"))
    # The store is made by csud init (once; again it changes nothing): csud run never makes one.
    init = subprocess.run([CSUD, "init"], env=env, capture_output=True, text=True, check=False)
    if init.returncode != 0:
        sys.exit(f"demo: csud init failed: {init.stderr.strip()}")
    print(f"demo: {init.stdout.strip()}")
    print(f"demo: serving 3 simulated cameras on rtsp://127.0.0.1:{PORT}/cam1..cam3 (Digest auth)")
    sim_log = (store / "simulator.log").open("wb")
    sim = subprocess.Popen(
        [
            CSUD,
            "simulate",
            "--cameras",
            "3",
            "--port",
            str(PORT),
            "--bitrate",
            "2000000",
            "--username",
            "demo",
            "--password",
            "demo-password",
            "--auth",
            "digest",
        ],
        stdout=sim_log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    recorder = None
    try:
        wait_port(PORT, 120, sim)  # the first run encodes the test clip (cached afterwards)
        print(f"demo: recording for {args.seconds:.0f} s into {store} (logs: {store / 'csud.log'})")
        log = (store / "csud.log").open("ab")
        recorder = subprocess.Popen([CSUD, "run"], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            if recorder.poll() is not None:
                sys.exit(f"demo: the recorder exited with status {recorder.returncode}; see {store}/csud.log")
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            print(f"demo: {int(args.seconds - max(0.0, deadline - time.monotonic()))} s recorded")
        status = stop(recorder, "recorder")
        print(f"demo: recorder stopped (exit status {status})")
    finally:
        if recorder is not None and recorder.poll() is None:
            stop(recorder, "recorder")
        stop(sim, "simulator")

    import av

    total_segments = 0
    for camera in CAMERAS:
        out = subprocess.run(
            [CSUD, "segments", "--camera", camera, "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        rows = json.loads(out.stdout)
        total_segments += len(rows)
        decoded = 0
        for row in rows:
            with av.open(str(store / row["path"])) as container:
                decoded += sum(1 for _ in container.decode(video=0))
        frames = sum(r["frames"] for r in rows)
        print(f"\n{camera}: {len(rows)} segments, {frames} frames indexed, {decoded} decoded")
        subprocess.run([CSUD, "segments", "--camera", camera], env=env, check=True)
    if total_segments == 0:
        print("demo: nothing was recorded; see the logs above", file=sys.stderr)
        return 1
    print(
        f"\nLook at the footage: ffplay {store}/metz/metz-gare-01/... (or VLC); every file is a "
        f"fragmented MP4.\nList it again: CSUD_CONFIG=config/demo.toml CSUD_STORAGE__ROOT={store} "
        f"{CSUD} segments --camera metz-gare-01"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
