"""Live viewing of B-frame streams: decode times in decode order, composition offsets in ``trun``.

A libx264 clip with 2 B-frames (units in decode order, RTP timestamps in presentation order) is
pushed through the fan-out as the recorder's tap does; what a viewer receives must decode to the
source's pictures, in order, and ffprobe must read it without a warning (no non-monotonic DTS).
"""

from __future__ import annotations

import io
import itertools
import random
import shutil
import struct
import subprocess
from pathlib import Path

import av
import pytest

from csud.live import fmp4
from csud.live.fanout import CameraFeed, Viewer
from csud.media.h264 import NAL_PPS, NAL_SPS
from csud.media.units import AccessUnit
from csud.recording.segmenter import Segmenter
from tests.conftest import skip_or_fail
from tests.helpers import NS_PER_SECOND
from tests.media import T0_NS, encode

TICKS = 3600  # 25 fps
BASE = (1 << 32) - 50 * TICKS  # the RTP timestamps wrap two seconds in


def _params(aus: list[AccessUnit]) -> list[bytes]:
    return [next(n for n in aus[0].nals if n[0] & 0x1F == t) for t in (NAL_SPS, NAL_PPS)]


def _clip(frames: int = 100, gop: int = 25) -> list[AccessUnit]:
    aus = encode(frames, gop=gop, bframes=2)
    for au in aus:
        au.rtp_timestamp = (BASE + au.rtp_timestamp) % (1 << 32)
    assert any(b.rtp_timestamp != (a.rtp_timestamp + TICKS) % (1 << 32) for a, b in itertools.pairwise(aus))
    return aus


def _pictures(aus: list[AccessUnit]) -> list[bytes]:
    """The source's pictures in presentation order: the raw stream through a bare decoder."""
    raw = av.CodecContext.create("h264", "r")
    return [
        f.to_ndarray(format="gray").tobytes()
        for au in [*aus, None]
        for f in raw.decode(None if au is None else av.Packet(au.annexb()))
    ]


def _received(aus: list[AccessUnit], reorder_ns: int, start: int = 0) -> tuple[CameraFeed, bytes]:
    feed = CameraFeed("cam1")
    params = _params(aus)
    for au in aus[:start]:
        feed.on_frame(au, "h264", params, 1, reorder_ns)
    viewer = feed.attach(Viewer(max_items=10_000, max_bytes=1 << 30))
    for au in aus[start:]:
        feed.on_frame(au, "h264", params, 1, reorder_ns)
    messages = []
    while viewer.queued_bytes:
        messages.append(viewer.pop()[0])
    return feed, b"".join(m for m in messages if isinstance(m, bytes))


def _truns(stream: bytes) -> list[tuple[int, int, int]]:
    """(trun version, tfdt, composition offset) of every fragment."""
    out, pos = [], 0
    while pos < len(stream):
        size, kind = struct.unpack_from(">I4s", stream, pos)
        if kind == b"moof":
            moof = stream[pos : pos + size]
            at = moof.index(b"tfdt") + 8
            tfdt = struct.unpack_from(">Q", moof, at)[0]
            at = moof.index(b"trun") + 4
            version, flags = moof[at], int.from_bytes(moof[at + 1 : at + 4], "big")
            offset = 0
            if flags & fmp4.TRUN_SAMPLE_COMPOSITION_TIME_OFFSET:
                offset = struct.unpack_from(">i", moof, at + 4 + 4 + 4 + 12)[0]
            out.append((version, tfdt, offset))
        pos += size
    return out


def _ffprobe_clean(tmp_path: Path, stream: bytes) -> list[int]:
    """ffprobe's packet dts (it must print no warning)."""
    if shutil.which("ffprobe") is None:
        skip_or_fail("ffprobe (Debian ffmpeg) not installed")
    path = tmp_path / "live.mp4"
    path.write_bytes(stream)
    probe = subprocess.run(
        ["ffprobe", "-v", "warning", "-show_entries", "packet=dts", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert probe.stderr == "", probe.stderr
    return [int(line) for line in probe.stdout.split()]


def _segmenter_delay_ns(aus: list[AccessUnit]) -> int:
    """The decode delay the recorder's segmenter learns from the clip (what the tap passes)."""
    segmenter = Segmenter(60 * NS_PER_SECOND, 0)
    segmenter.parameter_sets(_params(aus))
    for au in aus:
        segmenter.push(au, T0_NS + (au.rtp_timestamp - BASE) % (1 << 32) * 100_000 // 9)
    return segmenter.reorder_ns


@pytest.mark.parametrize("known", [True, False], ids=["delay_from_recorder", "delay_learned"])
def test_b_frame_stream_decodes_to_the_source_pictures_in_order(tmp_path: Path, known: bool) -> None:
    aus = _clip()
    reorder_ns = _segmenter_delay_ns(aus) if known else 0
    assert reorder_ns == (40_000_000 if known else 0)  # one frame: IBBP without pyramid
    feed, stream = _received(aus, reorder_ns)
    with av.open(io.BytesIO(stream), format="mp4") as c:
        decoded = list(c.decode(video=0))
    assert len(decoded) == 100
    pts = [int(f.pts or 0) for f in decoded]
    assert [p - pts[0] for p in pts] == [k * TICKS for k in range(100)]  # presentation order kept
    if known:  # (with negative offsets, FFmpeg shifts every time by the largest)
        assert pts[0] % (1 << 32) == BASE  # media time x 90 kHz is the RTP timestamp (mod 2^32)
    assert [f.to_ndarray(format="gray").tobytes() for f in decoded] == _pictures(aus)
    dts = _ffprobe_clean(tmp_path, stream)
    assert len(dts) == 100 and all(a < b for a, b in itertools.pairwise(dts))
    truns = _truns(stream)
    assert all(tfdt - truns[0][1] == d - dts[0] for (_, tfdt, _), d in zip(truns, dts, strict=True))
    assert {v for v, _, o in truns if o} == {1}  # offsets are in version 1 truns
    assert feed.clock.delay == TICKS and feed.clock.interval == TICKS
    offsets = [o for _, _, o in truns]
    if known:  # the delay known from the start: no frame decoded after it is shown
        assert min(offsets) >= 0
    else:  # learned at the first B-frame: only frames of the first GOP may have had to wait
        assert min(offsets[25:]) >= 0
    assert sum(1 for o in offsets if o != TICKS) > 30  # B-frames: not a constant shift


def test_a_viewer_joining_mid_stream_starts_at_the_kept_gop(tmp_path: Path) -> None:
    aus = _clip()
    _, stream = _received(aus, 40_000_000, start=60)  # keyframes at 0, 25, 50, 75: kept 50..59
    with av.open(io.BytesIO(stream), format="mp4") as c:
        decoded = [f.to_ndarray(format="gray").tobytes() for f in c.decode(video=0)]
    assert decoded == _pictures(aus)[50:]
    dts = _ffprobe_clean(tmp_path, stream)
    assert len(dts) == 50 and all(a < b for a, b in itertools.pairwise(dts))


def test_a_stream_without_b_frames_keeps_dts_equal_to_pts() -> None:
    aus = encode(30, gop=10)
    _, stream = _received(aus, 0)
    truns = _truns(stream)
    assert [(v, o) for v, _, o in truns] == [(0, 0)] * 30  # version 0, no offset: as before
    assert [tfdt for _, tfdt, _ in truns] == [k * TICKS for k in range(30)]


# -- the clock alone ---------------------------------------------------------------------------


def test_clock_counts_a_camera_clock_jump_as_one_frame() -> None:
    clock = fmp4.DecodeClock()
    times = [clock.next(t, k) for t, k in [(0, True), (3600, False), (3600 + 900_000, False)]]
    assert [d for d, _ in times] == [0, 3600, 7200] and {o for _, o in times} == {0}
    dts, offset = clock.next(1000, True)  # a keyframe back in time (the camera rebooted)
    assert (dts, offset) == (10_800, 0)


def test_clock_dts_strictly_increase_whatever_the_input() -> None:
    """Random steps (B-frame-like, repeated, camera clock jumps), starting on a non-key frame."""
    rng = random.Random(3)
    for _ in range(50):
        clock = fmp4.DecodeClock()
        last, rtp = -1, rng.randrange(1 << 32)
        for i in range(300):
            rtp = (rtp + rng.choice([-7200, -3600, 0, 1, 3600, 3600, 7200, 10_800, 1 << 31])) % (1 << 32)
            dts, _ = clock.next(rtp, i % 25 == 7 or rng.random() < 0.05, rng.choice([0, 0, 7200]))
            assert dts > last >= -1  # tfdt is unsigned: the first one is >= 0
            last = dts
