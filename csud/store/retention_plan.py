"""The retention plan: which segments must be destroyed now, and which a judicial hold keeps.

Pure: no I/O, no clock (``now_ns`` is an argument), no SQLite. The asyncio/SQLite shell
(:mod:`csud.store.retention`) fetches candidate rows, asks this module what to do and carries it out.

Rules (CSI art. L252-5, DESIGN.md "Retention"):

- The window in force for a camera is its ``retention_days`` when the camera sets a shorter one,
  else its commune's, else the legal maximum (a commune or camera that left the configuration
  still has footage, and the law still applies to it): :meth:`Policies.days`.
- Each segment row stores the window in force when it was written (``window_days``), and it is
  only ever shortened: a segment's window is the smaller of its stored window and the current
  configuration's (:func:`segment_days`). A camera removed from the configuration therefore keeps
  its own (shorter) window instead of falling back to its commune's; a lengthened window applies
  to footage recorded from then on only. A row without a stored window (recorded before schema
  version 5) takes the current configuration's at the first pass, which stores it.
- A segment is **due** when its *end* is at least one window old: ``end_ns <= now_ns - window_ns``
  (:func:`cutoff_ns`). One nanosecond earlier it is kept; the first pass at or after that instant
  destroys it.
- A hold **covers** a segment when it names the segment's camera, its interval overlaps the
  segment's (``hold.from_ns < seg.end_ns and seg.start_ns < hold.to_ns``), and it is **active**: not
  released, and ``now_ns < until_ns`` when it has an ``until``. A covered segment is never destroyed,
  neither by retention nor by disk pressure; once the hold ends, it is due at the next pass.
- A **quarantined** file (``<root>/quarantine/``: startup recovery could not publish it) has no
  row, only its name: it is due when the start its name encodes is at least the legal maximum old
  (:func:`quarantine_expired`), so that no footage outlives the law for being unreadable. Its end is
  unknown; a hold on its camera overlapping ``[start, start + QUARANTINE_SPAN_NS)`` keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from csud.store.layout import PARTIAL_SUFFIX, parse_segment_filename

NS_PER_SECOND = 1_000_000_000
SECONDS_PER_DAY = 86_400
NS_PER_DAY = SECONDS_PER_DAY * NS_PER_SECOND

REASON_RETENTION = "retention"
REASON_DISK_PRESSURE = "disk_pressure"
REASON_QUARANTINE_EXPIRED = "quarantine_expired"
# How long a quarantined file is assumed to last from its name's start, for hold coverage:
# segment_seconds is at most 3600 and a segment is cut at the first keyframe after its boundary.
QUARANTINE_SPAN_NS = 2 * 3600 * NS_PER_SECOND


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """What the plan needs to know of one indexed segment."""

    id: int
    camera: str
    commune: str
    start_ns: int
    end_ns: int
    bytes: int = 0
    path: str = ""
    window_days: int | None = None  # stored with the row (schema 5); None: recorded before


@dataclass(frozen=True, slots=True)
class Hold:
    """A judicial hold: protects ``[from_ns, to_ns)`` of ``cameras`` until released or ``until_ns``."""

    id: int
    cameras: frozenset[str]
    from_ns: int
    to_ns: int
    requisition: str = ""
    until_ns: int | None = None
    released_ns: int | None = None

    def active(self, now_ns: int) -> bool:
        """Released holds are inactive whatever ``now_ns`` is; ``until`` is exclusive."""
        return self.released_ns is None and (self.until_ns is None or now_ns < self.until_ns)

    def covers(self, seg: SegmentRef, now_ns: int) -> bool:
        return (
            seg.camera in self.cameras
            and self.from_ns < seg.end_ns
            and seg.start_ns < self.to_ns
            and self.active(now_ns)
        )


@dataclass(frozen=True, slots=True)
class Policies:
    """Retention windows in days: per commune, per camera override, and the legal maximum."""

    legal_max_days: int
    communes: Mapping[str, int] = field(default_factory=dict)
    cameras: Mapping[str, int] = field(default_factory=dict)  # only cameras that shorten it

    def days(self, camera: str, commune: str) -> int:
        """The window of ``camera``'s footage recorded for ``commune``; never above the legal max."""
        days = min(self.communes.get(commune, self.legal_max_days), self.legal_max_days)
        override = self.cameras.get(camera)
        return min(days, override) if override is not None else days


def window_days(commune_days: int, camera_days: int | None, legal_max_days: int | None = None) -> int:
    """The window in force for new footage of a camera: what a recorder stores with each row."""
    days = commune_days if legal_max_days is None else min(commune_days, legal_max_days)
    return min(days, camera_days) if camera_days is not None else days


def segment_days(seg: SegmentRef, policies: Policies) -> int:
    """A segment's window: its stored one, shortened by the configuration's if that is shorter."""
    days = policies.days(seg.camera, seg.commune)
    return days if seg.window_days is None else min(days, seg.window_days)


def cutoff_ns(days: int, now_ns: int) -> int:
    """Segments whose end is at or before this instant are due."""
    return now_ns - days * NS_PER_DAY


def is_due(seg: SegmentRef, policies: Policies, now_ns: int) -> bool:
    return seg.end_ns <= cutoff_ns(segment_days(seg, policies), now_ns)


def active_holds(holds: Iterable[Hold], now_ns: int) -> list[Hold]:
    return [h for h in holds if h.active(now_ns)]


def covering_holds(seg: SegmentRef, holds: Sequence[Hold], now_ns: int) -> list[Hold]:
    return [h for h in holds if h.covers(seg, now_ns)]


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """``due``: destroy now, oldest first. ``held``: past their window but kept, with the holds'
    ids. ``overdue``: per commune, due segments whose window passed more than ``grace_ns`` ago
    (a compliance failure if they survive this pass)."""

    now_ns: int
    due: tuple[SegmentRef, ...]
    held: tuple[tuple[SegmentRef, tuple[int, ...]], ...]
    overdue: Mapping[str, int]

    def by_camera(self) -> dict[tuple[str, str], list[SegmentRef]]:
        """Due segments grouped by (commune, camera), each group oldest first."""
        out: dict[tuple[str, str], list[SegmentRef]] = {}
        for seg in self.due:
            out.setdefault((seg.commune, seg.camera), []).append(seg)
        return out


def plan(
    segments: Iterable[SegmentRef],
    policies: Policies,
    holds: Iterable[Hold],
    now_ns: int,
    grace_ns: int = 0,
) -> RetentionPlan:
    """Decide, for every segment given, whether it is due, held, or kept (not listed)."""
    live = active_holds(holds, now_ns)
    due: list[SegmentRef] = []
    held: list[tuple[SegmentRef, tuple[int, ...]]] = []
    overdue: dict[str, int] = {}
    for seg in segments:
        cutoff = cutoff_ns(segment_days(seg, policies), now_ns)
        if seg.end_ns > cutoff:
            continue
        covering = covering_holds(seg, live, now_ns)
        if covering:
            held.append((seg, tuple(h.id for h in covering)))
            continue
        due.append(seg)
        if seg.end_ns <= cutoff - grace_ns:
            overdue[seg.commune] = overdue.get(seg.commune, 0) + 1
    due.sort(key=lambda s: (s.end_ns, s.id))
    return RetentionPlan(now_ns=now_ns, due=tuple(due), held=tuple(held), overdue=overdue)


def plan_disk_pressure(
    segments: Iterable[SegmentRef], holds: Iterable[Hold], bytes_to_free: int, now_ns: int
) -> list[SegmentRef]:
    """The oldest unheld segments, across cameras, whose sizes add up to at least ``bytes_to_free``
    (all unheld ones if they do not). Oldest = smallest end, then smallest id. Never a held one."""
    if bytes_to_free <= 0:
        return []
    live = active_holds(holds, now_ns)
    chosen: list[SegmentRef] = []
    freed = 0
    for seg in sorted(segments, key=lambda s: (s.end_ns, s.id)):
        if freed >= bytes_to_free:
            break
        if covering_holds(seg, live, now_ns):
            continue
        chosen.append(seg)
        freed += seg.bytes
    return chosen


def bytes_to_free(total: int, free: int, min_free_percent: float, hysteresis_percent: float) -> int:
    """How many bytes disk pressure must free: 0 while ``free`` is at or above the threshold, else
    enough to get back to threshold + hysteresis (so that it does not run again at the next GOP)."""
    if total <= 0 or min_free_percent <= 0 or free * 100 >= total * min_free_percent:
        return 0
    target = int(total * (min_free_percent + hysteresis_percent) / 100)
    return max(target - free, 0)


def quarantined_start_ns(name: str) -> int | None:
    """The start encoded in a quarantined file's name (``NAME.mp4``, ``NAME.mp4.partial``, either
    with the ``.1``, ``.2``... that avoid overwriting), or ``None`` if it is not one."""
    stem, dot, suffix = name.rpartition(".")
    if dot and suffix.isdigit():
        name = stem
    name = name.removesuffix(PARTIAL_SUFFIX)
    try:
        return parse_segment_filename(name)
    except ValueError:
        return None


def quarantine_expired(
    start_ns: int, camera: str | None, legal_max_days: int, holds: Iterable[Hold], now_ns: int
) -> bool:
    """A quarantined file starting at ``start_ns`` is destroyed once its start is at least
    ``legal_max_days`` old, unless an active hold on its camera overlaps it."""
    if start_ns > cutoff_ns(legal_max_days, now_ns):
        return False
    probe = SegmentRef(0, camera or "", "", start_ns, start_ns + QUARANTINE_SPAN_NS)
    return camera is None or not covering_holds(probe, active_holds(holds, now_ns), now_ns)
