"""The live-viewing part of a commune's registre: who watched which camera, when, how long.

Read from the journal (``live_view_ended`` and ``live_view_refused``); ``csud registre`` prints
these rows after the recordings table. No aiohttp here: the CLI imports it.
"""

from __future__ import annotations

from typing import Any

from csud.store.journal import LIVE_VIEW_ENDED, LIVE_VIEW_REFUSED

NS_PER_SECOND = 1_000_000_000


def live_view_rows(index: Any, commune: str, start_ns: int, end_ns: int) -> list[dict[str, Any]]:
    """Views that ended, and refusals, in ``[start_ns, end_ns)`` for ``commune``, in time order."""
    rows = []
    for kind in (LIVE_VIEW_ENDED, LIVE_VIEW_REFUSED):
        for e in index.journal_entries(since_ns=start_ns, kind=kind):
            if e.commune != commune or e.time_ns >= end_ns:
                continue
            seconds = float(e.details.get("duration_seconds", 0))
            rows.append(
                {
                    "time_ns": e.time_ns,
                    "started_ns": e.time_ns - int(seconds * NS_PER_SECOND),
                    "kind": "view" if kind == LIVE_VIEW_ENDED else "refused",
                    "operator": e.details.get("operator", ""),
                    "camera": e.camera or "",
                    "client": e.details.get("client", ""),
                    "duration_seconds": seconds,
                    "bytes": int(e.details.get("bytes", 0)),
                    "reason": e.reason or "",
                }
            )
    return sorted(rows, key=lambda r: r["time_ns"])


def format_rows(rows: list[dict[str, Any]], format_time: Any) -> list[str]:
    out = ["", "Consultations en direct (live_view_ended / live_view_refused)"]
    for r in rows:
        if r["kind"] == "view":
            out.append(
                f"{format_time(r['started_ns'])}  {r['operator']:16s} {r['camera']:24s} "
                f"{r['duration_seconds']:9.1f} s  {r['bytes'] / 1e6:9.1f} MB  from {r['client']}"
                + (f"  ({r['reason']})" if r["reason"] not in ("", "client_closed") else "")
            )
        else:
            out.append(
                f"{format_time(r['time_ns'])}  {r['operator']:16s} {r['camera']:24s} REFUSED "
                f"({r['reason']}) from {r['client']}"
            )
    if not rows:
        out.append("(no live viewing this month)")
    return out
