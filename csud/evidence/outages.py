"""Why footage is missing, where csud knows: what a clip's gaps are given as ``cause``.

Three sources, all read at extraction time (DESIGN.md: "never presented as a recording gap"):

- the journal: between a ``daemon_stopped`` and the next ``daemon_started`` the daemon was not
  running (``daemon stopped``); after the last ``daemon_stopped`` with no daemon running now,
  until now; a ``daemon_started`` with no ``daemon_stopped`` since the previous start (killed,
  power loss: the start journals ``unclean_stop_detected``) is the cause of the gap spanning
  that restart (:data:`CAUSE_UNCLEAN_STOP`; when the daemon died is not known);
- the running daemon's ``/status`` (when it holds the store lock and answers on
  ``metrics.listen``): a camera that is down now is down since its last frame, with its last
  error (``camera down: authentication refused`` when the camera refused the credentials);
- whether the camera is being recorded now: then the part of an interval after its last
  indexed frame is the segment in progress (:data:`csud.evidence.clip.REASON_NOT_YET_RECORDED`).
  Without ``/status``, a camera enabled in the configuration of a running daemon whose last
  segment ended within :func:`recording_lag_ns` is taken as being recorded.

Past camera outages are not recorded anywhere yet (only logs and metrics see them): such a gap
has no cause. :func:`daemon_outages` is pure; :func:`camera_context` reads the lock and HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csud.evidence.clip import Outage
from csud.store.journal import DAEMON_STARTED, DAEMON_STOPPED, JournalEntry

NS_PER_SECOND = 1_000_000_000
CAUSE_DAEMON_STOPPED = "daemon stopped"
CAUSE_UNCLEAN_STOP = "daemon stopped uncleanly (killed or power loss)"
CAUSE_AUTH_REFUSED = "camera down: authentication refused"
RECORDING_SLACK_SECONDS = 30
_AUTH_MARKERS = ("401", "refused the credentials", "unauthorized")


def recording_lag_ns(segment_seconds: int) -> int:
    """How far behind now a recording camera's last indexed frame can be: a whole segment, the
    first keyframe after its boundary (segments close there), and slack for the insert."""
    return (2 * segment_seconds + RECORDING_SLACK_SECONDS) * NS_PER_SECOND


def daemon_outages(entries: Iterable[JournalEntry], now_ns: int, running: bool) -> list[Outage]:
    """Intervals when the daemon was stopped, from its start and stop entries (by id)."""
    out: list[Outage] = []
    stopped_at: int | None = None
    started = False
    for e in sorted(entries, key=lambda e: e.id):
        if e.kind == DAEMON_STOPPED:
            stopped_at, started = e.time_ns, False
        elif e.kind == DAEMON_STARTED:
            if stopped_at is not None:
                out.append(Outage(stopped_at, e.time_ns, CAUSE_DAEMON_STOPPED))
            elif started:
                # No daemon_stopped since the previous start (the start journaled
                # unclean_stop_detected): when it died is unknown, that it was not running just
                # before this start is known. The gap spanning this instant gets the cause.
                out.append(Outage(e.time_ns - 1, e.time_ns, CAUSE_UNCLEAN_STOP))
            stopped_at, started = None, True
    if stopped_at is not None and not running:
        out.append(Outage(stopped_at, now_ns + 1, CAUSE_DAEMON_STOPPED))
    return out


def down_cause(last_error: str | None) -> str:
    if last_error and any(m in last_error.lower() for m in _AUTH_MARKERS):
        return CAUSE_AUTH_REFUSED
    return f"camera down: {last_error}" if last_error else "camera down"


@dataclass(frozen=True, slots=True)
class CameraContext:
    recording: bool
    outages: tuple[Outage, ...]


def camera_context(
    camera: str,
    enabled: bool,
    last_end_ns: int | None,
    *,
    now_ns: int,
    running: bool,
    status: Mapping[str, Any] | None,
    daemon: list[Outage],
    segment_seconds: int,
) -> CameraContext:
    """Whether ``camera`` is being recorded now, and the outages its gaps are checked against.
    ``status``: its entry of the daemon's ``/status`` (``None`` when unknown)."""
    outages = list(daemon)
    recent = last_end_ns is not None and now_ns - last_end_ns <= recording_lag_ns(segment_seconds)
    if not running or not enabled:
        return CameraContext(False, tuple(outages))
    if status is None:
        return CameraContext(recent, tuple(outages))
    if status.get("up"):
        return CameraContext(True, tuple(outages))
    age = status.get("last_frame_age_seconds")
    since = now_ns - int(age * NS_PER_SECOND) if isinstance(age, int | float) else (last_end_ns or 0)
    outages.append(Outage(since, now_ns + 1, down_cause(status.get("last_error"))))
    return CameraContext(False, tuple(outages))


def read_status(listen: str, root: Path) -> dict[str, dict[str, Any]] | None:
    """The running daemon's ``/status`` cameras by id; ``None`` when unavailable."""
    from csud.cli.service import fetch_status, status_url
    from csud.errors import CsudError
    from csud.store.recovery import store_locked

    if not listen or not store_locked(root):
        return None
    try:
        data = fetch_status(status_url(listen), timeout=2.0)
    except CsudError:
        return None
    return {str(c.get("camera")): c for c in data.get("cameras", []) if isinstance(c, dict)}
