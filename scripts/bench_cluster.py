#!/usr/bin/env python3
"""Cluster failover benchmark: time to take over each camera of a node that dies, frames lost.

What one run does (every process on 127.0.0.1, every process stopped in a ``finally``):

1. A 3-member etcd (tests/cluster/etcd_local.py), ``csud simulate --cameras N`` (320x240,
   ``--fps``, GOP 1 s) and three ``csud run`` nodes (rec-1..3, ``--lease`` seconds).
2. Once every camera is owned by the node rendezvous placement gives it and recorded by exactly
   one node, ``--warmup`` seconds, then SIGKILL of the node owning the most cameras.
3. Wait until each of its cameras is recorded again elsewhere, then ``--settle`` seconds so
   their first segments close; SIGTERM the survivors. The dead node's store is recovered as its
   restart would (``recover_at_startup``: its open segment salvaged up to the last whole GOP).
4. Per camera of the dead node, from the segment rows of all three stores:
   takeover = first frame recorded by the new owner - the kill (wall clock);
   frames lost = (first frame on the new owner - end of the dead node's last segment) x fps.
   The dead node loses the GOP it was writing (salvage keeps whole fragments only).

    .venv/bin/python scripts/bench_cluster.py --cameras 100 --lease 4

Prints a summary and, with ``--json FILE``, writes the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csud.cluster.placement import place
from csud.store.startup import recover_at_startup
from tests.cluster.etcd_local import EtcdCluster, free_port
from tests.cluster.harness import CSUD, cluster_status, make_nodes, node_segments, recorders, wait_for
from tests.integration.helpers import wait_port

NS = 1_000_000_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=100)
    parser.add_argument("--lease", type=int, default=4, help="[cluster] lease_seconds")
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--segment-seconds", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--settle", type=float, default=8.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="csud-bench-cluster-"))
    etcd = EtcdCluster(tmp / "etcd")
    sim_port = free_port()
    sim: subprocess.Popen[bytes] | None = None
    nodes = []
    cams = {f"cam{i}" for i in range(1, args.cameras + 1)}
    try:
        etcd.start()
        sim_args = [CSUD, "simulate", "--cameras", str(args.cameras), "--port", str(sim_port)]
        sim_args += ["--width", "320", "--height", "240", "--bitrate", "200000", "--fps", str(args.fps)]
        sim_args += ["--gop-seconds", "1"]
        sim = subprocess.Popen(sim_args, stdout=(tmp / "sim.log").open("wb"), stderr=subprocess.STDOUT)
        wait_port(sim_port)
        nodes = make_nodes(
            tmp, etcd.endpoints, sim_port, args.cameras, ["rec-1", "rec-2", "rec-3"],
            lease_seconds=args.lease, segment_seconds=args.segment_seconds, capacity=args.cameras,
        )  # fmt: skip
        for node in nodes:
            node.start()
        placed = place(cams, {n.name: args.cameras for n in nodes})
        wait_for("owners as placed", lambda: cluster_status(nodes[0].config)["cameras"] == placed, 180, 1.0)
        wait_for(
            "each camera recorded once",
            lambda: (r := recorders(nodes)).keys() == cams and all(len(v) == 1 for v in r.values()),
            120,
            1.0,
        )
        time.sleep(args.warmup)
        victim = max(nodes, key=lambda n: sum(1 for o in placed.values() if o == n.name))
        lost = {c for c, o in placed.items() if o == victim.name}
        survivors = [n for n in nodes if n is not victim]
        kill_ns = time.time_ns()
        victim.kill()
        took = wait_for("taken over", lambda: lost <= set(recorders(survivors)), args.lease + 60, 0.5)
        time.sleep(args.settle)
        for node in survivors:
            node.stop()
        store = tmp / victim.name / "store"
        asyncio.run(recover_at_startup(store / "index.sqlite3", store))

        takeover, frames_lost = [], []
        for camera in sorted(lost):
            old = [r for r in node_segments(victim, camera)]
            new = [r for n in survivors for r in node_segments(n, camera) if r["start_ns"] > kill_ns - NS]
            if not new:
                print(f"{camera}: no segment on the new owner", file=sys.stderr)
                continue
            first_new = min(r["start_ns"] for r in new)
            last_old = max((r["end_ns"] for r in old), default=kill_ns)
            takeover.append((first_new - kill_ns) / NS)
            frames_lost.append(max(0, round((first_new - last_old) / NS * args.fps)))
        result = {
            "cameras": args.cameras,
            "lease_seconds": args.lease,
            "fps": args.fps,
            "victim": victim.name,
            "cameras_moved": len(lost),
            "cameras_measured": len(takeover),
            "all_recorded_elsewhere_after_s": round(took, 2),
            "takeover_s_median": round(statistics.median(takeover), 2) if takeover else None,
            "takeover_s_max": round(max(takeover), 2) if takeover else None,
            "frames_lost_median": statistics.median(frames_lost) if frames_lost else None,
            "frames_lost_max": max(frames_lost) if frames_lost else None,
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        for node in nodes:
            node.stop()
        if sim is not None:
            sim.terminate()
            sim.wait(30)
        etcd.cleanup()


if __name__ == "__main__":
    sys.exit(main())
