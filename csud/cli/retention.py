"""``csud retention``, ``csud hold``, ``csud journal`` and ``csud registre``.

Each command opens the index at ``<storage.root>/index.sqlite3``: read-only for the ones that
only read (``journal``, ``registre``, ``hold list``), writable for the
others (the daemon may run at the same time: SQLite WAL and short transactions). Times are ISO
8601 with an offset (:func:`csud.cli.main.parse_time`); output times are UTC.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from csud.errors import CsudError, EvidenceError, UsageError

NS_PER_SECOND = 1_000_000_000

WithConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(subparsers: Any, with_config: WithConfig) -> None:
    ret = with_config(subparsers.add_parser("retention", help="run one retention pass (or --dry-run)"))
    ret.add_argument("--dry-run", action="store_true", help="list what would be destroyed; destroy nothing")
    ret.add_argument(
        "--now", metavar="T", help="with --dry-run only: list what would be due at T (ISO 8601 with offset)"
    )
    ret.set_defaults(handler=cmd_retention)

    hold = subparsers.add_parser("hold", help="judicial holds: add, list, release")
    hold_sub = hold.add_subparsers(dest="hold_command", required=True, parser_class=type(hold))
    add = with_config(hold_sub.add_parser("add", help="protect cameras' footage over an interval"))
    add.add_argument("--camera", action="append", required=True, help="camera id (repeat for several)")
    add.add_argument("--from", dest="from_", metavar="T", required=True)
    add.add_argument("--to", metavar="T", required=True)
    add.add_argument("--requisition", required=True, help="reference of the judicial requisition")
    add.add_argument("--officer", required=True, help="the requesting officer (OPJ)")
    add.add_argument("--reason", required=True)
    add.add_argument("--until", metavar="T", help="the hold lapses at T (default: until released)")
    add.set_defaults(handler=cmd_hold_add)
    lst = with_config(hold_sub.add_parser("list", help="list holds"))
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(handler=cmd_hold_list)
    rel = with_config(hold_sub.add_parser("release", help="release a hold"))
    rel.add_argument("id", type=int)
    rel.add_argument("--reason", required=True)
    rel.set_defaults(handler=cmd_hold_release)

    jr = with_config(subparsers.add_parser("journal", help="list or verify the tamper-evident journal"))
    jr.add_argument("--since", metavar="T")
    jr.add_argument("--json", action="store_true")
    jr.add_argument("--verify", action="store_true", help="check the hash chain; exit 1 naming the bad entry")
    jr.set_defaults(handler=cmd_journal)

    reg = with_config(subparsers.add_parser("registre", help="a commune's register of recordings, one month"))
    reg.add_argument("--commune", required=True)
    reg.add_argument("--month", required=True, metavar="YYYY-MM")
    reg.add_argument("--csv", action="store_true")
    reg.set_defaults(handler=cmd_registre)


# -- helpers ---------------------------------------------------------------------------------


def _open(args: argparse.Namespace, readonly: bool) -> tuple[Any, Any]:
    """(settings, Index) for the configured store."""
    from csud.config import load_config
    from csud.store.identity import open_store_index

    settings = load_config(args.config).settings
    # Exit 2 unless the root is the csud store; never creates one (csud/store/identity.py).
    return settings, open_store_index(settings.storage.root, readonly=readonly)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _t(ns: int | None) -> str:
    from csud.cli.main import format_time

    return "-" if ns is None else format_time(ns)


# -- csud retention ----------------------------------------------------------------------------


def cmd_retention(args: argparse.Namespace) -> int:
    from csud.cli.main import parse_time
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
    verb = "would destroy" if args.dry_run else "destroyed"
    print(f"retention pass at {_t(now_ns)}{' (dry run: nothing destroyed)' if args.dry_run else ''}")
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
                f"{verb} {d.count} segment(s), {_t(d.from_ns)} .. {_t(d.to_ns)}, {_mb(d.bytes)}"
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
            f"{_t(d.from_ns)} .. {_t(d.to_ns)}, {_mb(d.bytes)}"
        )
    print(f"total: {verb} {report.count} segment(s) by retention, {pressure.count} by disk pressure")
    errors = report.errors + pressure.errors
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


# -- csud hold -------------------------------------------------------------------------------


def _hold_status(hold: Any, now_ns: int) -> str:
    if hold.released_ns is not None:
        return "released"
    if hold.until_ns is not None and now_ns >= hold.until_ns:
        return "lapsed"
    return "active"


def cmd_hold_add(args: argparse.Namespace) -> int:
    from csud.cli.main import parse_time

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
    until = f", until {_t(hold.until_ns)}" if hold.until_ns is not None else ", until released"
    print(
        f"hold {hold.id} added: {', '.join(hold.cameras)} [{_t(hold.from_ns)}, {_t(hold.to_ns)}), "
        f"requisition {hold.requisition}, officer {hold.officer}{until}"
    )
    return 0


def _hold_json(hold: Any, now_ns: int) -> dict[str, Any]:
    return {
        "id": hold.id,
        "status": _hold_status(hold, now_ns),
        "cameras": list(hold.cameras),
        "from": _t(hold.from_ns),
        "to": _t(hold.to_ns),
        "from_ns": hold.from_ns,
        "to_ns": hold.to_ns,
        "requisition": hold.requisition,
        "officer": hold.officer,
        "reason": hold.reason,
        "until": None if hold.until_ns is None else _t(hold.until_ns),
        "created": _t(hold.created_ns),
        "created_by": hold.created_by,
        "released": None if hold.released_ns is None else _t(hold.released_ns),
        "released_by": hold.released_by,
        "release_reason": hold.release_reason,
    }


def cmd_hold_list(args: argparse.Namespace) -> int:
    _, index = _open(args, readonly=True)
    try:
        holds = index.holds()
    finally:
        index.close()
    now_ns = time.time_ns()
    if args.json:
        json.dump([_hold_json(h, now_ns) for h in holds], sys.stdout, indent=2, ensure_ascii=False)
        print()
        return 0
    if not holds:
        print("no holds")
    for h in holds:
        status = _hold_status(h, now_ns)
        extra = f", until {_t(h.until_ns)}" if h.until_ns is not None else ""
        if h.released_ns is not None:
            extra += f", released {_t(h.released_ns)} by {h.released_by}: {h.release_reason}"
        print(
            f"{h.id:4d} {status:8s} {','.join(h.cameras)} [{_t(h.from_ns)}, {_t(h.to_ns)}) "
            f"requisition {h.requisition}, officer {h.officer}, by {h.created_by} at {_t(h.created_ns)}"
            f"{extra}"
        )
    return 0


def cmd_hold_release(args: argparse.Namespace) -> int:
    if not args.reason.strip():
        raise UsageError("--reason must not be empty")
    _, index = _open(args, readonly=False)
    try:
        hold = index.release_hold(args.id, reason=args.reason, now_ns=time.time_ns())
    except KeyError:
        raise UsageError(f"unknown hold {args.id}") from None
    except ValueError as e:
        raise CsudError(str(e)) from None
    finally:
        index.close()
    print(f"hold {hold.id} released: its footage is due at the next retention pass if past its window")
    return 0


# -- csud journal ----------------------------------------------------------------------------


def cmd_journal(args: argparse.Namespace) -> int:
    from csud.cli.main import parse_time

    since_ns = parse_time(args.since) if args.since else None
    _, index = _open(args, readonly=True)
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
        out = [{**e.to_json(), "time": _t(e.time_ns)} for e in entries]
        json.dump(out, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return 0
    for e in entries:
        parts = [f"{e.id:6d} {_t(e.time_ns)} {e.kind:18s} by {e.actor}"]
        if e.commune:
            parts.append(f"commune {e.commune}")
        if e.camera:
            parts.append(f"camera {e.camera}")
        if e.from_ns is not None and e.to_ns is not None:
            parts.append(f"[{_t(e.from_ns)}, {_t(e.to_ns)})")
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


def _month(text: str) -> tuple[datetime, datetime]:
    m = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise UsageError(f"--month must be YYYY-MM, not {text!r}")
    start = datetime(int(m.group(1)), int(m.group(2)), 1, tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * NS_PER_SECOND


def _day_key(ns: int) -> str:
    return datetime.fromtimestamp(ns // NS_PER_SECOND, UTC).strftime("%Y-%m-%d")


def registre_rows(settings: Any, index: Any, commune: str, month: str) -> list[dict[str, Any]]:
    """Per camera and UTC day of ``month``: hours recorded (kept + destroyed), first and last
    segment, when destroyed, and the requisitions of holds covering that day."""
    from csud.store.journal import SEGMENTS_DESTROYED

    start, end = _month(month)
    start_ns, end_ns = _ns(start), _ns(end)
    cameras = {c.id for c in settings.cameras if c.commune == commune}
    cameras |= {u.camera for u in index.usage() if u.commune == commune}
    destroyed = [
        e
        for e in index.journal_entries(kind=SEGMENTS_DESTROYED)
        if e.commune == commune and e.from_ns is not None and e.from_ns < end_ns and (e.to_ns or 0) > start_ns
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
                row = table.setdefault((camera, _day_key(seg.start_ns)), _Day())
                row.add(seg.end_ns - seg.start_ns, seg.start_ns, seg.end_ns)
    for e in destroyed:
        on = _day_key(e.time_ns)
        for day, d in e.details.get("days", {}).items():
            if start.strftime("%Y-%m") != day[:7]:
                continue
            row = table.setdefault((e.camera or "", day), _Day())
            row.add(int(d["ns"]), int(d["first_ns"]), int(d["last_ns"]))
            row.destroyed_on.add(on)
    for (camera, day), row in table.items():
        day_start = _ns(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC))
        day_end = day_start + 86_400 * NS_PER_SECOND
        for h in holds:
            if camera in h.cameras and h.from_ns < day_end and day_start < h.to_ns:
                row.held.add(h.requisition)
    out = []
    for (camera, day), row in sorted(table.items()):
        out.append(
            {
                "camera": camera,
                "day": day,
                "hours_recorded": round(row.ns / 3600 / NS_PER_SECOND, 2),
                "first_segment": _t(row.first_ns),
                "last_segment": _t(row.last_ns),
                "destroyed_on": ",".join(sorted(row.destroyed_on)),
                "held": ",".join(sorted(row.held)),
            }
        )
    return out


def cmd_registre(args: argparse.Namespace) -> int:
    _month(args.month)  # usage errors before touching the index
    settings, index = _open(args, readonly=True)
    try:
        rows = registre_rows(settings, index, args.commune, args.month)
    finally:
        index.close()
    columns = ["camera", "day", "hours_recorded", "first_segment", "last_segment", "destroyed_on", "held"]
    if args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    try:
        commune = settings.commune(args.commune)
        title = f"{commune.name} ({commune.id}), {commune.authorisation or 'no authorisation recorded'}, "
        title += f"retention {commune.retention_days} days"
    except KeyError:
        title = f"{args.commune} (no longer configured)"
    print(f"Registre des enregistrements — {title} — {args.month} (days in UTC)")
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
    return 0
