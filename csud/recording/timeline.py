"""RTP timestamps mapped onto the server's clock: a slewed mapping anchored on the least-delayed frames.

Pure: no I/O and no clock reads; ``now_ns`` (the server's UTC clock, NTP-disciplined, the only
trusted time) is the arrival time of the access unit, passed in by the caller.

A camera's RTP clock is a 32-bit counter at ``clock_rate`` Hz with a random origin. The timeline
unwraps it into an extended counter and maps it onto the server's clock through a piecewise
linear, continuous function::

    pts_ns = base_ns + ticks_to_ns(ext - base_ext) * (1 + rate_ppb / 10⁹)

A frame's time comes from its RTP timestamp, never from its arrival: arrivals only *steer* the
mapping. The error of the mapping is measured on the lower envelope of ``arrival - pts`` (the
least-delayed frames: network delay only ever adds), per window of ``window_seconds`` of
arrivals; a PI controller turns that error into a rate correction ``rate_ppb``, clamped to
``±max_slew_ppm``. The rate changes only at the newest timestamp seen, so the mapping stays
continuous and monotonic: a recorded GOP never has a time step inside it.

Invariants (tested, including over random streams):

- Between two discontinuities pts is a monotonic function of the RTP timestamp (B-frames, whose
  timestamps step back by less than ``max_reorder_seconds`` in decode order, get earlier pts, as
  they should); successive frames differ by their RTP tick delta times a rate within
  ``±max_slew_ppm`` of nominal. With ``rate_ppb == 0`` the mapping is exact integer arithmetic.
- Jitter and bursts do not move a frame's time: a late frame only raises ``arrival - pts`` above
  the envelope, and the envelope is ``min(latest window, median of the last windows)``, so a burst
  shorter than ``window_seconds`` is invisible to the controller and never a discontinuity.
- ``discontinuity=True`` is returned only on a keyframe (or on the first frame after ``reset()``):
  a discontinuity found on another frame is *pending* and the frames up to the next keyframe keep
  continuous timestamps (the old mapping, or, after a step of the RTP clock itself, the nominal
  frame interval from the last good frame). Nothing is dropped for time's sake.
- Discontinuities: ``reset`` (new SSRC), ``backwards`` (a step back beyond the reorder allowance),
  ``jump`` (the RTP clock leapt ahead of the arrivals by more than ``max_error_seconds``),
  ``drift``: a frame arrives before its mapped time by more than ``max_error_seconds`` (no
  network can cause that: the mapping is ahead, e.g. a camera clock faster than the slew), or
  the envelope shows every frame later than its time by more than ``max_late_seconds`` (a
  camera clock slower than the slew; a smaller lateness is delay, added by a saturated network
  or host, which must not become time).
- Outside pending periods, ``-max_error_seconds <= envelope error <= max_late_seconds``, and the
  controller steers it to 0: that is the bound on a recorded timestamp (docs/time.md).

What is deliberately left out: the camera's wall clock (RTCP sender reports are exported by the
recorder via :meth:`Timeline.project`, never trusted here).
"""

from __future__ import annotations

from collections import deque

NS_PER_SECOND = 1_000_000_000
PPB = 1_000_000_000
RTP_TIMESTAMP_BITS = 32
RTP_TIMESTAMP_MODULO = 1 << RTP_TIMESTAMP_BITS
RTP_TIMESTAMP_HALF = RTP_TIMESTAMP_MODULO >> 1

DEFAULT_MAX_SLEW_PPM = 1000  # follows cameras up to ±1000 ppm (crystals: ±100 ppm, bad ones ±500)
DEFAULT_MAX_ERROR_SECONDS = 0.5
DEFAULT_MAX_LATE_SECONDS = 5.0
DEFAULT_MAX_REORDER_SECONDS = 1.0  # B-frames: decode order steps back by a few frames at most
DEFAULT_WINDOW_SECONDS = 5.0
DEFAULT_CORRECTION_SECONDS = 60.0  # an envelope error is worked off over about this long
ENVELOPE_WINDOWS = 3
JITTER_GAIN = 16  # RFC 3550 §6.4.1 interarrival jitter: J += (|D| - J) / 16

REASON_RESET = "reset"
REASON_BACKWARDS = "backwards"
REASON_JUMP = "jump"
REASON_DRIFT = "drift"
HARD_REASONS = frozenset({REASON_RESET, REASON_BACKWARDS, REASON_JUMP})


class Timeline:
    """Maps one RTP stream's timestamps to UTC nanoseconds on the server's clock. See the module doc."""

    def __init__(
        self,
        clock_rate: int = 90000,
        *,
        max_slew_ppm: int = DEFAULT_MAX_SLEW_PPM,
        max_error_seconds: float = DEFAULT_MAX_ERROR_SECONDS,
        max_late_seconds: float = DEFAULT_MAX_LATE_SECONDS,
        max_reorder_seconds: float = DEFAULT_MAX_REORDER_SECONDS,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        correction_seconds: float = DEFAULT_CORRECTION_SECONDS,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        if not 0 <= max_slew_ppm < 100_000:
            raise ValueError(f"max_slew_ppm must be in [0, 100000), got {max_slew_ppm}")
        if min(max_error_seconds, max_reorder_seconds, window_seconds, correction_seconds) <= 0:
            raise ValueError("max_error, max_reorder, window and correction seconds must be positive")
        if max_late_seconds < max_error_seconds:
            raise ValueError("max_late_seconds must be at least max_error_seconds")
        self.clock_rate = clock_rate
        self.max_slew_ppb = max_slew_ppm * 1000
        self.max_error_ns = round(max_error_seconds * NS_PER_SECOND)
        self.max_late_ns = round(max_late_seconds * NS_PER_SECOND)
        self._max_reorder_ticks = round(max_reorder_seconds * clock_rate)
        self._window_ns = round(window_seconds * NS_PER_SECOND)
        self._correction_ns = correction_seconds * NS_PER_SECOND
        # The mapping.
        self._base_ext: int | None = None  # None: no anchor (start, or after reset())
        self._base_ns = 0
        self._rate_ppb = 0
        self._integral_ppb = 0.0
        self._high_ext = 0  # the newest (highest) extended timestamp: unwrap reference
        self._high_pts = 0  # its pts
        self._high_now = 0  # its arrival
        self._frame_ns = 40_000_000  # the last forward step, for continuity across a clock step
        self._had_anchor = False
        self._pending: str | None = None  # a discontinuity waiting for the next keyframe
        # The envelope.
        self._window_start = 0
        self._window_min: int | None = None
        self._mins: deque[int] = deque(maxlen=ENVELOPE_WINDOWS)
        self._prev_transit: int | None = None
        # Exported state.
        self.error_ns = 0
        """Latest envelope error: ``arrival - pts`` of the least-delayed frames (0 = on time)."""
        self.jitter_ns = 0.0
        """Interarrival jitter (RFC 3550), in ns."""
        self.discontinuities = 0
        """Re-anchors reported as discontinuities (the first anchor is not one)."""
        self.last_reason: str | None = None
        """Why the last call reported a discontinuity: "reset", "backwards", "jump", "drift"."""

    # -- inspection ------------------------------------------------------------------------

    @property
    def rate_ppm(self) -> float:
        """Current slew of the mapping against nominal, in ppm (negative: camera ticks run fast)."""
        return self._rate_ppb / 1000

    @property
    def drift_ppm(self) -> float:
        """Estimated camera clock drift against the server's, in ppm (positive: camera fast)."""
        return (PPB / (PPB + self._rate_ppb) - 1) * 1_000_000

    @property
    def pending(self) -> str | None:
        """The reason of a discontinuity found and waiting for a keyframe, if any."""
        return self._pending

    # -- inputs ----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the anchor (SSRC change). The next ``map`` re-anchors and reports a discontinuity."""
        if self._base_ext is not None:
            self._had_anchor = True
        self._base_ext = None
        self._pending = None

    def map(self, rtp_timestamp: int, now_ns: int, keyframe: bool = True) -> tuple[int, bool]:
        """Return ``(pts_ns, discontinuity)`` for a 32-bit RTP timestamp that arrived at ``now_ns``.

        ``keyframe``: decoding can start at this frame, so a pending discontinuity may be taken here.
        """
        if not 0 <= rtp_timestamp < RTP_TIMESTAMP_MODULO:
            raise ValueError(f"RTP timestamp out of 32-bit range: {rtp_timestamp}")
        if self._base_ext is None:
            reason = REASON_RESET if self._had_anchor else None
            self._had_anchor = False
            return self._anchor(rtp_timestamp, now_ns, now_ns, reason), reason is not None

        delta = (rtp_timestamp - self._high_ext) % RTP_TIMESTAMP_MODULO
        if delta >= RTP_TIMESTAMP_HALF:
            delta -= RTP_TIMESTAMP_MODULO
        ext = self._high_ext + delta

        # Steps of the RTP clock itself (not of the network): backwards, or ahead of the arrivals.
        step: str | None = None
        if delta < -self._max_reorder_ticks:
            step = REASON_BACKWARDS
        elif delta > 0:
            ahead_ns = self._ticks_to_ns(delta) - (now_ns - self._high_now)
            if ahead_ns > self.max_error_ns:
                step = REASON_JUMP
        if step is not None:
            if keyframe:
                return self._anchor(ext, now_ns, now_ns, step), True
            # Keep this GOP continuous: carry on one nominal frame after the newest good frame.
            self._pending = step
            self._base_ext, self._base_ns = ext, self._high_pts + self._frame_ns
            self._high_ext, self._high_pts, self._high_now = ext, self._base_ns, now_ns
            return self._base_ns, False

        if self._pending is not None and keyframe:
            reason = self._pending
            if reason in HARD_REASONS:
                return self._anchor(ext, now_ns, now_ns, reason), True
            # Drift: step by the measured envelope error, keep the rate (still the best estimate).
            pts = self._pts(ext) + self._envelope(now_ns - self._pts(ext))
            return self._anchor(ext, pts, now_ns, reason, keep_rate=True), True

        pts = self._pts(ext)
        if delta > 0:
            self._frame_ns = pts - self._high_pts
            self._high_ext, self._high_pts, self._high_now = ext, pts, now_ns
        if self._pending is None or self._pending not in HARD_REASONS:
            self._observe(now_ns, now_ns - pts, ext)
        self.last_reason = None
        return pts, False

    def project(self, rtp_timestamp: int) -> int | None:
        """Server time of ``rtp_timestamp`` under the current mapping, without changing anything.

        Used to compare a sender report's RTP timestamp with the camera's own clock. ``None``
        before the first anchor.
        """
        if self._base_ext is None:
            return None
        delta = (rtp_timestamp - self._high_ext) % RTP_TIMESTAMP_MODULO
        if delta >= RTP_TIMESTAMP_HALF:
            delta -= RTP_TIMESTAMP_MODULO
        return self._pts(self._high_ext + delta)

    # -- internals -------------------------------------------------------------------------

    def _anchor(self, ext: int, pts_ns: int, now_ns: int, reason: str | None, keep_rate: bool = False) -> int:
        self._base_ext, self._base_ns = ext, pts_ns
        self._high_ext, self._high_pts, self._high_now = ext, pts_ns, now_ns
        if not keep_rate:
            self._rate_ppb = 0
            self._integral_ppb = 0.0
        self._pending = None
        self._window_start, self._window_min = now_ns, now_ns - pts_ns
        self._mins.clear()
        self._prev_transit = None
        self.error_ns = now_ns - pts_ns
        self.last_reason = reason
        if reason is not None:
            self.discontinuities += 1
        return pts_ns

    def _envelope(self, current_ns: int) -> int:
        """The envelope error: a negative error is believed at once (no network makes a frame
        early); a positive one only when the median of the last windows agrees (bursts)."""
        latest = current_ns if self._window_min is None else min(self._window_min, current_ns)
        if not self._mins:
            return latest
        ordered = sorted(self._mins)
        return min(latest, ordered[len(ordered) // 2])

    def _observe(self, now_ns: int, transit_ns: int, ext: int) -> None:
        """One frame's ``arrival - pts``: jitter, the envelope, and at each window's end the controller."""
        if self._prev_transit is not None:
            self.jitter_ns += (abs(transit_ns - self._prev_transit) - self.jitter_ns) / JITTER_GAIN
        self._prev_transit = transit_ns
        if transit_ns < -self.max_error_ns:
            # Arrived before its own time by more than the bound: the camera clock is ahead.
            self.error_ns = transit_ns
            self._pending = REASON_DRIFT
        if self._window_min is None or transit_ns < self._window_min:
            self._window_min = transit_ns
        if now_ns - self._window_start < self._window_ns:
            return
        assert self._window_min is not None
        self._mins.append(self._window_min)
        ordered = sorted(self._mins)
        error = min(self._window_min, ordered[len(ordered) // 2])
        self._window_start, self._window_min = now_ns, None
        self.error_ns = error
        if error > self.max_late_ns:
            self._pending = REASON_DRIFT
        # PI controller, critically damped for an error that integrates the rate difference.
        limit = self.max_slew_ppb
        self._integral_ppb += error * self._window_ns / (4 * self._correction_ns**2) * PPB
        self._integral_ppb = max(-limit, min(limit, self._integral_ppb))
        rate = round(self._integral_ppb + error / self._correction_ns * PPB)
        rate = max(-limit, min(limit, rate))
        if rate != self._rate_ppb:
            # Change the rate at the newest timestamp: continuous, monotonic.
            self._base_ns = self._pts(self._high_ext)
            self._base_ext = self._high_ext
            self._rate_ppb = rate

    def _pts(self, ext: int) -> int:
        assert self._base_ext is not None
        ticks = ext - self._base_ext
        # Round half up, in integers: exact for any number of ticks and any rate.
        num = ticks * NS_PER_SECOND * (PPB + self._rate_ppb) * 2
        den = self.clock_rate * PPB
        return self._base_ns + (num + den) // (2 * den)

    def _ticks_to_ns(self, ticks: int) -> int:
        return (ticks * NS_PER_SECOND * 2 + self.clock_rate) // (2 * self.clock_rate)
