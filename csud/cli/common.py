"""What the command modules share: exit codes, times in and out, the index, cameras, JSON, progress.

Command modules import this, never :mod:`csud.cli.main` (which imports them: no cycle, not even
inside a function). Times read from the command line need an explicit offset; times printed
carry the site's zone (``[site] timezone``, default the system's) with its offset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, TextIO

from csud.errors import UsageError

if TYPE_CHECKING:
    from csud.config import Settings
    from csud.store.index import Index

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
NS_PER_SECOND = 1_000_000_000
CONFIG_HELP = "config file (default: $CSUD_CONFIG, then /etc/csud/csud.toml)"
TIME_HELP = "ISO 8601 time with its offset, e.g. 2026-11-26T14:00:00+01:00"

WithConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", help=CONFIG_HELP)
    return parser


def parse_time(text: str) -> int:
    """ISO 8601 with an offset -> UTC nanoseconds. Naive times are refused."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UsageError(f"time {text!r} has no UTC offset (write e.g. 2026-11-26T14:00:00+01:00)")
    seconds = int(moment.timestamp())
    return seconds * NS_PER_SECOND + moment.microsecond * 1000


def format_time(ns: int, tz: tzinfo | None = None) -> str:
    """UTC nanoseconds -> ISO 8601 with milliseconds in ``tz`` (UTC when None), with its offset;
    a zero offset is written ``Z``."""
    moment = datetime.fromtimestamp(ns // NS_PER_SECOND, tz or UTC).replace(
        microsecond=(ns % NS_PER_SECOND) // 1000
    )
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def site_zone(settings: Settings) -> tzinfo:
    return settings.site.zone()[0]


def open_index(settings: Settings, readonly: bool = True) -> Index:
    """The store's index; exit 2 unless ``storage.root`` is the csud store (never creates one:
    ``csud init`` does; csud/store/identity.py)."""
    from csud.store.identity import open_store_index

    return open_store_index(settings.storage.root, readonly=readonly)


def known_cameras(settings: Settings, index: Index) -> set[str]:
    """Configured cameras, and those no longer configured whose footage is still indexed."""
    return {c.id for c in settings.cameras} | {u.camera for u in index.usage()}


def require_camera(settings: Settings, index: Index, camera: str) -> None:
    """A mistyped camera is a usage error (exit 2), not an empty listing."""
    if camera not in known_cameras(settings, index):
        raise UsageError(f"unknown camera {camera!r} (not configured and nothing recorded)")


def print_json(data: Any, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    json.dump(data, out, indent=2, ensure_ascii=False, default=str)  # Path -> str
    out.write("\n")


PROGRESS_INTERVAL_SECONDS = 0.25
MIB = 1 << 20


class ProgressLine:
    """``\\r``-rewritten percentage and time left on a terminal; silent when ``stream`` is not a
    TTY (a pipe, a log, cron). ``clock`` is injected for tests."""

    def __init__(
        self, label: str, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.clock = clock
        self._started: float | None = None
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self._started is None:
            self._started = now
        if now - self._last < PROGRESS_INTERVAL_SECONDS and done < total:
            return
        self._last = now
        percent = 100 * done // total if total else 100
        line = f"\r{self.label}: {percent:3d}% ({done // MIB}/{total // MIB} MiB)"
        elapsed = now - self._started
        if 0 < done < total and elapsed > 0:
            line += f", about {_duration((total - done) * elapsed / done)} left"
        self.stream.write(line + "\x1b[K")  # clear what a longer previous line left
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
