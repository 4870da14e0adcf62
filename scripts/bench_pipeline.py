"""In-process cost of the pure pipeline per 720p frame (issue 15): no socket, no event loop.

The simulator's 720p25 4 Mbit/s clip, interleaved exactly as ``csud simulate`` sends it, is cut
into 16 KiB reads and fed through

- ``feed``: :meth:`RecordingPipeline.feed` (the pipeline's own demultiplexer);
- ``real``: the daemon's path, an :class:`InterleavedDemux` handing each frame to a closure
  over :meth:`RecordingPipeline.on_packet` with the clock's ``now_ns``, as the recorder does.

Prints the best of ``--reps`` runs in us per frame and per packet. Run it A/B on two trees:

    PYTHONPATH=/tmp/base .venv/bin/python scripts/bench_pipeline.py
    PYTHONPATH=$PWD .venv/bin/python scripts/bench_pipeline.py
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from csud.recording.pipeline import RecordingPipeline
from csud.rtsp.interleave import InterleavedDemux
from csud.sim.clip import ClipParams, load_clip
from csud.sim.packets import packetize_clip, patch_frame

READ_SIZE = 16384
NS_PER_SECOND = 1_000_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    frames = packetize_clip(load_clip(ClipParams()))
    parts, seq = [], 0
    for i in range(args.frames):
        frame = frames[i % len(frames)]
        parts.append(bytes(patch_frame(frame, seq, i * 3600, 0x1234)))
        seq += frame.packet_count
    stream = b"".join(parts)
    reads = [stream[i : i + READ_SIZE] for i in range(0, len(stream), READ_SIZE)]
    packets = sum(frames[i % len(frames)].packet_count for i in range(args.frames))

    def pipeline() -> RecordingPipeline:
        pipe = RecordingPipeline(60 * NS_PER_SECOND, 0, 10.0, random.Random(1))
        pipe.describe("H264", 96, [])
        pipe.session_started(0.0, 60)
        return pipe

    def run_feed() -> float:
        pipe = pipeline()
        t0 = time.perf_counter()
        for i, data in enumerate(reads):
            pipe.feed(data, NS_PER_SECOND + i)
        elapsed = time.perf_counter() - t0
        assert pipe.stats.frames_received >= args.frames - 1
        return elapsed

    def run_real() -> float:
        pipe = pipeline()
        now_ns = time.time_ns
        out: list[Any] = []
        on_packet = pipe.on_packet

        def on_frame(channel: int, buf: bytes, start: int, end: int) -> None:
            commands = on_packet(channel, buf, start, end, now_ns())
            if commands:
                out.extend(commands)

        demux = InterleavedDemux(on_frame, lambda m: None)
        t0 = time.perf_counter()
        for data in reads:
            demux.feed(data)
        elapsed = time.perf_counter() - t0
        assert pipe.stats.frames_received >= args.frames - 1
        return elapsed

    for name, run in (("feed", run_feed), ("real", run_real)):
        best = min(run() for _ in range(args.reps))
        print(
            f"{name}: {best / args.frames * 1e6:.1f} us/frame, {best / packets * 1e6:.2f} us/packet "
            f"({packets / args.frames:.1f} packets/frame, {len(reads)} reads of {READ_SIZE} bytes)"
        )


if __name__ == "__main__":
    main()
