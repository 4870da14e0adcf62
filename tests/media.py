"""Shared media fixtures: small real H.264 clips (libx264 through PyAV) recorded into a real store.

``encode`` makes access units; ``record_store`` drives the pure segmenter over them at given
server-clock times and carries out its actions with the real writer and index, as the recorder
does. Used by the extraction tests and the extraction benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from csud.media.h264 import split_annexb
from csud.media.units import AccessUnit
from csud.recording.segmenter import Close, Frame, Mux, Open, Segmenter
from csud.recording.writer import SegmentInfo, SegmentWriter
from csud.store.index import Index
from csud.store.layout import segment_relpath
from tests.helpers import NS_PER_SECOND

WIDTH, HEIGHT, FPS, GOP = 320, 240, 25, 25
FRAME_NS = NS_PER_SECOND // FPS
T0_NS = 1_790_000_000 * NS_PER_SECOND  # 2026-09-21T...Z, on a whole second
RTP_TICKS_PER_FRAME = 90000 // FPS


def frame_ns(fps: Fraction | int = FPS) -> int:
    """The nominal frame duration at ``fps``, rounded to the ns."""
    return round(Fraction(NS_PER_SECOND) / fps)


def encode(
    frames: int,
    width: int = WIDTH,
    height: int = HEIGHT,
    gop: int = GOP,
    fps: Fraction | int = FPS,
    bitrate: int | None = None,
    bframes: int = 0,
) -> list[AccessUnit]:
    """A synthetic clip as access units in decode order: fixed GOP, SPS/PPS repeated in-band,
    no B-frames unless ``bframes`` (then the RTP timestamps follow presentation order).

    ``fps`` may be fractional (``Fraction(30000, 1001)``) as long as a frame is whole RTP ticks.
    """
    rtp_ticks = Fraction(90000) / fps
    assert rtp_ticks.denominator == 1, f"{fps} fps is not a whole number of 90 kHz ticks per frame"
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.time_base = 1 / Fraction(fps)
    enc.framerate = Fraction(fps)
    enc.gop_size = gop
    enc.max_b_frames = bframes
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1:bframes={bframes}"
    if bframes:
        params += ":b-adapt=0:open-gop=0"
    if bitrate:
        enc.bit_rate = bitrate
        params += f":vbv-maxrate={bitrate // 1000}:vbv-bufsize={bitrate // 1000}"
    options = {"preset": "ultrafast" if not bframes else "veryfast", "x264-params": params}
    if not bframes:
        options["tune"] = "zerolatency"  # zerolatency forbids B-frames
    enc.options = options
    rng = np.random.default_rng(1)
    out: list[AccessUnit] = []
    for i in range(frames + 1):
        if i < frames:
            img = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
            img = np.kron(img, np.ones((8, 8, 1), dtype=np.uint8))
            frame = av.VideoFrame.from_ndarray(np.roll(img, i * 3, axis=1), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            packets = enc.encode(frame)
        else:
            packets = enc.encode(None)
        for p in packets:
            nals = split_annexb(bytes(p))
            n = int(p.pts) if bframes else len(out)
            out.append(AccessUnit(n * int(rtp_ticks), nals, p.is_keyframe, sum(map(len, nals))))
    assert len(out) == frames
    return out


@dataclass(frozen=True, slots=True)
class Recording:
    """What ``record_store`` wrote: the segments (in order) and every recorded frame's pts."""

    segments: tuple[SegmentInfo, ...]
    frame_pts_ns: tuple[int, ...]
    frame_end_ns: tuple[int, ...]  # pts + duration as muxed (the last one per segment is nominal)


async def record_store(
    root: Path,
    index: Index,
    timed: Sequence[tuple[AccessUnit, int]],
    *,
    camera: str = "cam-1",
    commune: str = "metz",
    segment_ns: int = 2 * NS_PER_SECOND,
    width: int = WIDTH,
    height: int = HEIGHT,
    fps: Fraction | int = FPS,
) -> Recording:
    """Record ``(access unit, pts_ns)`` pairs into ``root`` and ``index``.

    A pts jump of more than 1.5 frames at a keyframe is passed as a discontinuity (put jumps on keyframes: the
    segmenter then closes the segment and opens the next one at the new time, leaving a gap).
    """
    nominal_ns = frame_ns(fps)
    seg = Segmenter(segment_ns, 0, default_frame_ns=nominal_ns)
    writer: SegmentWriter | None = None
    infos: list[SegmentInfo] = []
    pts: list[int] = []
    ends: list[int] = []
    previous: int | None = None

    async def run(actions: list[object]) -> None:
        nonlocal writer
        for a in actions:
            if isinstance(a, Open):
                relpath = segment_relpath(commune, camera, a.start_ns)
                writer = await SegmentWriter.open(
                    root, relpath, a.start_ns, width, height, reorder_ns=a.reorder_ns
                )
            elif isinstance(a, Mux):
                assert writer is not None
                await writer.write(a.frames)
                for f in a.frames:
                    assert isinstance(f, Frame)
                    pts.append(f.pts_ns)
                    ends.append(f.pts_ns + f.duration_ns)
            elif isinstance(a, Close):
                assert writer is not None
                info = await writer.close(a.end_ns, a.drop_tail)
                writer = None
                if a.drop_tail:  # B-frames: the segment re-opens at the keyframe muxed last
                    pts.pop()
                    ends.pop()
                if info is None:
                    assert a.drop_tail
                    continue
                index.add_segment(camera, commune, info, created_ns=time.time_ns())
                infos.append(info)

    for au, pts_ns in timed:
        jump = au.keyframe and previous is not None and pts_ns - previous > nominal_ns * 3 // 2
        await run(list(seg.push(au, pts_ns, jump)))
        previous = pts_ns if previous is None else max(previous, pts_ns)
    await run(list(seg.stop()))
    order = sorted(range(len(pts)), key=lambda i: pts[i])
    return Recording(tuple(infos), tuple(pts[i] for i in order), tuple(ends[i] for i in order))


def timed_frames(
    aus: Sequence[AccessUnit],
    start_ns: int = T0_NS,
    jumps: dict[int, int] | None = None,
    fps: Fraction | int = FPS,
) -> list[tuple[AccessUnit, int]]:
    """Frame i at ``start_ns + i / fps`` (rounded to the ns, as a receiver's timeline does), plus
    ``jumps[i]`` ns added from frame i onwards.

    At 25 fps every frame is a whole ns and a whole tick from ``start_ns``; at 30 or 29.97 fps
    most are not, so a segment starting on such a frame is not a whole tick from its keyframes.
    """
    out: list[tuple[AccessUnit, int]] = []
    shift = 0
    for i, au in enumerate(aus):
        shift += (jumps or {}).get(i, 0)
        out.append((au, start_ns + round(Fraction(i * NS_PER_SECOND) / fps) + shift))
    return out
