"""One memory budget for everything queued between the cameras' sockets and the disk.

Pure: no I/O, no clock; one object shared by every recorder of the daemon (they all run on one
event loop, so no lock is needed).

The rule (what is lost when storage falls behind; README, "Memory"):

- The budget is split in two halves. The *reserved* half is divided equally among the cameras:
  each camera's **fair share**. The other half is a **pool** that any camera may borrow from.
- A camera asks, at each keyframe, to queue the GOP that starts there (``admit``, with an
  estimate: its last GOP's size). It is admitted when the GOP fits in its fair share, or when
  the part beyond its fair share fits in what is left of the pool.
- So a camera within its fair share is never refused: **the others lose nothing**, whatever one
  camera (a big GOP, a stalled disk under it) does. Cameras over their share drop whole GOPs
  (counted per camera) once the pool is exhausted, and resume at the next keyframe that fits.
- Bytes are charged when they are queued and released when the writer has consumed them.
  Admission is per GOP, so the total can overshoot the budget by at most one GOP's estimation
  error per camera; it never grows with time (RSS stays flat).
"""

from __future__ import annotations

MIB = 1 << 20
DEFAULT_RESERVED_FRACTION = 0.5
MIN_BUDGET_BYTES = 64 * MIB
# 1 GiB holds about 6 s of 330 cameras at 4 Mbit/s: room for a disk hiccup. A larger default
# only delays the drop, lets RSS climb for longer and lengthens the drain at SIGTERM (measured at
# 330 cameras: RAM/8 = 3 GiB grew RSS to 2.9 GB in 60 s and stopped in 6.2 s).
MAX_DEFAULT_BUDGET_BYTES = 1024 * MIB
DEFAULT_RAM_FRACTION = 32  # by default, a thirty-second of the machine's RAM


def default_budget_bytes(ram_bytes: int) -> int:
    """The default budget for a machine with ``ram_bytes`` of RAM: 1/32, within [64 MiB, 1 GiB]."""
    return max(MIN_BUDGET_BYTES, min(MAX_DEFAULT_BUDGET_BYTES, ram_bytes // DEFAULT_RAM_FRACTION))


class MemoryBudget:
    """Shared between recorders: ``register`` each camera, ``admit`` a GOP at each keyframe,
    ``charge`` and ``release`` bytes as they enter and leave the writer's queue."""

    def __init__(self, total_bytes: int, reserved_fraction: float = DEFAULT_RESERVED_FRACTION) -> None:
        if total_bytes <= 0:
            raise ValueError(f"total_bytes must be positive, got {total_bytes}")
        if not 0 <= reserved_fraction <= 1:
            raise ValueError(f"reserved_fraction must be in [0, 1], got {reserved_fraction}")
        self.total_bytes = total_bytes
        self.reserved_bytes = int(total_bytes * reserved_fraction)
        self.pool_bytes = total_bytes - self.reserved_bytes
        self._used: dict[str, int] = {}
        self._pool_used = 0  # sum over cameras of max(0, used - fair share)
        self.used_bytes = 0

    @property
    def cameras(self) -> int:
        return len(self._used)

    @property
    def fair_share_bytes(self) -> int:
        """Each camera's reserved part (the whole reserve while no camera is registered)."""
        return self.reserved_bytes // max(1, len(self._used))

    @property
    def pool_used_bytes(self) -> int:
        return self._pool_used

    def used(self, camera: str) -> int:
        return self._used.get(camera, 0)

    def register(self, camera: str) -> None:
        """Add a camera (its fair share shrinks every other's a little)."""
        if camera not in self._used:
            self._used[camera] = 0
            self._recompute_pool()

    def unregister(self, camera: str) -> None:
        """Remove a camera; what it still has charged is released."""
        used = self._used.pop(camera, 0)
        self.used_bytes -= used
        self._recompute_pool()

    def admit(self, camera: str, nbytes: int) -> bool:
        """May ``camera`` queue ``nbytes`` more (a GOP)? Within its fair share, always; beyond,
        only if the pool has room for the excess."""
        used = self._used.get(camera, 0)
        share = self.fair_share_bytes
        if used + nbytes <= share:
            return True
        extra = max(0, used + nbytes - share) - max(0, used - share)
        return self._pool_used + extra <= self.pool_bytes

    def charge(self, camera: str, nbytes: int) -> None:
        """``nbytes`` were queued by ``camera`` (admitted earlier)."""
        self._change(camera, nbytes)

    def release(self, camera: str, nbytes: int) -> None:
        """``nbytes`` left ``camera``'s queue (written or discarded)."""
        self._change(camera, -nbytes)

    def _change(self, camera: str, delta: int) -> None:
        if camera not in self._used:
            return  # unregistered meanwhile: its charge was already released
        share = self.fair_share_bytes
        before = self._used[camera]
        after = max(0, before + delta)
        self._used[camera] = after
        self.used_bytes += after - before
        self._pool_used += max(0, after - share) - max(0, before - share)

    def _recompute_pool(self) -> None:
        share = self.fair_share_bytes
        self._pool_used = sum(max(0, u - share) for u in self._used.values())
