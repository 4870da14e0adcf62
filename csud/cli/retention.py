"""``csud retention``, ``csud hold``, ``csud journal`` and ``csud registre``.

Each command opens the index at ``<storage.root>/index.sqlite3``: read-only for the ones that
only read (``journal``, ``registre``, ``hold list``), writable for the
others (the daemon may run at the same time: SQLite WAL and short transactions). Times are ISO
8601 with an offset (:func:`csud.cli.common.parse_time`); output times carry the site's zone
(``[site] timezone``), and the registre's days and months are that zone's days.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

from csud.cli.common import TIME_HELP, format_time, open_index, parse_time, print_json, site_zone
from csud.errors import CsudError, EvidenceError, UsageError

NS_PER_SECOND = 1_000_000_000

WithConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(subparsers: Any, with_config: WithConfig) -> None:
    ret = with_config(subparsers.add_parser("retention", help="run one retention pass (or --dry-run)"))
    ret.add_argument("--dry-run", action="store_true", help="list what would be destroyed; destroy nothing")
    ret.add_argument(
        "--now", metavar="T", help="with --dry-run only: list what would be due at T (ISO 8601 with offset)"
    )
    ret.add_argument("--json", action="store_true", help="the pass's report as JSON")
    ret.set_defaults(handler=cmd_retention)

    hold = subparsers.add_parser("hold", help="judicial holds: add, list, release")
    hold_sub = hold.add_subparsers(dest="hold_command", required=True, parser_class=type(hold))
    add = with_config(hold_sub.add_parser("add", help="protect cameras' footage over an interval"))
    add.add_argument("--camera", action="append", required=True, help="camera id (repeat for several)")
    add.add_argument("--from", dest="from_", metavar="T", required=True, help=f"start; {TIME_HELP}")
    add.add_argument("--to", metavar="T", required=True, help=f"end (excluded); {TIME_HELP}")
    add.add_argument("--requisition", required=True, help="reference of the judicial requisition")
    add.add_argument("--officer", required=True, help="the requesting officer (OPJ)")
    add.add_argument("--reason", required=True, help="why the footage is held (shown by hold list)")
    add.add_argument("--until", metavar="T", help="the hold lapses at T (default: until released)")
    add.set_defaults(handler=cmd_hold_add)
    lst = with_config(hold_sub.add_parser("list", help="list holds"))
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(handler=cmd_hold_list)
    rel = with_config(hold_sub.add_parser("release", help="release a hold"))
    rel.add_argument("id", type=int, help="the hold's number (csud hold list)")
    rel.add_argument("--reason", required=True, help="why it is released (journaled)")
    rel.set_defaults(handler=cmd_hold_release)

    jr = with_config(subparsers.add_parser("journal", help="list or verify the tamper-evident journal"))
    jr.add_argument("--since", metavar="T", help=f"only entries from T; {TIME_HELP}")
    jr.add_argument("--json", action="store_true", help="machine-readable output")
    jr.add_argument("--verify", action="store_true", help="check the hash chain; exit 1 naming the bad entry")
    jr.set_defaults(handler=cmd_journal)

    reg = with_config(subparsers.add_parser("registre", help="a commune's register of recordings, one month"))
    reg.add_argument("--commune", required=True, metavar="ID", help="the commune's id")
    reg.add_argument("--month", required=True, metavar="YYYY-MM", help="the month, in the site's time zone")
    reg.add_argument("--csv", action="store_true", help="CSV, one row per camera and day")
    reg.add_argument("--json", action="store_true", help="JSON, one object per camera and day")
    reg.set_defaults(handler=cmd_registre)


# -- helpers ---------------------------------------------------------------------------------


def _open(args: argparse.Namespace, readonly: bool) -> tuple[Any, Any]:
    """(settings, Index) for the configured store."""
    from csud.config import load_config

    settings = load_config(args.config).settings
    return settings, open_index(settings, readonly=readonly)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _t(ns: int | None, tz: tzinfo) -> str:
    return "-" if ns is None else format_time(ns, tz)


# -- csud retention ----------------------------------------------------------------------------


def cmd_retention(args: argparse.Namespace) -> int:
    from csud.store.retention import Retention

    if args.now and not args.dry_run:
        # A real pass destroys at real time only: a pretended date would destroy footage early
        # and date the register wrongly (issue 12).
        raise UsageError("--now goes with --dry-run only: a real pass destroys at the real time")
    now_ns = parse_time(args.now) if args.now else time.time_ns()
    settings, index = _open(args, readonly=False)
    try:
        retention = Retention(index, settings.storage.root, settings)
        report = retention.run_pass(now_ns, dry_run=args.dry_run)
        pressure = retention.relieve_disk_pressure(now_ns, dry_run=args.dry_run)
    finally:
        index.close()
    tz = site_zone(settings)
    errors = report.errors + pressure.errors
    if args.json:
        print_json(_retention_json(report, pressure, now_ns, args.dry_run, tz))
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 1 if errors else 0
    verb = "would destroy" if args.dry_run else "destroyed"
    print(f"retention pass at {_t(now_ns, tz)}{' (dry run: nothing destroyed)' if args.dry_run else ''}")
    destroyed = {(d.commune, d.camera): d for d in report.destroyed}
    communes = sorted({c for c, _ in report.windows})
    for commune in communes:
        try:
            days = settings.commune(commune).retention_days
            window = f"window {days} days"
        except KeyError:
            window = f"not configured: legal maximum {settings.legal.max_retention_days} days"
        print(f"commune {commune} ({window})")
        for (c, camera), cam_days in sorted(report.windows.items()):
            if c != commune:
                continue
            d = destroyed.get((commune, camera))
            line = f"  camera {camera} ({cam_days} days): "
            line += (
                f"{verb} {d.count} segment(s), {_t(d.from_ns, tz)} .. {_t(d.to_ns, tz)}, {_mb(d.bytes)}"
                if d
                else "nothing due"
            )
            held = report.held.get((commune, camera))
            if held:
                line += f"; {held} past the window kept under hold"
            print(line)
        if report.overdue.get(commune):
            print(f"  OVERDUE: {report.overdue[commune]} segment(s) past the window remain")
    for d in pressure.destroyed:
        print(
            f"disk pressure: {verb} {d.count} segment(s) of {d.commune}/{d.camera}, "
            f"{_t(d.from_ns, tz)} .. {_t(d.to_ns, tz)}, {_mb(d.bytes)}"
        )
    print(f"total: {verb} {report.count} segment(s) by retention, {pressure.count} by disk pressure")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


def _retention_json(report: Any, pressure: Any, now_ns: int, dry_run: bool, tz: tzinfo) -> dict[str, Any]:
    def destroyed(d: Any) -> dict[str, Any]:
        return {
            "commune": d.commune, "camera": d.camera, "segments": d.count, "bytes": d.bytes,
            "from": _t(d.from_ns, tz), "to": _t(d.to_ns, tz),
        }  # fmt: skip

    return {
        "at": _t(now_ns, tz),
        "dry_run": dry_run,
        "cameras": [
            {
                "commune": commune,
                "camera": camera,
                "window_days": days,
                "held_past_window": report.held.get((commune, camera), 0),
            }
            for (commune, camera), days in sorted(report.windows.items())
        ],
        "destroyed": [destroyed(d) for d in report.destroyed],
        "disk_pressure": [destroyed(d) for d in pressure.destroyed],
        "overdue": dict(report.overdue),
        "total": {"retention": report.count, "disk_pressure": pressure.count},
        "errors": [str(e) for e in report.errors + pressure.errors],
    }


# -- csud hold -------------------------------------------------------------------------------


def _hold_status(hold: Any, now_ns: int) -> str:
    if hold.released_ns is not None:
        return "released"
    if hold.until_ns is not None and now_ns >= hold.until_ns:
        return "lapsed"
    return "active"


def cmd_hold_add(args: argparse.Namespace) -> int:
    from_ns, to_ns = parse_time(args.from_), parse_time(args.to)
    until_ns = parse_time(args.until) if args.until else None
    now_ns = time.time_ns()
    if to_ns <= from_ns:
        raise UsageError("--to must be after --from")
    if until_ns is not None and until_ns <= now_ns:
        raise UsageError(f"--until {args.until} is already past")
    for name in ("requisition", "officer", "reason"):
        if not getattr(args, name).strip():
            raise UsageError(f"--{name} must not be empty")
    settings, index = _open(args, readonly=False)
    try:
        known = {c.id for c in settings.cameras} | {u.camera for u in index.usage()}
        unknown = [c for c in args.camera if c not in known]
        if unknown:
            raise UsageError(f"unknown camera {unknown[0]!r} (not configured and nothing recorded)")
        hold = index.add_hold(
            args.camera,
            from_ns,
            to_ns,
            requisition=args.requisition,
            officer=args.officer,
            reason=args.reason,
            until_ns=until_ns,
            now_ns=now_ns,
        )
    finally:
        index.close()
    tz = site_zone(settings)
    until = f", until {_t(hold.until_ns, tz)}" if hold.until_ns is not None else ", until released"
    print(
        f"hold {hold.id} added: {', '.join(hold.cameras)} [{_t(hold.from_ns, tz)}, {_t(hold.to_ns, tz)}), "
        f"requisition {hold.requisition}, officer {hold.officer}{until}"
    )
    if settings.cluster is not None:  # the same hold on every node (csud.cli.cluster)
        from csud.cli.cluster import hold_everywhere

        return hold_everywhere(settings, hold)
    return 0


def _hold_json(hold: Any, now_ns: int, tz: tzinfo) -> dict[str, Any]:
    return {
        "id": hold.id,
        "status": _hold_status(hold, now_ns),
        "cameras": list(hold.cameras),
        "from": _t(hold.from_ns, tz),
        "to": _t(hold.to_ns, tz),
        "from_ns": hold.from_ns,
        "to_ns": hold.to_ns,
        "requisition": hold.requisition,
        "officer": hold.officer,
        "reason": hold.reason,
        "until": None if hold.until_ns is None else _t(hold.until_ns, tz),
        "created": _t(hold.created_ns, tz),
        "created_by": hold.created_by,
        "released": None if hold.released_ns is None else _t(hold.released_ns, tz),
        "released_by": hold.released_by,
        "release_reason": hold.release_reason,
    }


def cmd_hold_list(args: argparse.Namespace) -> int:
    settings, index = _open(args, readonly=True)
    try:
        holds = index.holds()
    finally:
        index.close()
    now_ns, tz = time.time_ns(), site_zone(settings)
    if settings.cluster is not None:
        return _hold_list_cluster(args, settings, holds, now_ns, tz)
    if args.json:
        print_json([_hold_json(h, now_ns, tz) for h in holds])
        return 0
    if not holds:
        print("no holds")
    for h in holds:
        status = _hold_status(h, now_ns)
        extra = f", until {_t(h.until_ns, tz)}" if h.until_ns is not None else ""
        if h.released_ns is not None:
            extra += f", released {_t(h.released_ns, tz)} by {h.released_by}: {h.release_reason}"
        print(
            f"{h.id:4d} {status:8s} {','.join(h.cameras)} [{_t(h.from_ns, tz)}, {_t(h.to_ns, tz)}) "
            f"requisition {h.requisition}, officer {h.officer}, reason {h.reason!r}, by {h.created_by} "
            f"at {_t(h.created_ns, tz)}{extra}"
        )
    return 0


def _hold_list_cluster(
    args: argparse.Namespace, settings: Any, holds: list[Any], now_ns: int, tz: tzinfo
) -> int:
    """Cluster: every node's holds merged by (requisition, interval, cameras, creation time), each
    with the nodes holding it (``nodes``: node -> its id and status there) and the reachable nodes
    missing it (``missing_on``: run ``hold add`` again there). A node that does not answer is named
    on stderr, exit 1: its holds are not listed."""
    import asyncio

    from csud.cluster.api import hold_dict
    from csud.cluster.queries import holds_everywhere, merge_holds
    from csud.store.holds import HoldRow

    local = settings.cluster.node
    by_node, unreachable = asyncio.run(holds_everywhere(settings))
    by_node[local] = [hold_dict(h) for h in holds]
    out = []
    for entry in merge_holds(by_node, local):
        copies = {n: HoldRow(**{**c, "cameras": tuple(c["cameras"])}) for n, c in entry["copies"].items()}
        statuses = {n: _hold_status(h, now_ns) for n, h in copies.items()}
        first = copies.get(local) or next(iter(copies.values()))
        doc = _hold_json(first, now_ns, tz)
        doc["id"] = copies[local].id if local in copies else None
        doc["status"] = statuses.popitem()[1] if len(set(statuses.values())) == 1 else "mixed"
        doc["nodes"] = {n: {"id": h.id, "status": _hold_status(h, now_ns)} for n, h in sorted(copies.items())}
        doc["missing_on"] = sorted(set(by_node) - set(copies))
        out.append(doc)
    if args.json:
        print_json(out)
    elif not out:
        print("no holds on the reachable nodes")
    for d in [] if args.json else out:
        where = " ".join(f"{n}#{c['id']}:{c['status']}" for n, c in d["nodes"].items())
        missing = f"; MISSING on {', '.join(d['missing_on'])}" if d["missing_on"] else ""
        print(
            f"{d['status']:8s} {','.join(d['cameras'])} [{d['from']}, {d['to']}) "
            f"requisition {d['requisition']}, officer {d['officer']}, reason {d['reason']!r}, "
            f"at {d['created']} — on {where}{missing}"
        )
    for exc in unreachable:
        print(f"csud hold list: {exc}: its holds are not listed", file=sys.stderr)
    return 1 if unreachable else 0


def cmd_hold_release(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise UsageError("--reason must not be empty")
    settings, index = _open(args, readonly=False)
    try:
        hold = index.release_hold(args.id, reason=args.reason, now_ns=time.time_ns())
    except KeyError:
        raise UsageError(f"unknown hold {args.id}") from None
    except ValueError as e:
        raise CsudError(str(e)) from None
    finally:
        index.close()
    print(f"hold {hold.id} released: its footage is due at the next retention pass if past its window")
    if settings.cluster is not None:  # the same hold released on every node (csud.cli.cluster)
        from csud.cli.cluster import release_everywhere

        return release_everywhere(settings, hold)
    return 0


# -- csud journal ----------------------------------------------------------------------------


def cmd_journal(args: argparse.Namespace) -> int:
    since_ns = parse_time(args.since) if args.since else None
    settings, index = _open(args, readonly=True)
    tz = site_zone(settings)
    try:
        if args.verify:
            check = index.verify_journal()
        else:
            entries = index.journal_entries(since_ns)
    finally:
        index.close()
    if args.verify:
        if not check.ok:
            raise EvidenceError(f"journal verification failed: {check.problem}")
        print(f"journal OK: {check.entries} entries, head {check.head_id} sha256 {check.head_hash}")
        return 0
    if args.json:
        print_json([{**e.to_json(), "time": _t(e.time_ns, tz)} for e in entries])
        return 0
    for e in entries:
        parts = [f"{e.id:6d} {_t(e.time_ns, tz)} {e.kind:18s} by {e.actor}"]
        if e.commune:
            parts.append(f"commune {e.commune}")
        if e.camera:
            parts.append(f"camera {e.camera}")
        if e.from_ns is not None and e.to_ns is not None:
            parts.append(f"[{_t(e.from_ns, tz)}, {_t(e.to_ns, tz)})")
        if e.requisition:
            parts.append(f"requisition {e.requisition}")
        if e.reason:
            parts.append(f"reason {e.reason}")
        if "count" in e.details:
            parts.append(f"{e.details['count']} segment(s)")
        print(" ".join(parts))
    return 0


# -- csud registre -----------------------------------------------------------------------------


@dataclass
class _Day:
    ns: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    destroyed_on: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)

    def add(self, ns: int, first_ns: int, last_ns: int) -> None:
        self.ns += ns
        self.first_ns = first_ns if self.first_ns is None else min(self.first_ns, first_ns)
        self.last_ns = last_ns if self.last_ns is None else max(self.last_ns, last_ns)


def _month(text: str, tz: tzinfo) -> tuple[datetime, datetime]:
    """The month's first local midnight and the next month's, in ``tz``."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise UsageError(f"--month must be YYYY-MM, not {text!r}")
    start = datetime(int(m.group(1)), int(m.group(2)), 1)
    end = (start + timedelta(days=32)).replace(day=1)
    return start.replace(tzinfo=tz), end.replace(tzinfo=tz)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * NS_PER_SECOND


def _day_key(ns: int, tz: tzinfo) -> str:
    return datetime.fromtimestamp(ns // NS_PER_SECOND, tz).strftime("%Y-%m-%d")


def _day_bounds(day: str, tz: tzinfo) -> tuple[int, int]:
    """[local midnight, next local midnight) of ``day``: 23 or 25 hours on a DST change."""
    start = datetime.strptime(day, "%Y-%m-%d")
    return _ns(start.replace(tzinfo=tz)), _ns((start + timedelta(days=1)).replace(tzinfo=tz))


def _local_parts(first_ns: int, last_ns: int, ns: int, tz: tzinfo) -> list[tuple[str, int, int, int]]:
    """A destruction journals its footage per UTC day (count, ns, first start, last end). Split it
    over the local days that [first, last] spans, in proportion to the overlap (exact when the
    footage is continuous): (day, ns, first_ns, last_ns) per local day."""
    parts: list[tuple[str, int, int, int]] = []
    cursor = first_ns
    while cursor < last_ns or not parts:
        day = _day_key(cursor, tz)
        _, day_end = _day_bounds(day, tz)
        end = min(day_end, last_ns)
        share = ns if last_ns <= first_ns else ns * (end - cursor) // (last_ns - first_ns)
        parts.append((day, share, cursor, end))
        cursor = end
        if last_ns <= first_ns:
            break
    if len(parts) > 1:  # rounding: the last part takes the remainder
        day, _, a, b = parts[-1]
        parts[-1] = (day, ns - sum(p[1] for p in parts[:-1]), a, b)
    return parts


def registre_rows(settings: Any, index: Any, commune: str, month: str) -> list[dict[str, Any]]:
    """Per camera and local day (``[site] timezone``) of ``month``: hours recorded (kept +
    destroyed), first and last segment, when destroyed, and the requisitions of holds covering
    that day."""
    from csud.store.journal import SEGMENTS_DESTROYED

    tz = site_zone(settings)
    start, end = _month(month, tz)
    start_ns, end_ns = _ns(start), _ns(end)
    cameras = {c.id for c in settings.cameras if c.commune == commune}
    cameras |= {u.camera for u in index.usage() if u.commune == commune}
    margin = 86_400 * NS_PER_SECOND  # a destruction's UTC days may straddle the local month
    destroyed = [
        e
        for e in index.journal_entries(kind=SEGMENTS_DESTROYED)
        if e.commune == commune
        and e.from_ns is not None
        and e.from_ns < end_ns + margin
        and (e.to_ns or 0) > start_ns - margin
    ]
    cameras |= {e.camera for e in destroyed if e.camera}
    known = {c.id for c in settings.communes}
    if commune not in known and not cameras:
        raise UsageError(f"unknown commune {commune!r}")
    holds = index.holds()
    table: dict[tuple[str, str], _Day] = {}
    for camera in sorted(cameras):
        for seg in index.segments(camera, start_ns, end_ns):
            if seg.commune != commune:
                continue
            if start_ns <= seg.start_ns < end_ns:
                row = table.setdefault((camera, _day_key(seg.start_ns, tz)), _Day())
                row.add(seg.end_ns - seg.start_ns, seg.start_ns, seg.end_ns)
    for e in destroyed:
        on = _day_key(e.time_ns, tz)
        for d in e.details.get("days", {}).values():
            for day, ns, first_ns, last_ns in _local_parts(
                int(d["first_ns"]), int(d["last_ns"]), int(d["ns"]), tz
            ):
                if not start_ns <= first_ns < end_ns:
                    continue
                row = table.setdefault((e.camera or "", day), _Day())
                row.add(ns, first_ns, last_ns)
                row.destroyed_on.add(on)
    for (camera, day), row in table.items():
        day_start, day_end = _day_bounds(day, tz)
        for h in holds:
            if camera in h.cameras and h.from_ns < day_end and day_start < h.to_ns:
                # A released hold no longer protects anything: say so rather than "held".
                row.held.add(h.requisition + (" (released)" if h.released_ns is not None else ""))
    out = []
    for (camera, day), row in sorted(table.items()):
        out.append(
            {
                "camera": camera,
                "day": day,
                "hours_recorded": round(row.ns / 3600 / NS_PER_SECOND, 2),
                "first_segment": _t(row.first_ns, tz),
                "last_segment": _t(row.last_ns, tz),
                "destroyed_on": ",".join(sorted(row.destroyed_on)),
                "held": ",".join(sorted(row.held)),
            }
        )
    return out


def cmd_registre(args: argparse.Namespace) -> int:
    from datetime import UTC

    from csud.live.registre import format_rows, live_view_rows

    _month(args.month, UTC)  # usage errors before touching the index
    settings, index = _open(args, readonly=True)
    try:
        rows = registre_rows(settings, index, args.commune, args.month)
        zone = settings.site.zone()[0]
        views = live_view_rows(index, args.commune, *(_ns(m) for m in _month(args.month, zone)))
    finally:
        index.close()
    columns = ["camera", "day", "hours_recorded", "first_segment", "last_segment", "destroyed_on", "held"]
    unreachable: list[Any] = []
    if settings.cluster is not None:  # every node's part, each row with its node (csud.cli.cluster)
        from csud.cli.cluster import registre_everywhere

        rows, views, unreachable = registre_everywhere(settings, args.commune, args.month, rows, views)
        columns.append("node")
    if args.json:
        print_json({"recordings": rows, "live_views": views})
        return _unreachable(unreachable)
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return _unreachable(unreachable)
    try:
        commune = settings.commune(args.commune)
        title = f"{commune.name} ({commune.id}), {commune.authorisation or 'no authorisation recorded'}, "
        title += f"retention {commune.retention_days} days"
    except KeyError:
        title = f"{args.commune} (no longer configured)"
    print(f"Registre des enregistrements — {title} — {args.month} (days in {settings.site.zone()[1]})")
    print(
        f"{'camera':24s} {'day':10s} {'hours':>6s}  {'first segment':24s} {'last segment':24s} "
        f"{'destroyed on':12s} held"
    )
    for r in rows:
        print(
            f"{r['camera']:24s} {r['day']:10s} {r['hours_recorded']:6.2f}  {r['first_segment']:24s} "
            f"{r['last_segment']:24s} {r['destroyed_on'] or '-':12s} {r['held'] or '-'}"
        )
    if not rows:
        print("(nothing recorded this month)")
    print("\n".join(format_rows(views, lambda ns: _t(ns, zone))))  # live viewing (csud.live.registre)
    return _unreachable(unreachable)


def _unreachable(nodes: list[Any]) -> int:
    """Cluster: a node that did not answer is named (its part of the registre is missing): exit 1."""
    for exc in nodes:
        print(f"csud registre: {exc}: its recordings are not listed", file=sys.stderr)
    return 1 if nodes else 0
