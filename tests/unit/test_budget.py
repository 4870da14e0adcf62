"""MemoryBudget: the fair-share rule. Pure, no event loop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csud.recording.budget import MIB, MemoryBudget, default_budget_bytes


def budget_with(cameras: int, total: int = 100 * MIB) -> MemoryBudget:
    b = MemoryBudget(total)
    for i in range(cameras):
        b.register(f"cam-{i}")
    return b


def test_fair_share_and_pool() -> None:
    b = budget_with(5)
    assert b.reserved_bytes == b.pool_bytes == 50 * MIB
    assert b.fair_share_bytes == 10 * MIB


@pytest.mark.parametrize(
    ("used_mib", "pool_used_by_others_mib", "gop_mib", "admitted"),
    [
        (0, 50, 10, True),  # within its share: admitted even with the pool exhausted
        (9, 50, 1, True),
        (9, 50, 2, False),  # 1 MiB over its share, the pool is full
        (9, 49, 2, True),  # 1 MiB over, 1 MiB left in the pool
        (30, 20, 10, True),  # borrows: 20 over + 10 = 30 of the pool, others hold 20
        (30, 21, 10, False),
    ],
)
def test_admission(used_mib: int, pool_used_by_others_mib: int, gop_mib: int, admitted: bool) -> None:
    b = budget_with(5)
    b.charge("cam-0", used_mib * MIB)
    b.charge("cam-1", (10 + pool_used_by_others_mib) * MIB)  # its share plus that much pool
    assert b.pool_used_bytes == (max(0, used_mib - 10) + pool_used_by_others_mib) * MIB
    assert b.admit("cam-0", gop_mib * MIB) is admitted


def test_a_greedy_camera_never_takes_another_cameras_share() -> None:
    """cam-0's storage is stalled: it fills its share and the whole pool, then is refused; cam-1,
    within its share, is still admitted every time."""
    b = budget_with(4)
    gop = 1 * MIB
    while b.admit("cam-0", gop):
        b.charge("cam-0", gop)
    assert b.fair_share_bytes + b.pool_bytes - gop < b.used("cam-0") <= b.fair_share_bytes + b.pool_bytes
    for _ in range(b.fair_share_bytes // gop):
        assert b.admit("cam-1", gop)
        b.charge("cam-1", gop)
    assert b.used_bytes <= b.total_bytes
    b.release("cam-0", 10 * gop)
    assert b.admit("cam-0", gop)


def test_register_and_unregister_resize_shares() -> None:
    b = budget_with(2)
    b.charge("cam-0", 40 * MIB)  # share 25: 15 borrowed
    assert b.pool_used_bytes == 15 * MIB
    b.register("cam-2")  # share ~16.7: ~23.3 borrowed
    assert b.pool_used_bytes == 40 * MIB - b.fair_share_bytes
    b.unregister("cam-0")
    assert b.used_bytes == 0 and b.pool_used_bytes == 0
    b.release("cam-0", MIB)  # late release from a removed camera: ignored
    assert b.used_bytes == 0


def test_default_from_ram() -> None:
    assert default_budget_bytes(8 * 1024 * MIB) == 256 * MIB
    assert default_budget_bytes(24 * 1024 * MIB) == 768 * MIB
    assert default_budget_bytes(128 * MIB) == 64 * MIB
    assert default_budget_bytes(1024 * 1024 * MIB) == 1024 * MIB


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryBudget(0)
    with pytest.raises(ValueError, match="reserved_fraction"):
        MemoryBudget(MIB, reserved_fraction=1.5)


@given(
    ops=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from(["gop", "write"]), st.integers(1, 8 * MIB)),
        max_size=300,
    )
)
def test_property_total_bounded_and_within_share_always_admitted(ops: list[tuple[int, str, int]]) -> None:
    """Any interleaving: a GOP within its camera's share is admitted; admitted GOPs never take the
    total past the budget; the pool accounting matches the cameras' usage."""
    b = budget_with(6, total=60 * MIB)
    for cam_i, op, n in ops:
        cam = f"cam-{cam_i}"
        if op == "gop":
            if b.used(cam) + n <= b.fair_share_bytes:
                assert b.admit(cam, n)
            if b.admit(cam, n):
                b.charge(cam, n)
        else:
            b.release(cam, min(n, b.used(cam)))
        assert b.used_bytes <= b.total_bytes
        assert b.pool_used_bytes == sum(max(0, b.used(f"cam-{i}") - b.fair_share_bytes) for i in range(6))
        assert b.pool_used_bytes <= b.pool_bytes
