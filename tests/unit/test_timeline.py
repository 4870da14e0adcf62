"""Timeline: RTP timestamps (32-bit, 90 kHz) onto the server clock. Pure, no event loop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csud.recording.timeline import RTP_TIMESTAMP_MODULO, Timeline

T0_NS = 1_790_000_000_123_456_789  # some instant in 2026
FRAME_TICKS = 3600  # 25 fps at 90 kHz
FRAME_NS = 40_000_000


def test_first_call_anchors_without_discontinuity() -> None:
    tl = Timeline()
    assert tl.map(12345, T0_NS) == (T0_NS, False)
    assert tl.drift_ns == 0


def test_frames_advance_by_exact_ticks() -> None:
    tl = Timeline()
    tl.map(1000, T0_NS)
    assert tl.map(1000 + FRAME_TICKS, T0_NS + FRAME_NS + 5_000_000) == (T0_NS + FRAME_NS, False)
    assert tl.drift_ns == -5_000_000


def test_equal_timestamp_is_not_a_discontinuity() -> None:
    tl = Timeline()
    tl.map(1000, T0_NS)
    assert tl.map(1000, T0_NS + 1_000_000) == (T0_NS, False)


def test_wrap_at_2_32_is_continuous() -> None:
    tl = Timeline()
    start = RTP_TIMESTAMP_MODULO - 2 * FRAME_TICKS
    now = T0_NS
    tl.map(start, now)
    for i in range(1, 6):
        ts = (start + i * FRAME_TICKS) % RTP_TIMESTAMP_MODULO
        pts, disc = tl.map(ts, now + i * FRAME_NS)
        assert (pts, disc) == (T0_NS + i * FRAME_NS, False)


def test_hours_at_90khz_are_exact() -> None:
    """Ten hours of 25 fps frames: several 32-bit wraps (every ~13 h 15 min at 90 kHz is one;
    start near the top to cross one), never a rounding drift: pts == anchor + n * 40 ms exactly."""
    tl = Timeline(max_drift_seconds=1.0)
    start = RTP_TIMESTAMP_MODULO - 1000
    tl.map(start, T0_NS)
    frames = 10 * 3600 * 25
    for n in range(1, frames + 1, 199):  # 8 s steps (< max jump); the exact last frame below
        pts, disc = tl.map((start + n * FRAME_TICKS) % RTP_TIMESTAMP_MODULO, T0_NS + n * FRAME_NS)
        assert not disc
        assert pts == T0_NS + n * FRAME_NS
    pts, disc = tl.map((start + frames * FRAME_TICKS) % RTP_TIMESTAMP_MODULO, T0_NS + frames * FRAME_NS)
    assert (pts, disc) == (T0_NS + frames * FRAME_NS, False)


def test_non_integer_ns_ticks_round_from_the_anchor() -> None:
    # 1 tick = 11111.1 ns: each pts is rounded once from the anchor, never accumulated.
    tl = Timeline()
    tl.map(0, T0_NS)
    assert tl.map(1, T0_NS)[0] == T0_NS + 11111
    assert tl.map(5, T0_NS)[0] == T0_NS + 55556
    assert tl.map(9, T0_NS)[0] == T0_NS + 100000


@pytest.mark.parametrize(
    ("step_ticks", "discontinuity", "reason"),
    [
        (-1, True, "reorder"),
        (-FRAME_TICKS, True, "reorder"),  # what a B-frame looks like in decode order
        (-90000, True, "reorder"),
        (-90001, True, "backwards"),
        (10 * 90000, False, None),  # exactly max_jump: allowed (and within drift, see now below)
        (10 * 90000 + 1, True, "jump"),
    ],
)
def test_steps(step_ticks: int, discontinuity: bool, reason: str | None) -> None:
    tl = Timeline(max_drift_seconds=20.0)
    base = 5_000_000
    tl.map(base, T0_NS)
    now = T0_NS + 123
    pts, disc = tl.map((base + step_ticks) % RTP_TIMESTAMP_MODULO, now)
    assert disc is discontinuity
    assert tl.last_reason == reason
    if discontinuity:
        assert pts == now  # re-anchored on the server clock
        assert tl.discontinuities == 1


def test_backwards_across_the_wrap_is_detected() -> None:
    tl = Timeline()
    tl.map(100, T0_NS)
    pts, disc = tl.map(RTP_TIMESTAMP_MODULO - 100, T0_NS + FRAME_NS)
    assert (pts, disc) == (T0_NS + FRAME_NS, True)
    assert tl.last_reason == "reorder"  # 200 ticks back, across the wrap


def test_drift_beyond_limit_reanchors() -> None:
    tl = Timeline(max_drift_seconds=2.0)
    tl.map(0, T0_NS)
    # Camera clock runs fast: 1 s of RTP time arrives after 0.5 s of server time, repeatedly.
    ts, now = 0, T0_NS
    results = []
    for _ in range(6):
        ts += 90000
        now += 500_000_000
        results.append(tl.map(ts, now))
    drifts = [
        pts - n
        for (pts, _), n in zip(results, [T0_NS + (i + 1) * 500_000_000 for i in range(6)], strict=True)
    ]
    assert [d for _, d in results] == [False, False, False, False, True, False]
    assert drifts[:4] == [500_000_000, 1_000_000_000, 1_500_000_000, 2_000_000_000]
    assert drifts[4] == 0  # re-anchored
    assert tl.last_reason is None and tl.drift_ns == 500_000_000


def test_drift_slow_camera() -> None:
    tl = Timeline(max_drift_seconds=2.0)
    tl.map(0, T0_NS)
    pts, disc = tl.map(90000, T0_NS + 3_500_000_000)  # 1 s of RTP after 3.5 s: 2.5 s behind
    assert (pts, disc) == (T0_NS + 3_500_000_000, True)
    assert tl.last_reason == "drift"


def test_reset_reanchors_with_discontinuity() -> None:
    tl = Timeline()
    tl.map(1000, T0_NS)
    tl.reset()
    pts, disc = tl.map(777, T0_NS + FRAME_NS)  # a rebooted camera: new random origin
    assert (pts, disc) == (T0_NS + FRAME_NS, True)
    assert tl.last_reason == "reset"
    assert tl.map(777 + FRAME_TICKS, T0_NS + 2 * FRAME_NS) == (T0_NS + 2 * FRAME_NS, False)


def test_reset_before_any_anchor_is_not_a_discontinuity() -> None:
    tl = Timeline()
    tl.reset()
    assert tl.map(5, T0_NS) == (T0_NS, False)


def test_rejects_out_of_range_timestamps() -> None:
    tl = Timeline()
    with pytest.raises(ValueError, match="32-bit"):
        tl.map(RTP_TIMESTAMP_MODULO, T0_NS)
    with pytest.raises(ValueError, match="32-bit"):
        tl.map(-1, T0_NS)


@given(
    origin=st.integers(0, RTP_TIMESTAMP_MODULO - 1),
    steps=st.lists(st.integers(0, 2 * FRAME_TICKS), min_size=1, max_size=200),
)
def test_continuous_stream_never_reports_discontinuity(origin: int, steps: list[int]) -> None:
    """Forward steps within limits, server clock following exactly: pts is monotonic and exact."""
    tl = Timeline()
    tl.map(origin, T0_NS)
    total = 0
    last_pts = T0_NS
    for step in steps:
        total += step
        now = T0_NS + total * 100_000 // 9
        pts, disc = tl.map((origin + total) % RTP_TIMESTAMP_MODULO, now)
        assert not disc
        assert pts >= last_pts
        assert abs(pts - now) <= 1
        last_pts = pts
