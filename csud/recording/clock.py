"""The clocks the recording shells read, behind one small interface so tests can pass a fake.

Pure modules never import this: they take ``now`` as an argument. The shells
(:mod:`csud.recording.recorder`, :mod:`csud.recording.sink`) read an injected :class:`Clock`.
"""

from __future__ import annotations

import time
from typing import Final, Protocol


class Clock(Protocol):
    def now_ns(self) -> int:
        """The server's wall clock (NTP-disciplined, the trusted time), UTC ns."""
        ...

    def monotonic(self) -> float:
        """Seconds, for intervals and timers (never steps)."""
        ...


class SystemClock:
    """The real clocks. Builtins, so that the per-packet ``now_ns`` read costs one C call."""

    now_ns = staticmethod(time.time_ns)
    monotonic = staticmethod(time.monotonic)


SYSTEM_CLOCK: Final = SystemClock()
