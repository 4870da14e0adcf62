"""The ``csud`` command line.

Exit codes (a contract): 0 success, 1 failure (e.g. a verification mismatch), 2 bad usage or an
invalid configuration, always with a one-line reason on stderr. Times are ISO 8601 with an
offset; naive times are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from csud import __version__
from csud.errors import ConfigError, CsudError, UsageError

# Each of these modules defines ``register(subparsers, with_config)``, which adds its
# subcommands and sets ``handler`` (a function of the parsed arguments returning the exit code).
COMMAND_MODULES: tuple[str, ...] = (
    "csud.cli.check",
    "csud.cli.evidence",
    "csud.cli.init",
    "csud.cli.operator",
    "csud.cli.retention",
    "csud.cli.service",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line on stderr, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def parse_time(text: str) -> int:
    """ISO 8601 with an offset -> UTC nanoseconds. Naive times are refused."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UsageError(f"time {text!r} has no UTC offset (write e.g. 2026-11-26T14:00:00+01:00)")
    seconds = int(moment.timestamp())
    return seconds * 1_000_000_000 + moment.microsecond * 1000


def format_time(ns: int) -> str:
    """UTC nanoseconds -> ISO 8601 UTC with milliseconds."""
    moment = datetime.fromtimestamp(ns // 1_000_000_000, UTC).replace(
        microsecond=(ns % 1_000_000_000) // 1000
    )
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="csud", description="Recording daemon of an Urban Supervision Centre.")
    parser.add_argument("--version", action="version", version=f"csud {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="config file (default: $CSUD_CONFIG, then /etc/csud/csud.toml)")
        return p

    run = with_config(sub.add_parser("run", help="record every configured camera (the daemon)"))
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    with_config(sub.add_parser("check-config", help="validate the configuration and summarise it"))
    sub.add_parser(
        "simulate", help="serve simulated cameras on 127.0.0.1 (see csud simulate --help)", add_help=False
    )
    seg = with_config(sub.add_parser("segments", help="list recorded segments of a camera"))
    seg.add_argument("--camera", required=True)
    seg.add_argument("--from", dest="from_", metavar="T", help="ISO 8601 time with offset")
    seg.add_argument("--to", metavar="T", help="ISO 8601 time with offset")
    seg.add_argument("--json", action="store_true")
    seg.set_defaults(handler=cmd_segments)
    run.set_defaults(handler=cmd_run)
    sub.choices["check-config"].set_defaults(handler=cmd_check_config)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub, with_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "simulate":
        from csud.sim.cli import main as simulate_main

        return simulate_main(args_list[1:])
    args = build_parser().parse_args(args_list)
    try:
        return int(args.handler(args))
    except (ConfigError, UsageError) as exc:
        print(f"csud {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CsudError as exc:
        print(f"csud {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def cmd_run(args: argparse.Namespace) -> int:
    from csud import log
    from csud.config import load_config
    from csud.service.daemon import run_daemon

    loaded = load_config(args.config)
    log.configure(args.log_level)
    try:
        import uvloop

        return uvloop.run(run_daemon(loaded))
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return asyncio.run(run_daemon(loaded))


def cmd_check_config(args: argparse.Namespace) -> int:
    from csud.config import load_config, retention_days

    loaded = load_config(args.config)
    s = loaded.settings
    for camera in s.cameras:  # a password_file that cannot be read is a config error too
        camera.resolve_password()
    print(f"config {loaded.path} OK (sha256 {loaded.sha256})")
    print(f"storage: {s.storage.root}, segments of {s.storage.segment_seconds} s")
    print(
        f"metrics: {s.metrics.listen or 'disabled'}; "
        f"legal maximum retention {s.legal.max_retention_days} days"
    )
    for commune in s.communes:
        cameras = [c for c in s.cameras if c.commune == commune.id]
        print(
            f"commune {commune.id} ({commune.name}): service {commune.service}, "
            f"retention {commune.retention_days} days, {len(cameras)} camera(s)"
        )
        for cam in cameras:
            auth = "no auth"
            if cam.username:
                source = (
                    "password_file" if cam.password_file else ("password" if cam.password else "no password")
                )
                auth = f"user {cam.username!r} ({source})"
            state = "" if cam.enabled else " [disabled]"
            print(
                f"  camera {cam.id}: {cam.display_url} via {cam.transport}, {auth}, "
                f"retention {retention_days(s, cam)} days{state}"
            )
    return EXIT_OK


def cmd_segments(args: argparse.Namespace) -> int:
    from csud.config import load_config
    from csud.store.identity import open_store_index

    loaded = load_config(args.config)
    from_ns = parse_time(args.from_) if args.from_ else None
    to_ns = parse_time(args.to) if args.to else None
    if from_ns is not None and to_ns is not None and to_ns <= from_ns:
        raise UsageError("--to must be after --from")
    index = open_store_index(loaded.settings.storage.root, readonly=True)
    try:
        rows = index.segments(args.camera, from_ns, to_ns)
    finally:
        index.close()
    if args.json:
        out = [
            {
                "camera": r.camera,
                "commune": r.commune,
                "start": format_time(r.start_ns),
                "end": format_time(r.end_ns),
                "start_ns": r.start_ns,
                "end_ns": r.end_ns,
                "path": r.path,
                "bytes": r.bytes,
                "frames": r.frames,
                "sha256": r.sha256,
            }
            for r in rows
        ]
        json.dump(out, sys.stdout, indent=2)
        print()
        return EXIT_OK
    if not rows:
        print(f"no segments for camera {args.camera}")
        return EXIT_OK
    previous_end = None
    for r in rows:
        if previous_end is not None and r.start_ns - previous_end > 0:
            gap = (r.start_ns - previous_end) / 1e9
            if gap >= 0.001:
                print(f"  -- gap of {gap:.3f} s --")
        print(
            f"{format_time(r.start_ns)}  {format_time(r.end_ns)}  "
            f"{r.frames:6d} frames  {r.bytes:>11d} B  {r.path}"
        )
        previous_end = r.end_ns
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
