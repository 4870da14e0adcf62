"""FragmentMuxer and SegmentWriter against real H.264 (libx264 through PyAV) in tmp_path.

docs/storage.md, "Creating a segment": these tests check steps 1-4 (write .partial while hashing,
fsync, rename, fsync dir) and what a cut GOP leaves behind.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from csud.errors import StorageError
from csud.media.units import AccessUnit
from csud.recording.segmenter import Action, Close, Drop, Frame, Mux, Open, Segmenter
from csud.recording.writer import (
    FragmentMuxer,
    SegmentInfo,
    SegmentWriter,
    iter_boxes,
    ns_to_ticks,
)
from csud.store.layout import segment_relpath
from tests.conftest import skip_or_fail
from tests.media import FRAME_NS, GOP, HEIGHT, T0_NS, WIDTH, encode


@pytest.fixture(scope="module")
def clip() -> list[AccessUnit]:
    return encode(100)  # 4 GOPs


def decode(path: Path) -> list[int]:
    """Decode every frame (raises on a damaged stream); return the frames' pts in 1/90000."""
    with av.open(str(path), "r") as c:
        assert c.streams.video[0].codec_context.width == WIDTH
        return [int(f.pts or 0) for f in c.decode(video=0)]


async def record(
    root: Path, seg: Segmenter, script: list[AccessUnit | str], camera: str = "cam-1"
) -> tuple[list[SegmentInfo | None], list[Action]]:
    """Drive a Segmenter over ``script`` (access units, "gap") and execute its actions, like the
    recorder will. Frame i is at T0 + i * 40 ms."""
    infos: list[SegmentInfo | None] = []
    all_actions: list[Action] = []
    writer: SegmentWriter | None = None
    i = 0
    for item in [*script, "stop"]:
        if item == "gap":
            actions = seg.gap("loss")
        elif item == "stop":
            actions = seg.stop()
        else:
            assert isinstance(item, AccessUnit)
            actions = seg.push(item, T0_NS + i * FRAME_NS, False)
            i += 1
        all_actions += actions
        for a in actions:
            if isinstance(a, Open):
                relpath = segment_relpath("metz", camera, a.start_ns)
                writer = await SegmentWriter.open(root, relpath, a.start_ns, WIDTH, HEIGHT)
            elif isinstance(a, Mux):
                assert writer is not None
                await writer.write(a.frames)
            elif isinstance(a, Close):
                assert writer is not None
                infos.append(await writer.close(a.end_ns, a.drop_tail))
                writer = None
            else:
                assert isinstance(a, Drop)
    return infos, all_actions


def check_file(root: Path, info: SegmentInfo) -> bytes:
    path = root / info.relpath
    data = path.read_bytes()
    assert not (root / (info.relpath + ".partial")).exists()
    assert hashlib.sha256(data).hexdigest() == info.sha256
    assert len(data) == info.bytes
    boxes = list(iter_boxes(data))  # whole boxes, to the last byte
    assert [t for t, _, _ in boxes[:2]] == ["ftyp", "moov"]
    moofs = [off for t, off, _ in boxes if t == "moof"]
    assert [f.offset for f in info.fragments] == moofs
    for frag in info.fragments:
        assert data[frag.offset + 4 : frag.offset + 8] == b"moof"
    last = info.fragments[-1]
    assert last.offset + last.size == len(data)  # the file ends with the last fragment
    assert sum(f.frames for f in info.fragments) == info.frames
    return data


async def test_one_segment_decodes_frame_exact(tmp_path: Path, clip: list[AccessUnit]) -> None:
    seg = Segmenter(segment_ns=3600 * 10**9, phase_ns=0)
    infos, _ = await record(tmp_path, seg, list(clip))
    assert len(infos) == 1 and infos[0] is not None
    info = infos[0]
    check_file(tmp_path, info)
    assert info.relpath == segment_relpath("metz", "cam-1", T0_NS)
    assert (info.start_ns, info.end_ns, info.frames) == (T0_NS, T0_NS + 100 * FRAME_NS, 100)
    assert [(f.start_ns, f.frames) for f in info.fragments] == [
        (T0_NS + g * GOP * FRAME_NS, GOP) for g in range(4)
    ]
    assert decode(tmp_path / info.relpath) == [i * 3600 for i in range(100)]


async def test_rotation_gives_contiguous_decodable_segments(tmp_path: Path, clip: list[AccessUnit]) -> None:
    # Keyframes every 1 s. Boundaries are epoch-aligned: T0 % 1.5 s == 0.5 s, so phase 1 s puts
    # them at T0 + 0.5 s + n * 1.5 s. Cuts at the first keyframe at or after a boundary: 1 s, then
    # the first boundary after 1 s is 2 s, then 3.5 s (-> 4 s, past the 4 s clip).
    assert T0_NS % 1_500_000_000 == 500_000_000
    seg = Segmenter(segment_ns=1_500_000_000, phase_ns=1_000_000_000)
    infos, _ = await record(tmp_path, seg, list(clip))
    assert all(i is not None for i in infos)
    segs = [i for i in infos if i is not None]
    assert [(s.start_ns - T0_NS) // 10**6 for s in segs] == [0, 1000, 2000]
    assert [s.frames for s in segs] == [25, 25, 50]
    for a, b in itertools.pairwise(segs):
        assert a.end_ns == b.start_ns
    for s in segs:
        check_file(tmp_path, s)
        assert decode(tmp_path / s.relpath) == [i * 3600 for i in range(s.frames)]


async def test_gap_mid_gop_cuts_the_file_after_the_last_whole_frame(
    tmp_path: Path, clip: list[AccessUnit]
) -> None:
    seg = Segmenter(segment_ns=3600 * 10**9, phase_ns=0)
    script: list[AccessUnit | str] = [*clip[:60], "gap", *clip[60:]]  # gap inside GOP 3 (50..74)
    infos, _ = await record(tmp_path, seg, script)
    first, second = infos
    assert first is not None and second is not None
    data = check_file(tmp_path, first)
    # Frames 50..59 came whole before the loss: written, as a last, shorter fragment.
    assert first.frames == 60 and len(first.fragments) == 3
    assert first.end_ns == T0_NS + 60 * FRAME_NS
    assert decode(tmp_path / first.relpath) == [i * 3600 for i in range(60)]
    assert len(data) == first.fragments[-1].offset + first.fragments[-1].size
    # The rest of GOP 3 may reference what was lost: dropped; the next segment starts at frame 75.
    assert second.start_ns == T0_NS + 75 * FRAME_NS and second.frames == 25
    assert decode(tmp_path / second.relpath) == [i * 3600 for i in range(25)]
    assert seg.frames_dropped == {"gap": 15}


async def test_a_segment_without_a_complete_gop_is_removed(tmp_path: Path, clip: list[AccessUnit]) -> None:
    # A GOP over the bound is dropped whole, its muxed keyframe included (Close with drop_tail):
    # a segment left with no fragment is no segment.
    seg = Segmenter(segment_ns=3600 * 10**9, phase_ns=0, max_gop_frames=5)
    infos, _ = await record(tmp_path, seg, clip[:10])
    assert infos == [None]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


async def test_existing_segment_or_partial_is_refused(tmp_path: Path, clip: list[AccessUnit]) -> None:
    relpath = segment_relpath("metz", "cam-1", T0_NS)
    (tmp_path / relpath).parent.mkdir(parents=True)
    (tmp_path / relpath).write_bytes(b"evidence")
    with pytest.raises(StorageError, match=r"create metz/cam-1/.*\.mp4\.partial: EEXIST"):
        await SegmentWriter.open(tmp_path, relpath, T0_NS, WIDTH, HEIGHT)
    assert (tmp_path / relpath).read_bytes() == b"evidence"
    assert not (tmp_path / (relpath + ".partial")).exists()

    other = segment_relpath("metz", "cam-1", T0_NS + 10**9)
    (tmp_path / (other + ".partial")).write_bytes(b"left by a crash")
    with pytest.raises(StorageError, match="EEXIST"):
        await SegmentWriter.open(tmp_path, other, T0_NS, WIDTH, HEIGHT)
    assert (tmp_path / (other + ".partial")).read_bytes() == b"left by a crash"


async def test_rename_never_replaces_an_existing_segment(tmp_path: Path, clip: list[AccessUnit]) -> None:
    relpath = segment_relpath("metz", "cam-1", T0_NS)
    writer = await SegmentWriter.open(tmp_path, relpath, T0_NS, WIDTH, HEIGHT)
    seg = Segmenter(segment_ns=3600 * 10**9, phase_ns=0)
    for i, au in enumerate(clip[:30]):
        for a in seg.push(au, T0_NS + i * FRAME_NS):
            if isinstance(a, Mux):
                await writer.write(a.frames)
    (tmp_path / relpath).write_bytes(b"appeared meanwhile")
    with pytest.raises(StorageError, match=r"rename .*EEXIST"):
        await writer.close(T0_NS + 30 * FRAME_NS, drop_tail=False)
    assert (tmp_path / relpath).read_bytes() == b"appeared meanwhile"


async def test_enospc_surfaces_as_storage_error(tmp_path: Path, clip: list[AccessUnit]) -> None:
    relpath = segment_relpath("metz", "cam-1", T0_NS)
    writer = await SegmentWriter.open(tmp_path, relpath, T0_NS, WIDTH, HEIGHT)
    seg = Segmenter(segment_ns=3600 * 10**9, phase_ns=0)
    muxes = [
        a for i, au in enumerate(clip[:60]) for a in seg.push(au, T0_NS + i * FRAME_NS) if isinstance(a, Mux)
    ]
    await writer.write(muxes[0].frames)  # ftyp + moov

    def full(_data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer._write_chunk = full  # type: ignore[method-assign,assignment]  # the write(2): never reaches the disk
    with pytest.raises(StorageError, match=r"write metz/cam-1/2026/.*\.mp4\.partial: ENOSPC") as exc:
        await writer.write(muxes[1].frames)
    assert str(tmp_path) not in str(exc.value)  # relative paths only
    with pytest.raises(StorageError, match="failed earlier"):
        await writer.write(muxes[2].frames)
    await writer.abort()
    assert (tmp_path / (relpath + ".partial")).exists()  # left for startup recovery
    assert not (tmp_path / relpath).exists()


async def test_one_write_per_gop(tmp_path: Path, clip: list[AccessUnit]) -> None:
    relpath = segment_relpath("metz", "cam-1", T0_NS)
    writer = await SegmentWriter.open(tmp_path, relpath, T0_NS, WIDTH, HEIGHT)
    calls: list[int] = []
    real_write = writer._write_chunk

    def counting(data: memoryview) -> int:
        calls.append(len(data))
        return real_write(data)

    writer._write_chunk = counting  # type: ignore[method-assign,assignment]
    seg = Segmenter(segment_ns=3600 * 10**9, phase_ns=0)
    for i, au in enumerate(clip):
        for a in seg.push(au, T0_NS + i * FRAME_NS):
            if isinstance(a, Mux):
                await writer.write(a.frames)
    (close,) = seg.stop()[-1:]
    assert isinstance(close, Close)
    info = await writer.close(close.end_ns, close.drop_tail)
    assert info is not None
    assert len(calls) == 1 + 3 + 1  # header, GOPs 0-2 when their successor's keyframe came, GOP 3 at close
    check_file(tmp_path, info)


# -- FragmentMuxer, synchronous -------------------------------------------------------------


def frames_of(aus: list[AccessUnit], start_ns: int = T0_NS) -> Iterator[Frame]:
    for i, au in enumerate(aus):
        yield Frame(au.annexb(), start_ns + i * FRAME_NS, FRAME_NS, au.keyframe)


def test_muxer_emits_whole_boxes_one_fragment_per_gop(clip: list[AccessUnit]) -> None:
    muxer = FragmentMuxer(WIDTH, HEIGHT)
    emitted: list[list[str]] = []
    for frame in frames_of(clip[:60]):
        data = muxer.mux([frame], T0_NS)
        if data:
            emitted.append([t for t, _, _ in iter_boxes(data)])
    emitted.append([t for t, _, _ in iter_boxes(muxer.close())])
    assert emitted == [["ftyp", "moov"], ["moof", "mdat"], ["moof", "mdat"], ["moof", "mdat"]]
    assert [(f.start_ns - T0_NS) // FRAME_NS for f in muxer.take_fragments()] == [0, 25, 50]
    assert muxer.close() == b""


def test_muxer_tracks_several_fragments_in_one_call(clip: list[AccessUnit]) -> None:
    muxer = FragmentMuxer(WIDTH, HEIGHT)
    data = muxer.mux(list(frames_of(clip)), T0_NS) + muxer.close()
    frags = muxer.take_fragments()
    assert [(f.frames, data[f.offset + 4 : f.offset + 8]) for f in frags] == [(25, b"moof")] * 4
    assert frags[-1].offset + frags[-1].size == len(data) == muxer.bytes_emitted
    with av.open(io.BytesIO(data), "r") as c:
        assert len(list(c.decode(video=0))) == 100


def test_muxer_nudges_non_increasing_timestamps(clip: list[AccessUnit]) -> None:
    muxer = FragmentMuxer(WIDTH, HEIGHT)
    frames = list(frames_of(clip[:30]))
    frames[5] = Frame(frames[5].data, frames[4].pts_ns, FRAME_NS, False)  # same pts as its predecessor
    data = muxer.mux(frames, T0_NS) + muxer.close()
    with av.open(io.BytesIO(data), "r") as c:
        pts = [int(f.pts or 0) for f in c.decode(video=0)]
    assert len(pts) == 30 and pts[5] == pts[4] + 1


def test_ns_to_ticks_is_exact() -> None:
    assert ns_to_ticks(FRAME_NS) == 3600
    assert ns_to_ticks(10 * 3600 * 10**9) == 10 * 3600 * 90000
    assert ns_to_ticks(11_111) == 1 and ns_to_ticks(5_555) == 0 and ns_to_ticks(5_556) == 1
    assert all(ns_to_ticks(n * FRAME_NS) == n * 3600 for n in range(0, 10**7, 99_991))


@pytest.mark.parametrize(
    ("buf", "message"),
    [
        (b"\x00\x00\x00\x10moof", "overruns"),
        (b"\x00\x00\x00", "truncated box header"),
        (b"\x00\x00\x00\x04free", "bad size 4"),
        (b"\x00\x00\x00\x01mdat\x00\x00", "truncated largesize"),
    ],
)
def test_iter_boxes_rejects_partial_boxes(buf: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        list(iter_boxes(buf))


def test_iter_boxes_largesize_and_to_end() -> None:
    large = b"\x00\x00\x00\x01mdat" + (20).to_bytes(8, "big") + b"abcd"
    to_end = b"\x00\x00\x00\x00mdat" + b"xyz"
    assert list(iter_boxes(large + to_end)) == [("mdat", 0, 20), ("mdat", 20, 11)]


def ffprobe_warnings(path: Path) -> str:
    """What ffprobe says while reading every packet of ``path`` (warnings and errors only)."""
    if shutil.which("ffprobe") is None:
        skip_or_fail("ffprobe (Debian package ffmpeg) is not installed")
    done = subprocess.run(
        ["ffprobe", "-v", "warning", "-show_packets", "-of", "csv", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stderr


async def test_b_frames_recorded_with_composition_offsets_ffprobe_clean(tmp_path: Path) -> None:
    """libx264 with 2 B-frames: RTP times in presentation order, units in decode order. Every
    frame is recorded, decodes to the same pictures in the same order as the raw stream, the
    first keyframe's pts minus its dts is the segment's decode delay, and ffprobe reads the file
    without a warning (no non-monotonic DTS)."""
    aus = encode(100, bframes=2)
    assert any(b.rtp_timestamp < a.rtp_timestamp for a, b in itertools.pairwise(aus)), "no B-frames"
    seg = Segmenter(segment_ns=3600 * 10**9, phase_ns=0)
    infos: list[SegmentInfo | None] = []
    writer: SegmentWriter | None = None
    for au in [*aus, None]:
        actions = seg.stop() if au is None else seg.push(au, T0_NS + au.rtp_timestamp * 100_000 // 9)
        for a in actions:
            if isinstance(a, Open):
                writer = await SegmentWriter.open(
                    tmp_path,
                    segment_relpath("metz", "cam-b", a.start_ns),
                    a.start_ns,
                    WIDTH,
                    HEIGHT,
                    reorder_ns=a.reorder_ns,
                )
            elif isinstance(a, Mux):
                assert writer is not None
                await writer.write(a.frames)
            elif isinstance(a, Close):
                assert writer is not None
                infos.append(await writer.close(a.end_ns, a.drop_tail))
    assert seg.reorder_ns > 0
    kept = [i for i in infos if i is not None]
    assert len(kept) == 1 and kept[0].frames == 100 and seg.frames_dropped == {}
    path = tmp_path / kept[0].relpath
    check_file(tmp_path, kept[0])
    assert ffprobe_warnings(path) == ""
    with av.open(str(path), "r") as c:
        packets = [p for p in c.demux(video=0) if p.size]
        dts = [int(p.dts) for p in packets]
        assert dts == sorted(dts) and len(set(dts)) == len(dts)
        assert all(int(p.pts) >= int(p.dts) for p in packets)
        assert int(packets[0].pts) - int(packets[0].dts) == ns_to_ticks(seg.reorder_ns)
    with av.open(str(path), "r") as c:
        recorded = [f.to_ndarray(format="gray").tobytes() for f in c.decode(video=0)]
    raw = av.CodecContext.create("h264", "r")
    reference = []
    for au in [*aus, None]:
        for f in raw.decode(None if au is None else av.Packet(au.annexb())):
            reference.append(f.to_ndarray(format="gray").tobytes())
    assert len(recorded) == 100 and recorded == reference


def test_muxer_without_reorder_keeps_dts_equal_pts(clip: list[AccessUnit]) -> None:
    muxer = FragmentMuxer(WIDTH, HEIGHT)
    data = muxer.mux(list(frames_of(clip[:30])), T0_NS) + muxer.close()
    with av.open(io.BytesIO(data), "r") as c:
        packets = [p for p in c.demux(video=0) if p.size]
    assert [(int(p.pts), int(p.dts)) for p in packets] == [(i * 3600, i * 3600) for i in range(30)]
