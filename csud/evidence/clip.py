"""Which recorded bytes make up a clip ``[from_ns, to_ns)`` of one camera: the pure clip plan.

Pure: no I/O, no clock, no PyAV. The index's rows of one camera (segments with their fragments,
one fragment per GOP, each starting on a keyframe) go in; a :class:`ClipPlan` comes out, which
:mod:`csud.evidence.extract` carries out by stream copy.

Invariants of a plan (tested, table-driven):

- ``sources`` are the segments overlapping ``[from_ns, to_ns)``, by start; each is copied from
  its ``copy_from_ns`` (a fragment start, i.e. a keyframe) up to, excluding, ``to_ns``.
- The first source starts at the last keyframe at or before ``from_ns`` when the recording covers
  ``from_ns``; otherwise at the first keyframe recorded after it. ``actual_from_ns`` is that
  keyframe, so ``actual_from_ns <= from_ns`` whenever ``from_ns`` was recorded.
- Segments of one camera may overlap after a clock step (docs/storage.md): a source never goes
  back in time; it is copied from its first keyframe at or after the previous source's end, and
  a segment entirely covered by the previous ones is left out. Output timestamps therefore only
  increase. An overlap shorter than one frame duration (the timeline's rounding when a camera
  restarts) is no clock step: that segment is copied whole, nothing of it reported as a gap.
- ``gaps`` are the parts of ``[from_ns, to_ns)`` with no recording longer than one frame
  duration (the frame duration of the segment before the hole, estimated as its length over its
  frame count): between non-contiguous segments, before the first one and after the last one.
  The reason is :data:`REASON_NOT_RECORDED` (the index does not say why yet), or
  :data:`REASON_CLOCK_STEP` for the part of an overlapping segment skipped up to its keyframe.
- A gap carries its ``cause`` where the caller knows one (``outages``: the daemon stopped, the
  camera down, its credentials refused): the causes of the outages overlapping it, else ``None``.
- With ``recording`` (the camera is being recorded now and its last indexed frame is recent), the
  part after the last indexed frame is no gap in the recording: it is the segment in progress,
  indexed when it closes. It is listed with reason :data:`REASON_NOT_YET_RECORDED`, never
  :data:`REASON_NOT_RECORDED`. (An interval ending after now is refused by the caller.)
- ``actual_to_ns`` is the end of the recording that ``to_ns`` cuts, at most ``to_ns``: the exact
  end of the last frame copied is only known from the packets, and the extractor reports that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

REASON_NOT_RECORDED = "not recorded"
# The tail of an interval after the last indexed frame of a camera being recorded now.
REASON_NOT_YET_RECORDED = "not yet recorded"
CAUSE_SEGMENT_IN_PROGRESS = "recording in progress: the open segment is indexed when it closes"
# Frames recorded twice over after the server clock stepped back: the later segment's frames up
# to its next keyframe cannot be copied without going back in time.
REASON_CLOCK_STEP = "overlapping recording after a clock step"


class ClipPlanError(ValueError):
    """The request cannot give a clip (the message says why, in one line)."""


class EmptyIntervalError(ClipPlanError):
    """``to_ns`` is not after ``from_ns``."""


class NoFootageError(ClipPlanError):
    """Nothing of the camera was recorded in the interval."""


@dataclass(frozen=True, slots=True)
class FragmentSpan:
    """One fragment (GOP) of a segment: its keyframe's time and its ``moof``'s byte offset."""

    start_ns: int
    byte_offset: int
    frames: int


@dataclass(frozen=True, slots=True)
class SegmentSpan:
    """One indexed segment, as the plan needs it. ``fragments`` by start; the first at ``start_ns``."""

    id: int
    path: str
    start_ns: int
    end_ns: int
    frames: int
    bytes: int
    sha256: str
    fragments: tuple[FragmentSpan, ...]

    @property
    def frame_ns(self) -> int:
        """Mean frame duration (at least 1 ns): the tolerance below which a hole is no gap."""
        return max((self.end_ns - self.start_ns) // max(self.frames, 1), 1)


@dataclass(frozen=True, slots=True)
class ClipSource:
    """Copy ``segment`` from the keyframe at ``copy_from_ns`` (``moof`` at ``byte_offset``)."""

    segment: SegmentSpan
    copy_from_ns: int
    byte_offset: int


@dataclass(frozen=True, slots=True)
class Gap:
    """No recording in ``[start_ns, end_ns)``, because of ``reason``; ``cause`` when known."""

    start_ns: int
    end_ns: int
    reason: str = REASON_NOT_RECORDED
    cause: str | None = None


@dataclass(frozen=True, slots=True)
class Outage:
    """A known reason for no recording over ``[start_ns, end_ns)`` (the daemon stopped, ...)."""

    start_ns: int
    end_ns: int
    cause: str


def _with_cause(gap: Gap, outages: Sequence[Outage]) -> Gap:
    causes = list(
        dict.fromkeys(o.cause for o in outages if o.start_ns < gap.end_ns and gap.start_ns < o.end_ns)
    )
    return Gap(gap.start_ns, gap.end_ns, gap.reason, "; ".join(causes) or None) if causes else gap


@dataclass(frozen=True, slots=True)
class ClipPlan:
    from_ns: int
    to_ns: int
    sources: tuple[ClipSource, ...]
    gaps: tuple[Gap, ...]
    actual_from_ns: int
    actual_to_ns: int

    @property
    def total_bytes(self) -> int:
        """Bytes of the source segments (all of them are re-hashed before use)."""
        return sum(s.segment.bytes for s in self.sources)


def _keyframe_at_or_before(segment: SegmentSpan, t_ns: int) -> FragmentSpan | None:
    best = None
    for fragment in segment.fragments:
        if fragment.start_ns <= t_ns:
            best = fragment
        else:
            break
    return best


def _keyframe_at_or_after(segment: SegmentSpan, t_ns: int) -> FragmentSpan | None:
    for fragment in segment.fragments:
        if fragment.start_ns >= t_ns:
            return fragment
    return None


def plan_clip(
    segments: Sequence[SegmentSpan],
    from_ns: int,
    to_ns: int,
    *,
    recording: bool = False,
    outages: Sequence[Outage] = (),
) -> ClipPlan:
    """The plan for ``[from_ns, to_ns)`` over one camera's ``segments`` (any order, any extent);
    ``recording`` and ``outages`` as in the module doc."""
    if to_ns <= from_ns:
        raise EmptyIntervalError("the interval is empty or reversed (--to must be after --from)")
    overlapping = sorted(
        (s for s in segments if s.start_ns < to_ns and s.end_ns > from_ns and s.fragments),
        key=lambda s: (s.start_ns, s.id),
    )
    sources: list[ClipSource] = []
    gaps: list[Gap] = []
    covered_to_ns = from_ns  # recording is known (or reported missing) up to here
    previous: SegmentSpan | None = None
    for segment in overlapping:
        key: FragmentSpan | None
        reason = REASON_NOT_RECORDED
        if not sources:
            key = _keyframe_at_or_before(segment, from_ns) or segment.fragments[0]
            if key.start_ns >= to_ns:
                continue
        else:
            # An overlap shorter than a frame is the timeline's rounding across a restart, not a
            # clock step: the segment's first GOP is copied (the extractor keeps dts increasing).
            if covered_to_ns - segment.start_ns >= (previous or segment).frame_ns:
                key = _keyframe_at_or_after(segment, covered_to_ns)
                reason = REASON_CLOCK_STEP
            else:
                key = segment.fragments[0]
            if key is None or key.start_ns >= to_ns:
                continue  # wholly covered by what is already planned (overlap after a clock step)
        tolerance_ns = (previous or segment).frame_ns
        if key.start_ns - covered_to_ns > tolerance_ns:
            gaps.append(Gap(covered_to_ns, key.start_ns, reason))
        sources.append(ClipSource(segment, key.start_ns, key.byte_offset))
        covered_to_ns = max(covered_to_ns, min(segment.end_ns, to_ns))
        previous = segment
    if not sources:
        if recording:
            raise NoFootageError(f"nothing indexed in the interval yet ({CAUSE_SEGMENT_IN_PROGRESS})")
        raise NoFootageError("no footage recorded in the interval")
    assert previous is not None
    if to_ns - covered_to_ns > previous.frame_ns:
        if recording:
            gaps.append(Gap(covered_to_ns, to_ns, REASON_NOT_YET_RECORDED, CAUSE_SEGMENT_IN_PROGRESS))
        else:
            gaps.append(Gap(covered_to_ns, to_ns))
    gaps = [_with_cause(g, outages) if g.reason == REASON_NOT_RECORDED else g for g in gaps]
    return ClipPlan(
        from_ns=from_ns,
        to_ns=to_ns,
        sources=tuple(sources),
        gaps=tuple(gaps),
        actual_from_ns=sources[0].copy_from_ns,
        actual_to_ns=covered_to_ns,
    )


def _avcc_parameter_sets(extradata: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]] | None:
    """(SPS, PPS) of an H.264 ``avcC`` record (ISO 14496-15), or ``None`` if it is not one."""
    try:
        if len(extradata) < 7 or extradata[0] != 1:
            return None
        pos, lists = 5, []
        for mask in (0x1F, 0xFF):
            count = extradata[pos] & mask
            pos += 1
            items = []
            for _ in range(count):
                size = int.from_bytes(extradata[pos : pos + 2], "big")
                items.append(bytes(extradata[pos + 2 : pos + 2 + size]))
                pos += 2 + size
            lists.append(tuple(items))
        return lists[0], lists[1]
    except IndexError:
        return None


def describe_change(old: tuple[str, int, int, bytes], new: tuple[str, int, int, bytes]) -> str:
    """What differs between two stream configurations (codec, width, height, extradata), in
    words a supervisor can check: ``codec h264 -> hevc``, ``resolution 1280x720 -> 1920x1080``,
    ``SPS changed``, ``PPS changed``, ``SPS and PPS changed``, else ``parameter sets changed``."""
    changes = []
    if old[0] != new[0]:
        changes.append(f"codec {old[0]} -> {new[0]}")
    if old[1:3] != new[1:3]:
        changes.append(f"resolution {old[1]}x{old[2]} -> {new[1]}x{new[2]}")
    if old[3] != new[3] and old[0] == new[0]:
        a, b = _avcc_parameter_sets(old[3]), _avcc_parameter_sets(new[3])
        if old[0] == "h264" and a is not None and b is not None:
            names = [n for n, i in (("SPS", 0), ("PPS", 1)) if a[i] != b[i]]
            changes.append(f"{' and '.join(names)} changed" if names else "parameter sets changed")
        else:
            changes.append("parameter sets changed")
    return ", ".join(changes) or "stream configuration changed"
