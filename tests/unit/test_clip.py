"""The pure clip plan (csud/evidence/clip.py): table-driven, times in seconds from T0."""

from __future__ import annotations

import pytest

from csud.evidence.clip import (
    ClipPlanError,
    EmptyIntervalError,
    FragmentSpan,
    Gap,
    NoFootageError,
    SegmentSpan,
    plan_clip,
)

S = 1_000_000_000
T0 = 1_790_000_000 * S
FPS = 25
CLOCK = "overlapping recording after a clock step"


def seg(seg_id: int, start_s: float, end_s: float, gop_s: float = 1.0) -> SegmentSpan:
    """A segment of ``start_s``..``end_s`` with a keyframe every ``gop_s`` from its start."""
    start, end = T0 + round(start_s * S), T0 + round(end_s * S)
    step = round(gop_s * S)
    frags = []
    t, offset = start, 1000
    while t < end:
        frames = round(min(step, end - t) * FPS / S)
        frags.append(FragmentSpan(t, offset, frames))
        t += step
        offset += 50_000
    frames = sum(f.frames for f in frags)
    return SegmentSpan(seg_id, f"s{seg_id}.mp4", start, end, frames, offset, "00" * 32, tuple(frags))


def ns(s: float) -> int:
    return T0 + round(s * S)


# (name, segments, from_s, to_s, expected sources [(id, copy_from_s)], gaps [(from_s, to_s[, reason])],
# actual interval)
CASES = [
    ("inside one segment, from on a keyframe", [seg(1, 0, 10)], 3, 5, [(1, 3)], [], (3, 5)),
    ("inside one segment, from between keyframes", [seg(1, 0, 10)], 3.5, 5, [(1, 3)], [], (3, 5)),
    ("from just before a keyframe", [seg(1, 0, 10)], 3.96, 4.5, [(1, 3)], [], (3, 4.5)),
    ("across a boundary", [seg(1, 0, 10), seg(2, 10, 20)], 8.2, 12, [(1, 8), (2, 10)], [], (8, 12)),
    (
        "three segments",
        [seg(1, 0, 10), seg(2, 10, 20), seg(3, 20, 30)],
        9,
        21,
        [(1, 9), (2, 10), (3, 20)],
        [],
        (9, 21),
    ),
    (
        "order of rows does not matter",
        [seg(2, 10, 20), seg(1, 0, 10)],
        8.2,
        12,
        [(1, 8), (2, 10)],
        [],
        (8, 12),
    ),
    ("to on a boundary leaves the next out", [seg(1, 0, 10), seg(2, 10, 20)], 5, 10, [(1, 5)], [], (5, 10)),
    (
        "from on a boundary starts in the next",
        [seg(1, 0, 10), seg(2, 10, 20)],
        10,
        12,
        [(2, 10)],
        [],
        (10, 12),
    ),
    ("across a gap", [seg(1, 0, 10), seg(2, 13, 20)], 8, 15, [(1, 8), (2, 13)], [(10, 13)], (8, 15)),
    (
        "a hole of one frame is no gap",
        [seg(1, 0, 10), seg(2, 10.04, 20)],
        8,
        15,
        [(1, 8), (2, 10.04)],
        [],
        (8, 15),
    ),
    (
        "a hole of two frames is a gap",
        [seg(1, 0, 10), seg(2, 10.08, 20)],
        8,
        15,
        [(1, 8), (2, 10.08)],
        [(10, 10.08)],
        (8, 15),
    ),
    ("from before the recording", [seg(1, 5, 10)], 2, 7, [(1, 5)], [(2, 5)], (5, 7)),
    ("to after the recording", [seg(1, 0, 10)], 8, 15, [(1, 8)], [(10, 15)], (8, 10)),
    ("from inside a gap", [seg(1, 0, 10), seg(2, 15, 20)], 12, 17, [(2, 15)], [(12, 15)], (15, 17)),
    (
        "segments outside are ignored",
        [seg(0, -20, -10), seg(1, 0, 10), seg(9, 40, 50)],
        1,
        2,
        [(1, 1)],
        [],
        (1, 2),
    ),
    # After a clock step back, segment 2 overlaps segment 1: copy it from its first keyframe at or
    # after segment 1's end, so that time never goes back.
    (
        "overlap after a clock step",
        [seg(1, 0, 10), seg(2, 8.5, 20)],
        5,
        15,
        [(1, 5), (2, 10.5)],
        [(10, 10.5, CLOCK)],
        (5, 15),
    ),
    # Seen across a simulated camera reboot: the new segment starts 0.56 ms before the previous
    # one's end (the timeline's rounding). Less than a frame is no clock step: its first GOP is
    # recorded footage and must be copied, not skipped as a gap.
    (
        "overlap of less than a frame is contiguous",
        [seg(1, 0, 10), seg(2, 9.99944, 20)],
        5,
        15,
        [(1, 5), (2, 9.99944)],
        [],
        (5, 15),
    ),
    (
        "segment wholly covered by an overlap",
        [seg(1, 0, 10), seg(2, 2, 6), seg(3, 10, 20)],
        1,
        12,
        [(1, 1), (3, 10)],
        [],
        (1, 12),
    ),
    ("long GOPs", [seg(1, 0, 60, gop_s=4)], 30, 31, [(1, 28)], [], (28, 31)),
]


@pytest.mark.parametrize(
    ("segments", "from_s", "to_s", "sources", "gaps", "actual"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan(
    segments: list[SegmentSpan],
    from_s: float,
    to_s: float,
    sources: list[tuple[int, float]],
    gaps: list[tuple[float, ...]],
    actual: tuple[float, float],
) -> None:
    plan = plan_clip(segments, ns(from_s), ns(to_s))
    assert [(s.segment.id, s.copy_from_ns) for s in plan.sources] == [(i, ns(t)) for i, t in sources]
    assert list(plan.gaps) == [
        Gap(ns(g[0]), ns(g[1]), str(g[2]) if len(g) > 2 else "not recorded") for g in gaps
    ]
    assert (plan.actual_from_ns, plan.actual_to_ns) == (ns(actual[0]), ns(actual[1]))
    assert (plan.from_ns, plan.to_ns) == (ns(from_s), ns(to_s))
    # Invariants: sources by time, each copied from one of its keyframes, byte offset of that one.
    starts = [s.copy_from_ns for s in plan.sources]
    assert starts == sorted(starts)
    for source in plan.sources:
        (frag,) = [f for f in source.segment.fragments if f.start_ns == source.copy_from_ns]
        assert source.byte_offset == frag.byte_offset
    assert plan.total_bytes == sum(s.segment.bytes for s in plan.sources)


ERRORS = [
    ("reversed", [seg(1, 0, 10)], 5, 4, EmptyIntervalError, "empty or reversed"),
    ("empty", [seg(1, 0, 10)], 5, 5, EmptyIntervalError, "empty or reversed"),
    ("no segments", [], 1, 2, NoFootageError, "no footage"),
    ("all before", [seg(1, 0, 10)], 10, 12, NoFootageError, "no footage"),
    ("all after", [seg(1, 20, 30)], 10, 20, NoFootageError, "no footage"),
    ("in a gap", [seg(1, 0, 10), seg(2, 20, 30)], 12, 18, NoFootageError, "no footage"),
]


@pytest.mark.parametrize(
    ("segments", "from_s", "to_s", "error", "message"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_errors(
    segments: list[SegmentSpan], from_s: float, to_s: float, error: type[ClipPlanError], message: str
) -> None:
    with pytest.raises(error, match=message):
        plan_clip(segments, ns(from_s), ns(to_s))
    assert issubclass(error, ValueError)


def test_segment_without_fragments_is_not_footage() -> None:
    empty = SegmentSpan(1, "a.mp4", ns(0), ns(10), 0, 100, "00" * 32, ())
    with pytest.raises(NoFootageError):
        plan_clip([empty], ns(1), ns(2))
