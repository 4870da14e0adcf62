"""``csud status``: the live camera table, read from the running daemon's ``/status`` endpoint.

The daemon owns the live state (sessions, rates, last segment); this command only asks it, over
HTTP on ``metrics.listen``, so it works as any user who can reach that address and never opens
the index. A daemon that does not answer is exit 1 with one line saying where it looked.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from csud.errors import CsudError, UsageError

STATUS_TIMEOUT_SECONDS = 5.0
WithConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(subparsers: Any, with_config: WithConfig) -> None:
    st = with_config(subparsers.add_parser("status", help="live camera table from the running daemon"))
    st.add_argument("--json", action="store_true", help="print the daemon's /status JSON as is")
    st.set_defaults(handler=cmd_status)


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

    listen = load_config(args.config).settings.metrics.listen
    if not listen:
        raise UsageError("metrics.listen is disabled in the config: the daemon has no status endpoint")
    data = fetch_status(status_url(listen))
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
        return 0
    print(format_table(data))
    return 0


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


def format_table(data: dict[str, Any]) -> str:
    """A fixed-width table, one camera a line, then a summary line."""
    header = ("CAMERA", "COMMUNE", "STATE", "LAST FRAME", "BITRATE", "FPS", "LAST SEGMENT", "RECONN", "CLOCK")
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
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    cams = data.get("cameras", [])
    up = sum(1 for c in cams if c["up"])
    lines.append(
        f"{up}/{len(cams)} cameras up; csud {data.get('version', '?')} pid {data.get('pid', '?')}; "
        f"loop lag {data.get('event_loop_lag_seconds', 0):.3f}s; reloads {data.get('reloads', 0)} "
        f"({data.get('reload_failures', 0)} refused)"
    )
    return "\n".join(lines)
