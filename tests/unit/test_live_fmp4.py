"""The live fMP4 builder and the fan-out: what a browser receives decodes, and stays bounded."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import av
import pytest

from csud.live import fmp4
from csud.live.fanout import CameraFeed, Viewer
from csud.media.h264 import NAL_PPS, NAL_SPS
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
