"""RTP timestamps mapped onto the server's clock.

Pure: no I/O and no clock reads; ``now_ns`` (the server's UTC clock, NTP-disciplined, the only
trusted time) is passed in by the caller.

A camera's RTP clock is a 32-bit counter at ``clock_rate`` Hz with a random origin. The timeline
unwraps it into an extended (unbounded) counter and maps it affinely onto the server's clock from
one anchor ``(extended_ts, now_ns)``. The mapping is exact integer arithmetic: hours of 90 kHz
ticks never accumulate a rounding error, because every pts is computed from the anchor, never
from the previous pts.

Invariants:
- Between two discontinuities the returned pts never decreases, and advances by exactly the RTP
  tick delta (to the nanosecond, rounded once from the anchor).
- The returned pts is never further than ``max_drift_seconds`` from ``now_ns``: beyond that the
  timeline re-anchors and says so (discontinuity=True). A discontinuity starts a new segment.

What is deliberately left out: slewing (a slow drift is corrected by a step, i.e. a new segment,
never by stretching time) and the camera's wall clock (RTCP sender reports are recorded and
exported elsewhere, never trusted here).
"""

from __future__ import annotations

NS_PER_SECOND = 1_000_000_000
RTP_TIMESTAMP_BITS = 32
RTP_TIMESTAMP_MODULO = 1 << RTP_TIMESTAMP_BITS
RTP_TIMESTAMP_HALF = RTP_TIMESTAMP_MODULO >> 1


class Timeline:
    """Maps one RTP stream's timestamps to UTC nanoseconds on the server's clock.

    A backwards step (any, except an equal timestamp), a forward jump larger than
    ``max_jump_seconds`` or a drift ``|pts_ns - now_ns|`` larger than ``max_drift_seconds``
    re-anchors on ``now_ns`` and reports a discontinuity. ``reset()`` (new SSRC) forgets the anchor.
    """

    __slots__ = (
        "_anchor_ext",
        "_anchor_ns",
        "_had_anchor",
        "_last_ext",
        "_max_drift_ns",
        "_max_jump_ticks",
        "clock_rate",
        "discontinuities",
        "drift_ns",
        "last_reason",
    )

    def __init__(
        self, clock_rate: int = 90000, max_jump_seconds: float = 10.0, max_drift_seconds: float = 2.0
    ) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        if max_jump_seconds <= 0 or max_drift_seconds <= 0:
            raise ValueError("max_jump_seconds and max_drift_seconds must be positive")
        self.clock_rate = clock_rate
        self._max_jump_ticks = round(max_jump_seconds * clock_rate)
        self._max_drift_ns = round(max_drift_seconds * NS_PER_SECOND)
        self._anchor_ext: int | None = None  # extended RTP timestamp of the anchor
        self._anchor_ns = 0  # server time of the anchor
        self._last_ext = 0  # extended RTP timestamp of the last call
        self._had_anchor = False
        self.drift_ns = 0
        """``pts_ns - now_ns`` of the last call (0 right after a re-anchor)."""
        self.discontinuities = 0
        """Re-anchors that reported a discontinuity (the first anchor is not one)."""
        self.last_reason: str | None = None
        """Why the last call reported a discontinuity: "reset", "reorder" (a step back of at most
        one second: B-frames), "backwards", "jump", "drift"."""

    def reset(self) -> None:
        """Forget the anchor (SSRC change). The next ``map`` re-anchors and reports a discontinuity."""
        if self._anchor_ext is not None:
            self._had_anchor = True
        self._anchor_ext = None

    def map(self, rtp_timestamp: int, now_ns: int) -> tuple[int, bool]:
        """Return ``(pts_ns, discontinuity)`` for a 32-bit RTP timestamp received at ``now_ns``."""
        if not 0 <= rtp_timestamp < RTP_TIMESTAMP_MODULO:
            raise ValueError(f"RTP timestamp out of 32-bit range: {rtp_timestamp}")
        if self._anchor_ext is None:
            discontinuity = self._had_anchor
            self._had_anchor = False
            return self._anchor(rtp_timestamp, now_ns, "reset" if discontinuity else None)

        # Unwrap: the shortest signed distance from the last timestamp, modulo 2^32.
        delta = (rtp_timestamp - self._last_ext) % RTP_TIMESTAMP_MODULO
        if delta >= RTP_TIMESTAMP_HALF:
            delta -= RTP_TIMESTAMP_MODULO
        if delta < 0:
            # A step back of up to a second is what B-frames look like in decode order; further
            # back is a restarted source. Both re-anchor; the reason lets the caller tell them.
            reason = "reorder" if -delta <= self.clock_rate else "backwards"
            return self._anchor(self._last_ext + delta, now_ns, reason)
        if delta > self._max_jump_ticks:
            return self._anchor(self._last_ext + delta, now_ns, "jump")

        ext = self._last_ext + delta
        pts_ns = self._anchor_ns + self._ticks_to_ns(ext - self._anchor_ext)
        if abs(pts_ns - now_ns) > self._max_drift_ns:
            return self._anchor(ext, now_ns, "drift")
        self._last_ext = ext
        self.drift_ns = pts_ns - now_ns
        self.last_reason = None
        return pts_ns, False

    def project(self, rtp_timestamp: int) -> int | None:
        """Server time of ``rtp_timestamp`` under the current anchor, without changing anything.

        Used to compare a sender report's RTP timestamp with the camera's own clock. ``None``
        before the first anchor.
        """
        if self._anchor_ext is None:
            return None
        delta = (rtp_timestamp - self._last_ext) % RTP_TIMESTAMP_MODULO
        if delta >= RTP_TIMESTAMP_HALF:
            delta -= RTP_TIMESTAMP_MODULO
        return self._anchor_ns + self._ticks_to_ns(self._last_ext + delta - self._anchor_ext)

    def _anchor(self, ext: int, now_ns: int, reason: str | None) -> tuple[int, bool]:
        self._anchor_ext = ext
        self._anchor_ns = now_ns
        self._last_ext = ext
        self.drift_ns = 0
        self.last_reason = reason
        if reason is not None:
            self.discontinuities += 1
        return now_ns, reason is not None

    def _ticks_to_ns(self, ticks: int) -> int:
        # Round half up, in integers: exact for any number of ticks.
        return (ticks * NS_PER_SECOND * 2 + self.clock_rate) // (2 * self.clock_rate)
