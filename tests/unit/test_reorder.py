"""ReorderBuffer: in order passes straight through; holes fill or are given up within the window."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csud.media.reorder import ReorderBuffer
from csud.media.rtp import build_rtp


def pkt(seq: int, ssrc: int = 1) -> bytes:
    return build_rtp(96, seq % 65536, 0, ssrc, False, b"x")


def seqs(out: list[bytes]) -> list[int]:
    return [p[2] << 8 | p[3] for p in out]


def run(order: list[int], window: int = 4, flush: bool = True) -> tuple[list[int], ReorderBuffer]:
    out: list[bytes] = []
    buf = ReorderBuffer(out.append, window)
    for s in order:
        buf.push(pkt(s))
    if flush:
        buf.flush()
    return seqs(out), buf


CASES = {
    "in order": ([1, 2, 3, 4], [1, 2, 3, 4]),
    "swap": ([1, 3, 2, 4], [1, 2, 3, 4]),
    "late beyond window is given up, then late": ([1, 3, 4, 5, 6, 7, 2], [1, 3, 4, 5, 6, 7, 2]),
    "hole filled at the edge of the window": ([1, 3, 4, 5, 6, 2], [1, 2, 3, 4, 5, 6]),
    "wrap at 65535": ([65534, 0, 65535, 1], [65534, 65535, 0, 1]),
    "duplicate": ([1, 2, 2, 3], [1, 2, 2, 3]),
}


@pytest.mark.parametrize("name", CASES)
def test_orders(name: str) -> None:
    order, expected = CASES[name]
    assert run(order)[0] == expected


def test_loss_is_released_when_the_window_overflows_without_flush() -> None:
    out, buf = run([1, 3, 4, 5, 6, 7], window=4, flush=False)
    assert out == [1, 3, 4, 5, 6, 7]  # 2 is lost: the depacketizer will see the gap
    assert buf.held == 0


def test_memory_is_bounded_by_the_window() -> None:
    out, buf = run([1, *range(3, 1000)], window=8, flush=False)
    assert buf.held <= 8
    assert len(out) + buf.held == 998


@given(st.integers(0, 65535), st.integers(0, 2**32 - 1))
def test_shuffled_within_window_comes_out_sorted(start: int, seed: int) -> None:
    rng = random.Random(seed)
    order = list(range(start, start + 200))
    # Displace each packet by at most 3 places: a window of 8 must restore the order.
    for i in range(0, len(order) - 3, 4):
        chunk = order[i : i + 4]
        rng.shuffle(chunk)
        order[i : i + 4] = chunk
    if order[0] != start:  # the first packet sets the expectation
        order.remove(start)
        order.insert(0, start)
    out, _ = run(order, window=8)
    assert out == [s % 65536 for s in range(start, start + 200)]


def test_a_new_ssrc_restarts_the_sequence() -> None:
    """A camera reboot: the new source's numbers are neither late nor a hole to wait for."""
    out: list[bytes] = []
    buf = ReorderBuffer(out.append, window=4)
    for seq in (100, 102):  # 101 missing: 102 is held
        buf.push(pkt(seq))
    for seq in (5000, 5001, 5002):
        buf.push(pkt(seq, ssrc=2))
    assert seqs(out) == [100, 102, 5000, 5001, 5002]
    assert buf.late_packets == 0 and buf.held == 0
