"""Liveness measures for ``/healthz`` and the metrics: event-loop lag and a writable-index probe.

The loop lag is measured the cheap way: a task sleeps :data:`LOOP_TICK_SECONDS` and records by how
much it overslept. A loop blocked right now (a callback that does not yield) is seen too, without
waiting for the sleeper to wake: :meth:`LoopMonitor.current_lag` also counts how late the
sleeper already is.

The index probe runs a check on the index thread with a timeout; at most one check is in flight
and its result is reused for :data:`PROBE_CACHE_SECONDS`, so a scraper hammering ``/healthz``
never queues work behind the segment inserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from csud.errors import CsudError

LOOP_TICK_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 2.0
PROBE_CACHE_SECONDS = 1.0


class LoopMonitor:
    """Event-loop lag from a sleeping task's overshoot. Run :meth:`run` as a task; cancel it to stop."""

    def __init__(self, tick_seconds: float = LOOP_TICK_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.tick_seconds = tick_seconds
        self._clock = clock
        self.last_lag = 0.0
        self._max_lag = 0.0
        self._due = clock() + tick_seconds

    async def run(self) -> None:
        while True:
            self._due = self._clock() + self.tick_seconds
            await asyncio.sleep(self.tick_seconds)
            lag = max(0.0, self._clock() - self._due)
            self.last_lag = lag
            self._max_lag = max(self._max_lag, lag)

    def current_lag(self) -> float:
        """The last tick's overshoot, or how late the pending tick already is if that is more."""
        return max(self.last_lag, self._clock() - self._due)

    def take_max(self) -> float:
        """Largest lag since the previous call (for a gauge exported every few seconds)."""
        peak = max(self._max_lag, self.current_lag())
        self._max_lag = 0.0
        return peak


class WritableProbe:
    """``await probe.problem()``: ``None`` when ``check`` succeeded recently, else a one-line reason.

    ``check`` raises :class:`CsudError` (e.g. ``StorageError``) when the index does not accept writes.
    """

    def __init__(
        self,
        check: Callable[[], Awaitable[None]],
        timeout_seconds: float = PROBE_TIMEOUT_SECONDS,
        cache_seconds: float = PROBE_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self.timeout_seconds = timeout_seconds
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._result: str | None = None
        self._result_at: float | None = None
        self._pending: asyncio.Task[str | None] | None = None

    async def problem(self) -> str | None:
        if self._result_at is not None and self._clock() - self._result_at < self.cache_seconds:
            return self._result
        if self._pending is None or self._pending.done():
            self._pending = asyncio.create_task(self._run(), name="index-probe")
        try:
            return await asyncio.wait_for(asyncio.shield(self._pending), self.timeout_seconds)
        except TimeoutError:
            return f"index did not answer within {self.timeout_seconds:g} s (index thread stuck or busy)"

    async def _run(self) -> str | None:
        try:
            await self._check()
            result = None
        except CsudError as exc:
            result = str(exc)
        self._result, self._result_at = result, self._clock()
        return result

    async def close(self) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pending
