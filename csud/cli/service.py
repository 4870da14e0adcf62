"""``csud run``, ``csud check-config`` and ``csud status``.

``status`` reads the running daemon's ``/status`` endpoint: the daemon owns the live state
(sessions, rates, last segment); this command only asks it, over HTTP on ``metrics.listen``, so it
works as any user who can reach that address and never opens the index. Its exit code is for
monitoring scripts: 0 every camera up, 1 a camera down (named on stderr) or no daemon answering,
2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from datetime import tzinfo
from typing import Any

from csud.cli.common import EXIT_FAILURE, EXIT_OK, WithConfig, format_time, print_json, site_zone
from csud.errors import CsudError, UsageError

STATUS_TIMEOUT_SECONDS = 5.0
MAX_REASON_CHARS = 60  # in the table; --json has the whole text


def register(subparsers: Any, with_config: WithConfig) -> None:
    run = with_config(subparsers.add_parser("run", help="record every configured camera (the daemon)"))
    run.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default: info"
    )
    run.set_defaults(handler=cmd_run)

    cc = with_config(
        subparsers.add_parser("check-config", help="validate the configuration and summarise it")
    )
    cc.add_argument("--json", action="store_true", help="the summary as JSON (never a secret)")
    cc.set_defaults(handler=cmd_check_config)

    st = with_config(
        subparsers.add_parser(
            "status",
            help="live camera table from the running daemon",
            description="Exit 0 when every camera is up, 1 when one is down (named on stderr) or "
            "no daemon answers, 2 on bad usage or configuration.",
        )
    )
    st.add_argument("--json", action="store_true", help="print the daemon's /status JSON as is")
    st.set_defaults(handler=cmd_status)


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


def config_summary(loaded: Any) -> dict[str, Any]:
    """What check-config prints, as data. Credentials appear only as where they come from."""
    from csud.config import retention_days

    s = loaded.settings
    cameras = []
    for cam in s.cameras:
        source = None
        if cam.username:
            source = "password_file" if cam.password_file else ("password" if cam.password else None)
        cameras.append(
            {
                "id": cam.id,
                "commune": cam.commune,
                "url": cam.display_url,
                "transport": cam.transport,
                "username": cam.username,
                "password_source": source,
                "retention_days": retention_days(s, cam),
                "enabled": cam.enabled,
            }
        )
    return {
        "config": str(loaded.path),
        "sha256": loaded.sha256,
        "timezone": s.site.zone()[1],
        "storage": {"root": str(s.storage.root), "segment_seconds": s.storage.segment_seconds},
        "metrics": s.metrics.listen or None,
        "legal_max_retention_days": s.legal.max_retention_days,
        "communes": [
            {
                "id": c.id,
                "name": c.name,
                "service": c.service,
                "retention_days": c.retention_days,
                "cameras": sum(1 for cam in s.cameras if cam.commune == c.id),
            }
            for c in s.communes
        ],
        "cameras": cameras,
    }


def cmd_check_config(args: argparse.Namespace) -> int:
    from csud.config import load_config

    loaded = load_config(args.config)
    s = loaded.settings
    for camera in s.cameras:  # a password_file that cannot be read is a config error too
        camera.resolve_password()
    summary = config_summary(loaded)
    if args.json:
        print_json(summary)
        return EXIT_OK
    print(f"config {loaded.path} OK (sha256 {loaded.sha256})")
    print(f"site time zone: {summary['timezone']}")
    print(f"storage: {s.storage.root}, segments of {s.storage.segment_seconds} s")
    print(
        f"metrics: {s.metrics.listen or 'disabled'}; "
        f"legal maximum retention {s.legal.max_retention_days} days"
    )
    for commune in summary["communes"]:
        print(
            f"commune {commune['id']} ({commune['name']}): service {commune['service']}, "
            f"retention {commune['retention_days']} days, {commune['cameras']} camera(s)"
        )
        for cam in summary["cameras"]:
            if cam["commune"] != commune["id"]:
                continue
            auth = "no auth"
            if cam["username"]:
                auth = f"user {cam['username']!r} ({cam['password_source'] or 'no password'})"
            state = "" if cam["enabled"] else " [disabled]"
            print(
                f"  camera {cam['id']}: {cam['url']} via {cam['transport']}, {auth}, "
                f"retention {cam['retention_days']} days{state}"
            )
    return EXIT_OK


def status_url(listen: str) -> str:
    """``http://HOST:PORT/status`` for ``metrics.listen``; a wildcard address is asked on loopback."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"http://{host}:{port}/status"


def fetch_status(url: str, timeout: float = STATUS_TIMEOUT_SECONDS) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise CsudError(f"the daemon at {url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CsudError(f"no csud daemon answers at {url} ({reason}); is it running?") from None
    except json.JSONDecodeError:
        raise CsudError(f"{url} did not return JSON: is metrics.listen another service?") from None
    return data


def cmd_status(args: argparse.Namespace) -> int:
    from csud.config import load_config

    settings = load_config(args.config).settings
    listen = settings.metrics.listen
    if not listen:
        raise UsageError("metrics.listen is disabled in the config: the daemon has no status endpoint")
    data = fetch_status(status_url(listen))
    if args.json:
        print_json(data)
    else:
        print(format_table(data, site_zone(settings)))
    down = [c["camera"] for c in data.get("cameras", []) if not c["up"]]
    if down:
        shown = ", ".join(down[:5]) + (f" and {len(down) - 5} more" if len(down) > 5 else "")
        print(f"csud status: {len(down)} camera(s) down: {shown}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.0f}min"
    return f"{value / 3600:.1f}h"


def _bitrate(bps: float) -> str:
    if bps >= 1e6:
        return f"{bps / 1e6:.2f} Mb/s"
    return f"{bps / 1e3:.0f} kb/s"


def down_reason(cam: dict[str, Any]) -> str:
    """Why a camera is down, in one short cell: its last error, else what it is waiting for."""
    if cam["up"]:
        return ""
    reason = str(cam.get("last_error") or "")
    if not reason:
        reason = "connecting" if cam.get("last_frame_age_seconds") is None else "no media"
    reason = " ".join(reason.split())
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 3] + "..."


def reload_line(data: dict[str, Any], tz: tzinfo | None = None) -> str:
    applied, refused = data.get("reloads", 0), data.get("reload_failures", 0)
    line = f"config reloads: {applied} applied, {refused} refused"
    last = data.get("last_reload")
    if last:
        at = format_time(last["at_ns"], tz) if last.get("at_ns") else "?"
        line += f"; last at {at} " + ("applied" if last.get("ok") else f"REFUSED: {last.get('error', '?')}")
    return line


def format_table(data: dict[str, Any], tz: tzinfo | None = None) -> str:
    """A fixed-width table, one camera a line, then a summary line and the reload line."""
    header = (
        "CAMERA", "COMMUNE", "STATE", "LAST FRAME", "BITRATE", "FPS", "LAST SEGMENT", "RECONN", "CLOCK",
        "REASON",
    )  # fmt: skip
    rows = [header]
    for cam in data.get("cameras", []):
        segment = cam.get("last_segment") or "-"
        if cam.get("last_segment_age_seconds") is not None:
            segment = f"{segment} ({_seconds(cam['last_segment_age_seconds'])} ago)"
        rows.append(
            (
                cam["camera"],
                cam["commune"],
                "up" if cam["up"] else "DOWN",
                _seconds(cam.get("last_frame_age_seconds")),
                _bitrate(cam.get("bitrate_bps", 0)),
                f"{cam.get('fps', 0):.1f}",
                segment,
                str(cam.get("reconnects", 0)),
                f"{cam.get('clock_offset_seconds', 0.0):+.3f}s",
                down_reason(cam) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    cams = data.get("cameras", [])
    up = sum(1 for c in cams if c["up"])
    lines.append(
        f"{up}/{len(cams)} cameras up; csud {data.get('version', '?')} pid {data.get('pid', '?')}; "
        f"loop lag {data.get('event_loop_lag_seconds', 0):.3f}s"
    )
    lines.append(reload_line(data, tz))
    return "\n".join(lines)
