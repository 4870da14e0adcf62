#!/usr/bin/env python3
"""The fan-out's own Python cost per viewer and frame, without sockets: what is left is the write.

In one process, no event loop I/O: a camera's frames (libx264, tests.media) go through
``CameraFeed.on_frame`` to V viewers whose sink is csud's ``_Socket`` on a transport that accepts
everything and does nothing. (time with V viewers - time with none) / V is the Python work per
viewer and frame (push, offer, the WebSocket header); the system call and the kernel's TCP work
that a real socket adds are measured by scripts/bench_live.py.

    .venv/bin/python scripts/bench_fanout.py --viewers 40 --frames 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from csud.live import web
from csud.live.fanout import CameraFeed, Viewer
from csud.media.h264 import NAL_PPS, NAL_SPS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.media import encode


class NullTransport:
    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def writelines(self, parts: Any) -> None:
        pass


class OpenWebSocket:
    closed = False


def per_frame_seconds(viewers: int, frames: int, aus: list[Any], params: list[bytes]) -> float:
    feed = CameraFeed("cam1", on_sent=lambda received_ns: None)
    for _ in range(viewers):
        view = web.View("op", "cam1", "metz", "127.0.0.1", "token", Viewer(), 0)
        view.viewer.sink = web._Socket(NullTransport(), OpenWebSocket(), view, time.time_ns).offer  # type: ignore[arg-type]
        feed.attach(view.viewer)
    start = time.perf_counter()
    for k in range(frames):
        feed.on_frame(aus[k % len(aus)], "h264", params, 1)
    return (time.perf_counter() - start) / frames


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--viewers", type=int, default=40)
    ap.add_argument("--frames", type=int, default=5000)
    args = ap.parse_args()
    aus = encode(50, gop=25)
    params = [next(n for n in aus[0].nals if n[0] & 0x1F == t) for t in (NAL_SPS, NAL_PPS)]
    alone = min(per_frame_seconds(0, args.frames, aus, params) for _ in range(3))
    watched = min(per_frame_seconds(args.viewers, args.frames, aus, params) for _ in range(3))
    per_viewer = (watched - alone) / args.viewers
    print(
        json.dumps(
            {
                "frame_without_viewers_us": round(alone * 1e6, 2),
                "per_viewer_per_frame_us": round(per_viewer * 1e6, 2),
                "per_viewer_pct_core_at_25fps": round(100 * per_viewer * 25, 4),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())  # Viewer makes an asyncio.Event: inside a loop
