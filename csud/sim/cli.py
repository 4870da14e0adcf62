"""``csud simulate`` (and ``python -m csud.sim``): options from the command line, then serve.

Exit 0 on SIGTERM/SIGINT or after ``--duration``, 2 on bad usage with a one-line reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from csud.sim.faults import FaultInjector
from csud.sim.options import SimOptions
from csud.sim.server import serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csud simulate",
        description="Serve simulated RTSP/H.264 cameras rtsp://127.0.0.1:PORT/cam1..camN.",
    )
    parser.add_argument("--cameras", type=int, default=1, help="number of cameras (default 1)")
    parser.add_argument("--port", type=int, default=8554, help="TCP port on 127.0.0.1 (default 8554; 0: any)")
    parser.add_argument("--fps", type=int, default=25, help="frames per second (default 25)")
    parser.add_argument("--bitrate", type=int, default=4_000_000, help="bit/s (default 4000000)")
    parser.add_argument("--gop-seconds", type=float, default=1.0, help="keyframe interval (default 1.0)")
    parser.add_argument("--width", type=int, default=1280, help="picture width (default 1280)")
    parser.add_argument("--height", type=int, default=720, help="picture height (default 720)")
    parser.add_argument("--username", help="require RTSP auth with this user (and a password)")
    parser.add_argument(
        "--password", help="prefer --password-file or $CSUD_SIM_PASSWORD: argv is visible to every user"
    )
    parser.add_argument("--password-file", type=Path, help="file whose first line is the password")
    parser.add_argument(
        "--auth", choices=("digest", "basic"), default="digest", help="scheme (default digest)"
    )
    parser.add_argument("--no-inband-parameter-sets", action="store_true", help="SPS/PPS only in the SDP")
    parser.add_argument(
        "--session-timeout", type=float, default=60.0, help="seconds without a request before TEARDOWN (60)"
    )
    parser.add_argument(
        "--stats-file", type=Path, help="JSON stats (frames sent per camera), rewritten every second"
    )
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="[CAMERAS=]KIND[:ARG][@START[+DURATION]]",
        help="inject a fault (repeatable), e.g. cam2=loss:5, 3=stall:20@10, reboot@12; see csud.sim.faults",
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the faults' randomness")
    return parser


def options_from_args(args: argparse.Namespace) -> SimOptions:
    password = args.password or os.environ.get("CSUD_SIM_PASSWORD")
    if args.password_file is not None:
        password = args.password_file.read_text().rstrip("\r\n")
    return SimOptions(
        cameras=args.cameras,
        port=args.port,
        fps=args.fps,
        bitrate=args.bitrate,
        gop_seconds=args.gop_seconds,
        width=args.width,
        height=args.height,
        username=args.username,
        password=password,
        auth=args.auth,
        inband_parameter_sets=not args.no_inband_parameter_sets,
        session_timeout=args.session_timeout,
        stats_file=args.stats_file,
        faults=FaultInjector.from_text(args.fault, args.fault_seed) if args.fault else None,
    )


async def _run(options: SimOptions, duration: float | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await serve(options)
    try:
        for url in server.urls():
            print(url, flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        await server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``csud simulate ...``: exit 0 on SIGTERM/SIGINT or after ``--duration``, 2 on bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
        options.clip_params()  # validates sizes and rates
        if options.cameras < 1 or not 0 <= options.port <= 65535:
            raise ValueError("--cameras must be >= 1 and --port within 0..65535")
        if (options.username is None) != (options.password is None):
            raise ValueError("--username and a password go together")
    except (ValueError, OSError) as exc:
        print(f"csud simulate: {exc}", file=sys.stderr)
        return 2
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_run(options, args.duration))
