"""Timeline: RTP timestamps (32-bit, 90 kHz) onto the server clock, slewed on the arrivals' lower
envelope. Pure, no event loop."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csud.recording.timeline import RTP_TIMESTAMP_MODULO, Timeline

T0_NS = 1_790_000_000_123_456_789  # some instant in 2026
FRAME_TICKS = 3600  # 25 fps at 90 kHz
FRAME_NS = 40_000_000
FPS = 25
NET_NS = 10_000_000  # the network's minimum delay in the simulations


def simulate(
    tl: Timeline,
    frames: int,
    *,
    ppm: float = 0.0,
    jitter_ns: int = 0,
    gop: int = FPS,
    held: frozenset[int] = frozenset(),
    hold_until: dict[int, int] | None = None,
    seed: int = 0,
    origin: int = 123_456,
) -> list[tuple[int, int, bool]]:
    """Frames captured at true times T0 + n/25 s by a camera whose clock runs ``ppm`` fast;
    each arrives after NET_NS plus uniform jitter, or at ``hold_until[second]`` when its second
    is in ``held`` (the network held the bytes, then released them in one burst).
    Returns ``(true_ns, pts_ns, discontinuity)`` per frame."""
    rng = random.Random(seed)
    out = []
    for n in range(frames):
        true_ns = T0_NS + n * FRAME_NS
        ts = (origin + round(n * FRAME_TICKS * (1 + ppm / 1e6))) % RTP_TIMESTAMP_MODULO
        arrival = true_ns + NET_NS + (rng.randrange(jitter_ns) if jitter_ns else 0)
        second = n // FPS
        if second in held and hold_until is not None:
            arrival = max(arrival, hold_until[second])
        pts, disc = tl.map(ts, arrival, keyframe=n % gop == 0)
        out.append((true_ns, pts, disc))
    return out


def test_first_call_anchors_without_discontinuity() -> None:
    tl = Timeline()
    assert tl.map(12345, T0_NS) == (T0_NS, False)
    assert tl.error_ns == 0


def test_frames_advance_by_exact_ticks_not_by_arrival() -> None:
    tl = Timeline()
    tl.map(1000, T0_NS)
    assert tl.map(1000 + FRAME_TICKS, T0_NS + FRAME_NS + 5_000_000) == (T0_NS + FRAME_NS, False)
    # A frame held 2.9 s by the network keeps its RTP time.
    assert tl.map(1000 + 2 * FRAME_TICKS, T0_NS + 2_900_000_000, keyframe=True) == (
        T0_NS + 2 * FRAME_NS,
        False,
    )


def test_equal_timestamp_is_not_a_discontinuity() -> None:
    tl = Timeline()
    tl.map(1000, T0_NS)
    assert tl.map(1000, T0_NS + 1_000_000) == (T0_NS, False)


def test_wrap_at_2_32_is_continuous() -> None:
    tl = Timeline()
    start = RTP_TIMESTAMP_MODULO - 2 * FRAME_TICKS
    tl.map(start, T0_NS)
    for i in range(1, 6):
        ts = (start + i * FRAME_TICKS) % RTP_TIMESTAMP_MODULO
        assert tl.map(ts, T0_NS + i * FRAME_NS) == (T0_NS + i * FRAME_NS, False)


def test_non_integer_ns_ticks_round_from_the_anchor() -> None:
    # 1 tick = 11111.1 ns: each pts is rounded once from the anchor, never accumulated.
    tl = Timeline()
    tl.map(0, T0_NS)
    assert tl.map(1, T0_NS)[0] == T0_NS + 11111
    assert tl.map(5, T0_NS)[0] == T0_NS + 55556
    assert tl.map(9, T0_NS)[0] == T0_NS + 100000


def test_exact_clock_hours_are_exact() -> None:
    """An hour of frames from a perfect clock with a constant delay: pts == anchor + n * 40 ms."""
    tl = Timeline()
    for true_ns, pts, disc in simulate(tl, 3600 * FPS, origin=RTP_TIMESTAMP_MODULO - 1000):
        assert not disc
        assert pts == true_ns + NET_NS
    assert tl.rate_ppm == 0


def test_b_frames_step_back_without_discontinuity() -> None:
    """Decode order I0 P3 B1 B2 P6 B4 B5: timestamps step back, pts follow the RTP clock."""
    tl = Timeline()
    order = [0, 3, 1, 2, 6, 4, 5, 9, 7, 8]
    for i, n in enumerate(order):
        pts, disc = tl.map(1000 + n * FRAME_TICKS, T0_NS + i * FRAME_NS, keyframe=i == 0)
        assert (pts, disc) == (T0_NS + n * FRAME_NS, False)


@pytest.mark.parametrize(
    ("step_ticks", "arrival_ns", "reason"),
    [
        (-90001, FRAME_NS, "backwards"),  # beyond the reorder allowance: a restarted source
        (-10 * 90000, FRAME_NS, "backwards"),
        (2 * 90000, FRAME_NS, "jump"),  # 2 s of RTP in 40 ms of arrivals
        (90000 // 2 + FRAME_TICKS + 1, FRAME_NS, "jump"),  # just over the 0.5 s bound
    ],
)
def test_clock_steps_wait_for_the_keyframe(step_ticks: int, arrival_ns: int, reason: str) -> None:
    """A step of the RTP clock mid-GOP: the GOP continues one nominal frame on, the next keyframe
    re-anchors on its arrival and reports the discontinuity."""
    tl = Timeline()
    tl.map(5_000_000, T0_NS)
    tl.map(5_000_000 + FRAME_TICKS, T0_NS + FRAME_NS, keyframe=False)
    ts = (5_000_000 + FRAME_TICKS + step_ticks) % RTP_TIMESTAMP_MODULO
    now = T0_NS + FRAME_NS + arrival_ns
    assert tl.map(ts, now, keyframe=False) == (T0_NS + 2 * FRAME_NS, False)
    assert tl.pending == reason
    assert tl.map(ts + FRAME_TICKS, now + FRAME_NS, keyframe=False) == (T0_NS + 3 * FRAME_NS, False)
    assert tl.map(ts + 2 * FRAME_TICKS, now + 2 * FRAME_NS, keyframe=True) == (now + 2 * FRAME_NS, True)
    assert tl.last_reason == reason and tl.discontinuities == 1 and tl.pending is None


def test_clock_step_at_a_keyframe_reanchors_at_once() -> None:
    tl = Timeline()
    tl.map(5_000_000, T0_NS)
    assert tl.map(1000, T0_NS + FRAME_NS, keyframe=True) == (T0_NS + FRAME_NS, True)
    assert tl.last_reason == "backwards"


def test_pause_of_the_stream_is_not_a_jump() -> None:
    """A camera that sends nothing for 8 s: RTP and arrivals advance together."""
    tl = Timeline()
    tl.map(0, T0_NS)
    assert tl.map(8 * 90000, T0_NS + 8 * 1_000_000_000, keyframe=False) == (T0_NS + 8_000_000_000, False)


def test_reset_reanchors_with_discontinuity() -> None:
    tl = Timeline()
    tl.map(1000, T0_NS)
    tl.reset()
    assert tl.map(777, T0_NS + FRAME_NS, keyframe=False) == (T0_NS + FRAME_NS, True)
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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clock_rate": 0}, "clock_rate"),
        ({"max_slew_ppm": -1}, "max_slew_ppm"),
        ({"max_error_seconds": 0}, "positive"),
        ({"max_late_seconds": 0.1}, "max_late_seconds"),
    ],
)
def test_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Timeline(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("ppm", [500.0, -500.0, 900.0])
def test_fast_or_slow_clock_is_followed_for_hours_without_a_step(ppm: float) -> None:
    """A camera clock 500 ppm off drifts 1.8 s an hour: the old timeline re-anchored every ~67
    minutes. The slewed mapping follows it: no discontinuity, error within 30 ms after the
    first minutes, drift estimated."""
    tl = Timeline()
    results = simulate(tl, 3 * 3600 * FPS, ppm=ppm, jitter_ns=20_000_000)
    assert not any(d for _, _, d in results)
    settled = results[5 * 60 * FPS :]
    assert max(abs(pts - (true + NET_NS)) for true, pts, _ in settled) < 30_000_000
    assert abs(tl.drift_ppm - ppm) < 20
    assert tl.jitter_ns > 1_000_000


def test_drift_beyond_the_slew_steps_at_keyframes_within_the_bound() -> None:
    """A clock 5000 ppm fast cannot be followed at 1000 ppm: the error grows to the bound, then a
    discontinuity at a keyframe steps it back; every frame stays within bound + one GOP's drift."""
    tl = Timeline()
    results = simulate(tl, 600 * FPS, ppm=5000)
    steps = [i for i, (_, _, d) in enumerate(results) if d]
    assert steps and all(i % FPS == 0 for i in steps)
    gop_excess_ns = 1_000_000_000 * (5000 - 1000) // 1_000_000
    assert max(abs(pts - (t + NET_NS)) for t, pts, _ in results) <= tl.max_error_ns + gop_excess_ns
    assert tl.drift_ppm == pytest.approx(1000, rel=0.01)  # saturated at the bound


def test_slow_clock_beyond_the_slew_steps_only_past_the_lateness_bound() -> None:
    """A clock 5000 ppm slow: frames look later and later, which could be delay; the timeline
    steps (at a keyframe) only once they are later than max_late_seconds."""
    tl = Timeline()
    results = simulate(tl, 1800 * FPS, ppm=-5000)
    steps = [i for i, (_, _, d) in enumerate(results) if d]
    assert steps and all(i % FPS == 0 for i in steps)
    assert all(
        abs(tl.max_late_ns - (results[i - 1][0] + NET_NS - results[i - 1][1])) < 300_000_000 for i in steps
    )
    assert max(t + NET_NS - pts for t, pts, _ in results) <= tl.max_late_ns + 100_000_000


def test_every_frame_delayed_for_a_minute_is_delay_not_time() -> None:
    """The host is saturated for a minute: every frame reaches the timeline 2 s late (then the
    backlog arrives at once). That is within max_late_seconds: no step, the times stay on the
    camera's clock, within what the slew (1000 ppm) can follow in a minute."""
    tl = Timeline()
    results = []
    last = 0
    for n in range(180 * FPS):
        true_ns = T0_NS + n * FRAME_NS
        arrival = last = max(last, true_ns + NET_NS + (2_000_000_000 if 60 <= n // FPS < 120 else 0))
        results.append((true_ns, *tl.map(123 + n * FRAME_TICKS, arrival, keyframe=n % FPS == 0)))
    assert tl.discontinuities == 0
    assert max(abs(pts - (t + NET_NS)) for t, pts, _ in results) < 70_000_000


def test_bursts_never_move_time_nor_start_a_segment() -> None:
    """The network holds the bytes 3 s, then delivers them in one burst, every 20 s for 10
    minutes: every frame's pts is its capture time plus the network's minimum delay, exactly."""
    held = frozenset(s for s in range(600) if s % 20 in (10, 11, 12))
    until = {s: T0_NS + (s - s % 20 + 13) * 1_000_000_000 + NET_NS for s in held}
    tl = Timeline()
    results = simulate(tl, 600 * FPS, held=held, hold_until=until)
    assert all(pts == true + NET_NS and not d for true, pts, d in results)
    assert tl.discontinuities == 0


def test_late_first_frames_are_corrected_by_one_step() -> None:
    """The first second arrives as one burst 1 s late (a camera's pre-buffer): pts are 1 s
    ahead of what the least-delayed frames show, beyond the bound: one step, at a keyframe."""
    tl = Timeline()
    results = simulate(tl, 60 * FPS, held=frozenset({0}), hold_until={0: T0_NS + 1_000_000_000 + NET_NS})
    steps = [i for i, (_, _, d) in enumerate(results) if d]
    assert len(steps) == 1 and steps[0] % FPS == 0
    true, pts, _ = results[-1]
    assert abs(pts - (true + NET_NS)) < 5_000_000


@settings(max_examples=30, deadline=None)
@given(
    ppm=st.floats(-800, 800),
    jitter_ms=st.integers(0, 200),
    bursts=st.sets(st.integers(5, 290), max_size=20),
    seed=st.integers(0, 1000),
)
def test_property_within_bound_monotonic_and_no_discontinuity(
    ppm: float, jitter_ms: int, bursts: set[int], seed: int
) -> None:
    """Any clock within the slew, any jitter, 3 s bursts anywhere: never a discontinuity, pts
    strictly increasing, every pts within the documented bound of the true time."""
    held = frozenset(s for b in bursts for s in (b, b + 1, b + 2))
    until = {s: T0_NS + (b + 3) * 1_000_000_000 + NET_NS for b in sorted(bursts) for s in (b, b + 1, b + 2)}
    tl = Timeline()
    results = simulate(
        tl, 300 * FPS, ppm=ppm, jitter_ns=jitter_ms * 1_000_000 + 1, held=held, hold_until=until, seed=seed
    )
    assert not any(d for _, _, d in results)
    assert all(b[1] > a[1] for a, b in itertools.pairwise(results))
    assert max(abs(pts - (t + NET_NS)) for t, pts, _ in results) <= tl.max_error_ns


@given(
    origin=st.integers(0, RTP_TIMESTAMP_MODULO - 1),
    steps=st.lists(st.integers(0, 2 * FRAME_TICKS), min_size=1, max_size=200),
)
def test_continuous_stream_never_reports_discontinuity(origin: int, steps: list[int]) -> None:
    """Forward steps, server clock following exactly: pts is monotonic and exact."""
    tl = Timeline()
    tl.map(origin, T0_NS)
    total = 0
    last_pts = T0_NS
    for step in steps:
        total += step
        now = T0_NS + total * 100_000 // 9
        pts, disc = tl.map((origin + total) % RTP_TIMESTAMP_MODULO, now, keyframe=False)
        assert not disc
        assert pts >= last_pts
        assert abs(pts - now) <= 1
        last_pts = pts
