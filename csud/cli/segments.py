"""``csud segments``: what is recorded, for one camera (every segment and gap), one commune or
every camera (``--commune``, ``--all``: one summary line per camera: coverage and gaps).

A camera no longer configured but with footage in the index is still listed; a camera or
commune that is neither configured nor indexed is a usage error (exit 2), never an empty list.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

from csud.cli.common import (
    EXIT_OK,
    TIME_HELP,
    WithConfig,
    format_time,
    open_index,
    parse_time,
    print_json,
    require_camera,
    site_zone,
)
from csud.errors import UsageError

if TYPE_CHECKING:
    from csud.config import Settings
    from csud.store.index import Index, SegmentRow

NS_PER_SECOND = 1_000_000_000
MIN_GAP_NS = 1_000_000  # below 1 ms, two segments are contiguous (timestamps are rounded)


def register(subparsers: Any, with_config: WithConfig) -> None:
    seg = with_config(
        subparsers.add_parser(
            "segments",
            help="list what is recorded: a camera's segments, or a coverage summary per camera",
            description="--camera: every segment and gap of one camera. --commune or --all: one "
            "line per camera (segments, hours, coverage of the interval, gaps, largest gap).",
        )
    )
    which = seg.add_mutually_exclusive_group(required=True)
    which.add_argument("--camera", metavar="ID", help="one camera: every segment and gap")
    which.add_argument("--commune", metavar="ID", help="every camera of a commune: coverage summary")
    which.add_argument("--all", action="store_true", help="every camera: coverage summary")
    seg.add_argument("--from", dest="from_", metavar="T", help=f"start of the interval; {TIME_HELP}")
    seg.add_argument("--to", metavar="T", help=f"end of the interval (excluded); {TIME_HELP}")
    seg.add_argument("--json", action="store_true", help="machine-readable output")
    seg.set_defaults(handler=cmd_segments)


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of ``[from_ns, to_ns)`` a camera's segments cover (pure summary of index rows)."""

    from_ns: int | None
    to_ns: int | None
    segments: int
    recorded_ns: int
    gaps: tuple[tuple[int, int], ...]  # [start, end) of each hole, edges of the interval included

    @property
    def span_ns(self) -> int:
        return 0 if self.from_ns is None or self.to_ns is None else self.to_ns - self.from_ns

    @property
    def percent(self) -> float:
        return 100.0 * self.recorded_ns / self.span_ns if self.span_ns > 0 else 0.0

    @property
    def largest_gap_ns(self) -> int:
        return max((end - start for start, end in self.gaps), default=0)


def coverage(rows: Sequence[SegmentRow], from_ns: int | None, to_ns: int | None) -> Coverage:
    """Rows sorted by start. Without ``from_ns``/``to_ns`` the interval is first start to last end."""
    if not rows:
        hole = ((from_ns, to_ns),) if from_ns is not None and to_ns is not None else ()
        return Coverage(from_ns, to_ns, 0, 0, hole)
    lo = rows[0].start_ns if from_ns is None else from_ns
    hi = max(r.end_ns for r in rows) if to_ns is None else to_ns
    recorded, cursor = 0, lo
    gaps: list[tuple[int, int]] = []
    for r in rows:
        start, end = max(r.start_ns, lo), min(r.end_ns, hi)
        if end <= cursor:
            continue
        if start - cursor >= MIN_GAP_NS:
            gaps.append((cursor, start))
        recorded += end - max(start, cursor)
        cursor = end
    if hi - cursor >= MIN_GAP_NS:
        gaps.append((cursor, hi))
    return Coverage(lo, hi, len(rows), recorded, tuple(gaps))


def _cameras(settings: Settings, index: Index, commune: str | None) -> list[tuple[str, str]]:
    """(camera, commune) to summarise: configured ones and those only in the index."""
    found = {(c.id, c.commune) for c in settings.cameras}
    found |= {(u.camera, u.commune) for u in index.usage()}
    if commune is None:
        return sorted(found, key=lambda x: (x[1], x[0]))
    if commune not in {c.id for c in settings.communes} and all(c != commune for _, c in found):
        raise UsageError(f"unknown commune {commune!r} (not configured and nothing recorded)")
    return sorted((cam, c) for cam, c in found if c == commune)


def _hours(ns: int) -> float:
    return round(ns / 3600 / NS_PER_SECOND, 3)


def _summary_json(camera: str, commune: str, cov: Coverage, tz: tzinfo) -> dict[str, Any]:
    def t(ns: int | None) -> str | None:
        return None if ns is None else format_time(ns, tz)

    return {
        "camera": camera,
        "commune": commune,
        "from": t(cov.from_ns),
        "to": t(cov.to_ns),
        "segments": cov.segments,
        "hours_recorded": _hours(cov.recorded_ns),
        "coverage_percent": round(cov.percent, 2),
        "gaps": len(cov.gaps),
        "largest_gap_seconds": round(cov.largest_gap_ns / NS_PER_SECOND, 3),
        "gap_list": [
            {"from": t(a), "to": t(b), "seconds": round((b - a) / NS_PER_SECOND, 3)} for a, b in cov.gaps
        ],
    }


def cmd_segments(args: argparse.Namespace) -> int:
    from csud.config import load_config

    settings = load_config(args.config).settings
    tz = site_zone(settings)
    from_ns = parse_time(args.from_) if args.from_ else None
    to_ns = parse_time(args.to) if args.to else None
    if from_ns is not None and to_ns is not None and to_ns <= from_ns:
        raise UsageError("--to must be after --from")
    if args.camera and settings.cluster is not None:  # every node's archive (csud.cli.cluster)
        from csud.cli.cluster import cmd_segments_cluster

        return cmd_segments_cluster(args, settings, from_ns, to_ns)
    index = open_index(settings, readonly=True)
    try:
        if args.camera:
            require_camera(settings, index, args.camera)
            return _one_camera(args, index.segments(args.camera, from_ns, to_ns), tz)
        summaries = []
        for camera, commune in _cameras(settings, index, args.commune):
            rows = [r for r in index.segments(camera, from_ns, to_ns) if r.commune == commune]
            summaries.append(_summary_json(camera, commune, coverage(rows, from_ns, to_ns), tz))
    finally:
        index.close()
    if args.json:
        print_json(summaries)
        return EXIT_OK
    if not summaries:
        print("no cameras")
    header = f"{'CAMERA':24s} {'COMMUNE':12s} {'SEGMENTS':>8s} {'HOURS':>9s} {'COVERAGE':>8s} {'GAPS':>5s}"
    print(header + f" {'LARGEST GAP':>11s}  FROM .. TO")
    for s in summaries:
        interval = f"{s['from']} .. {s['to']}" if s["from"] else "-"
        print(
            f"{s['camera']:24s} {s['commune']:12s} {s['segments']:8d} {s['hours_recorded']:9.2f} "
            f"{s['coverage_percent']:7.1f}% {s['gaps']:5d} {s['largest_gap_seconds']:10.1f}s  {interval}"
        )
    return EXIT_OK


def _one_camera(args: argparse.Namespace, rows: list[SegmentRow], tz: tzinfo) -> int:
    if args.json:
        print_json(
            [
                {
                    "camera": r.camera,
                    "commune": r.commune,
                    "start": format_time(r.start_ns, tz),
                    "end": format_time(r.end_ns, tz),
                    "start_ns": r.start_ns,
                    "end_ns": r.end_ns,
                    "path": r.path,
                    "bytes": r.bytes,
                    "frames": r.frames,
                    "sha256": r.sha256,
                }
                for r in rows
            ]
        )
        return EXIT_OK
    if not rows:
        print(f"no segments for camera {args.camera}")
        return EXIT_OK
    previous_end = None
    for r in rows:
        if previous_end is not None and r.start_ns - previous_end >= MIN_GAP_NS:
            print(f"  -- gap of {(r.start_ns - previous_end) / NS_PER_SECOND:.3f} s --")
        print(
            f"{format_time(r.start_ns, tz)}  {format_time(r.end_ns, tz)}  "
            f"{r.frames:6d} frames  {r.bytes:>11d} B  {r.path}"
        )
        previous_end = r.end_ns
    cov = coverage(rows, None, None)
    print(
        f"{len(rows)} segment(s), {_hours(cov.recorded_ns):.2f} h recorded, "
        f"{len(cov.gaps)} gap(s), largest {cov.largest_gap_ns / NS_PER_SECOND:.1f} s"
    )
    return EXIT_OK
