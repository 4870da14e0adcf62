"""The live fMP4 builder and the fan-out: what a browser receives decodes, and stays bounded."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from csud.live import fmp4
from csud.live.fanout import CameraFeed, Viewer
from csud.media import h265
from csud.media.h264 import NAL_PPS, NAL_SPS, split_annexb
from csud.media.units import AccessUnit
from tests.conftest import skip_or_fail
from tests.media import encode


def _params(aus: list[AccessUnit]) -> list[bytes]:
    nals = aus[0].nals
    return [next(n for n in nals if n[0] & 0x1F == t) for t in (NAL_SPS, NAL_PPS)]


def _stream(aus: list[AccessUnit]) -> bytes:
    track = fmp4.init_segment("h264", _params(aus))
    out = [track.init]
    for i, au in enumerate(aus):
        out.append(fmp4.fragment(i + 1, i * 3600, 3600, au.nals, au.keyframe))
    return b"".join(out)


def test_init_segment_describes_the_track() -> None:
    aus = encode(2)
    track = fmp4.init_segment("h264", _params(aus))
    assert (track.width, track.height) == (320, 240)
    assert track.codec_string.startswith("avc1.")
    assert track.init[4:8] == b"ftyp" and b"moov" in track.init and b"avcC" in track.init


def test_missing_parameter_sets_are_refused() -> None:
    with pytest.raises(ValueError, match="needs an SPS and a PPS"):
        fmp4.init_segment("h264", [])
    with pytest.raises(ValueError, match="no live viewing for codec"):
        fmp4.init_segment("mjpeg", [])


def test_pyav_decodes_init_and_fragments() -> None:
    aus = encode(30, gop=10)
    with av.open(io.BytesIO(_stream(aus)), format="mp4") as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 30
    assert (frames[0].width, frames[0].height) == (320, 240)
    assert [round(float(f.time), 2) for f in frames[:3]] == [0.0, 0.04, 0.08]


def test_ffprobe_reads_every_frame(tmp_path: Path) -> None:
    if shutil.which("ffprobe") is None:
        skip_or_fail("ffprobe (Debian ffmpeg) not installed")
    path = tmp_path / "live.mp4"
    path.write_bytes(_stream(encode(20, gop=10)))
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,nb_read_frames", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    stream = json.loads(out)["streams"][0]
    assert stream == {"codec_name": "h264", "nb_read_frames": "20"}


# -- fan-out --------------------------------------------------------------------------------


def _feed(aus: list[AccessUnit], feed: CameraFeed, start: int = 0, stop: int | None = None) -> None:
    params = _params(aus)
    for i, au in enumerate(aus[start:stop], start):
        feed.on_frame(au, "h264", params, 1_000 + i)


def _drain(viewer: Viewer) -> list[bytes | str]:
    out: list[bytes | str] = []
    while viewer.queued_bytes:
        item = viewer._items.popleft()  # test-only: the queue without an event loop
        viewer._bytes -= len(item[0])
        out.append(item[0])
    return out


def test_new_viewer_starts_at_latest_keyframe_with_shared_fragments() -> None:
    aus = encode(25, gop=10)
    feed = CameraFeed("cam1")
    _feed(aus, feed, 0, 13)  # keyframes at 0 and 10: the kept GOP is frames 10..12
    a, b = feed.attach(Viewer()), feed.attach(Viewer())
    _feed(aus, feed, 13)
    ma, mb = _drain(a), _drain(b)
    assert ma[0] == feed.track.init if feed.track else False
    assert json.loads(ma[1])["type"] == "init"
    assert len(ma) == 2 + 15  # init, event, frames 10..24
    assert all(x is y for x, y in zip(ma[2:], mb[2:], strict=True))  # built once, shared
    with av.open(io.BytesIO(b"".join(m for m in ma if isinstance(m, bytes))), format="mp4") as c:
        assert len(list(c.decode(video=0))) == 15


def test_slow_viewer_skips_to_next_keyframe_and_is_told() -> None:
    aus = encode(40, gop=10)
    skipped: list[int] = []
    feed = CameraFeed("cam1", on_skipped=skipped.append)
    _feed(aus, feed, 0, 1)
    slow = feed.attach(Viewer(max_items=8))  # init, event, 6 frames, then full
    fast = feed.attach(Viewer())
    _feed(aus, feed, 1, 25)
    messages = _drain(slow)
    events = [json.loads(m) for m in messages if isinstance(m, str)]
    told = [e["frames"] for e in events if e["type"] == "skipped"]
    assert told and sum(told) == sum(skipped) > 0  # every lost frame counted and announced
    assert slow.skipped_total == sum(skipped)
    frames = [m for m in messages if isinstance(m, bytes) and m[4:8] == b"moof"]
    with av.open(io.BytesIO(b"".join(m for m in messages if isinstance(m, bytes))), format="mp4") as c:
        assert len(list(c.decode(video=0))) == len(frames)  # what it got decodes
    assert len([m for m in _drain(fast) if isinstance(m, bytes)]) == 1 + 25


def test_parameter_change_sends_new_init() -> None:
    small, large = encode(10, gop=10), encode(10, width=640, height=480, gop=10)
    feed = CameraFeed("cam1")
    viewer = feed.attach(Viewer())
    _feed(small, feed)
    _feed(large, feed)
    messages = _drain(viewer)
    inits = [m for m in messages if isinstance(m, bytes) and m[4:8] == b"ftyp"]
    assert len(inits) == 2
    assert any(isinstance(m, str) and json.loads(m)["type"] == "codec_changed" for m in messages)
    assert fmp4.init_segment("h264", _params(large)).init == inits[1]


# -- H.265 (hvcC) ---------------------------------------------------------------------------


def _encode_hevc(frames: int, gop: int = 10) -> list[AccessUnit]:
    """A small H.265 clip through PyAV's libx265: no B-frames, VPS/SPS/PPS in-band."""
    if "libx265" not in av.codecs_available:
        skip_or_fail("PyAV built without libx265")
    enc = av.CodecContext.create("libx265", "w")
    enc.width, enc.height, enc.pix_fmt = 320, 240, "yuv420p"
    enc.time_base = Fraction(1, 25)
    enc.framerate = Fraction(25)
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:repeat-headers=1:log-level=error"
    enc.options = {"preset": "ultrafast", "tune": "zerolatency", "x265-params": params}
    rng = np.random.default_rng(2)
    out: list[AccessUnit] = []
    for i in range(frames + 1):
        if i < frames:
            img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            packets = enc.encode(frame)
        else:
            packets = enc.encode(None)
        for p in packets:
            nals = split_annexb(bytes(p))
            keyframe = any(h265.is_keyframe_nal(n) for n in nals)
            out.append(AccessUnit(len(out) * 3600, nals, keyframe, sum(map(len, nals))))
    assert len(out) == frames
    return out


def _hevc_params(aus: list[AccessUnit]) -> list[bytes]:
    types = (h265.NAL_VPS, h265.NAL_SPS, h265.NAL_PPS)
    return [next(n for n in aus[0].nals if h265.nal_type(n) == t) for t in types]


def test_hevc_init_and_fragments_decode_with_pyav_and_ffprobe(tmp_path: Path) -> None:
    aus = _encode_hevc(20)
    assert aus[0].keyframe and aus[10].keyframe
    track = fmp4.init_segment("hevc", _hevc_params(aus))
    assert track.codec_string.startswith("hvc1.") and b"hvcC" in track.init
    assert (track.width, track.height) == (320, 240)
    feed = CameraFeed("cam1")
    viewer = feed.attach(Viewer())
    for i, au in enumerate(aus):
        feed.on_frame(au, "hevc", _hevc_params(aus), 1_000 + i)
    stream = b"".join(m for m in _drain(viewer) if isinstance(m, bytes))
    assert stream.startswith(track.init)
    with av.open(io.BytesIO(stream), format="mp4") as c:
        assert c.streams.video[0].codec_context.name == "hevc"
        frames = list(c.decode(video=0))
    assert len(frames) == 20 and (frames[0].width, frames[0].height) == (320, 240)
    if shutil.which("ffprobe") is None:
        skip_or_fail("ffprobe (Debian ffmpeg) not installed")
    path = tmp_path / "live-hevc.mp4"
    path.write_bytes(stream)
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,codec_tag_string,nb_read_frames", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert json.loads(out)["streams"][0] == {
        "codec_name": "hevc",
        "codec_tag_string": "hvc1",
        "nb_read_frames": "20",
    }


# -- direct writes (the viewer's sink) --------------------------------------------------------


class _Sock:
    """A socket that takes everything until ``backed_up`` is set."""

    def __init__(self) -> None:
        self.sent: list[bytes | str] = []
        self.backed_up = False

    def offer(self, message: bytes | str, received_ns: int) -> bool:
        if self.backed_up:
            return False
        self.sent.append(message)
        return True


def test_viewer_writes_straight_to_its_socket_while_its_queue_is_empty() -> None:
    aus = encode(30, gop=10)
    sent: list[int] = []
    feed = CameraFeed("cam1", on_sent=sent.append)
    sock = _Sock()
    viewer = feed.attach(Viewer(sink=sock.offer))
    _feed(aus, feed, 0, 12)
    assert viewer.queued_bytes == 0 and not viewer._wake.is_set()  # no sender wake-up per frame
    assert len(sock.sent) == 2 + 12  # init, event, 12 frames
    assert sent == [1_000 + i for i in range(12)]  # one latency sample per frame sent directly
    sock.backed_up = True  # the socket's send buffer is full: frames wait in the queue, in order
    _feed(aus, feed, 12, 15)
    assert len(viewer._items) == 3 and viewer._wake.is_set()
    assert len(sent) == 12  # queued frames are observed by the sender when written
    sock.backed_up = False  # even now, a new frame goes behind the queued ones, not before
    _feed(aus, feed, 15, 18)
    assert len(sock.sent) == 14 and len(viewer._items) == 6
    stream = b"".join(m for m in [*sock.sent, *_drain(viewer)] if isinstance(m, bytes))
    with av.open(io.BytesIO(stream), format="mp4") as c:
        assert len(list(c.decode(video=0))) == 18
    _feed(aus, feed, 18, 20)  # drained: straight to the socket again
    assert len(sock.sent) == 16 and viewer.queued_bytes == 0


def _sample_flags(fragment: bytes) -> int:
    end = (
        fragment.index(b"trun")
        - 4
        + int.from_bytes(fragment[fragment.index(b"trun") - 4 : fragment.index(b"trun")])
    )
    return int.from_bytes(fragment[end - 4 : end], "big")


def test_backed_up_socket_keeps_the_bounded_queue_and_skips_to_a_keyframe() -> None:
    aus = encode(40, gop=10)
    skipped: list[int] = []
    feed = CameraFeed("cam1", on_skipped=skipped.append)
    sock = _Sock()
    viewer = feed.attach(Viewer(max_items=4, sink=sock.offer))
    _feed(aus, feed, 0, 3)
    sock.backed_up = True
    _feed(aus, feed, 3, 22)  # 4 queued, then full: skip to the keyframe at 10, again at 20
    assert viewer.queued_bytes > 0 and len(viewer._items) == 3  # skipped event, frames 20 and 21
    assert sum(skipped) > 0 and viewer.skipped_total == sum(skipped)
    queued = _drain(viewer)
    assert any(isinstance(m, str) and json.loads(m)["type"] == "skipped" for m in queued)
    assert isinstance(queued[1], bytes) and _sample_flags(queued[1]) == fmp4.SAMPLE_FLAGS_SYNC  # a keyframe
    stream = b"".join(m for m in [*sock.sent, *queued] if isinstance(m, bytes))
    with av.open(io.BytesIO(stream), format="mp4") as c:
        decoded = len(list(c.decode(video=0)))
    assert decoded == len([m for m in [*sock.sent, *queued] if isinstance(m, bytes) and m[4:8] == b"moof"])


def test_media_time_is_the_rtp_timestamp() -> None:
    aus = encode(3, gop=10)
    base = 4_000_000_000  # near the 32-bit wrap
    feed = CameraFeed("cam1")
    viewer = feed.attach(Viewer())
    for i, au in enumerate(aus):
        au.rtp_timestamp = (base + i * 3600) % (1 << 32)
        feed.on_frame(au, "h264", _params(aus), 1)
    frames = [m for m in _drain(viewer) if isinstance(m, bytes) and m[4:8] == b"moof"]
    tfdt = [int.from_bytes(m[m.index(b"tfdt") + 8 : m.index(b"tfdt") + 16], "big") for m in frames]
    assert tfdt == [base, base + 3600, base + 7200]  # unwrapped past 2^32
