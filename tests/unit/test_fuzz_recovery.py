"""Property tests for the fMP4 recovery scanner (csud.store.scan).

Arbitrary bytes never make it raise; it reads only inside the file, a bounded number of times;
any truncation of a real segment scans as exactly the fragments that end before the cut; any
corruption keeps only whole, consistent fragments that the original had. A few seconds.
"""

from __future__ import annotations

from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csud.recording.segmenter import Frame
from csud.recording.writer import FragmentMuxer
from csud.store.scan import MAX_MOOF_SIZE, ScanResult, scan, scan_bytes
from tests.media import FRAME_NS, GOP, T0_NS, encode

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def segment() -> tuple[bytes, tuple[tuple[int, int, int], ...]]:
    """A real 3-GOP segment (small frames) and its fragments (offset, size, frames)."""
    aus = encode(3 * GOP, width=64, height=48)
    muxer = FragmentMuxer(64, 48)
    frames = [Frame(au.annexb(), T0_NS + i * FRAME_NS, FRAME_NS, au.keyframe) for i, au in enumerate(aus)]
    data = muxer.mux(frames[:1], T0_NS)
    for g in range(3):
        data += muxer.mux(frames[g * GOP + 1 : (g + 1) * GOP + 1], T0_NS)
    data += muxer.close()
    return data, tuple((f.offset, f.size, f.frames) for f in muxer.take_fragments())


def assert_sane(result: ScanResult, size: int) -> None:
    assert 0 <= result.init_end <= result.good_end <= size or (not result.fragments and result.good_end == 0)
    previous_end = result.init_end
    for f in result.fragments:
        assert f.offset == previous_end and f.size > 0 and f.samples > 0
        previous_end = f.end
    assert result.valid == (result.problem is None and bool(result.fragments))


def counting_reader(data: bytes, calls: list[int]):  # type: ignore[no-untyped-def]
    def read(offset: int, n: int) -> bytes:
        assert offset >= 0 and n >= 0 and offset + n <= len(data), (offset, n, len(data))
        assert n <= MAX_MOOF_SIZE
        calls.append(n)
        return data[offset : offset + n]

    return read


def test_the_real_segment_scans_whole() -> None:
    data, fragments = segment()
    result = scan_bytes(data)
    assert result.valid and [(f.offset, f.size, f.samples) for f in result.fragments] == list(fragments)
    assert result.good_end == len(data) and result.frames == 3 * GOP


@FAST
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise_and_reads_stay_inside(data: bytes) -> None:
    calls: list[int] = []
    result = scan(counting_reader(data, calls), len(data))
    assert_sane(result, len(data))
    assert len(calls) <= 4 + 3 * len(data) // 8  # a few reads per box at most


@FAST
@given(st.binary(max_size=300), st.integers(0, 10))
def test_garbage_after_a_real_prefix(tail: bytes, keep: int) -> None:
    data, fragments = segment()
    prefix_end = fragments[min(keep, len(fragments) - 1)][0] if keep < len(fragments) else len(data)
    blob = data[:prefix_end] + tail
    result = scan_bytes(blob)
    assert_sane(result, len(blob))
    whole = [fr for fr in fragments if fr[0] + fr[1] <= prefix_end]
    assert [(f.offset, f.size, f.samples) for f in result.fragments][: len(whole)] == whole


@FAST
@given(st.data())
def test_any_truncation_keeps_exactly_the_fragments_before_the_cut(data_: st.DataObject) -> None:
    data, fragments = segment()
    cut = data_.draw(st.integers(0, len(data)))
    result = scan_bytes(data[:cut])
    assert_sane(result, cut)
    assert [(f.offset, f.size, f.samples) for f in result.fragments] == [
        fr for fr in fragments if fr[0] + fr[1] <= cut
    ]


@FAST
@given(st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=8))
def test_corruption_keeps_only_fragments_the_original_had(flips: list[tuple[int, int]]) -> None:
    data, fragments = segment()
    buf = bytearray(data)
    for at, value in flips:
        # Bias towards the headers: the moov and the moof boxes are where a flip matters.
        index = at % len(buf) if at % 3 else fragments[at % len(fragments)][0] + at % 200
        buf[min(index, len(buf) - 1)] = value
    result = scan_bytes(bytes(buf))
    assert_sane(result, len(buf))
    for f in result.fragments:
        assert (f.offset, f.size, f.samples) in fragments
