"""The simulator's clip (encode, cache, invariants) and its precomputed RTP blobs."""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from csud.media.h264 import NAL_IDR, NAL_PPS, NAL_SPS, NAL_TYPE_MASK, H264Depacketizer
from csud.media.rtp import parse_header
from csud.media.units import AccessUnit
from csud.sim import clip as clip_module
from csud.sim.clip import Clip, ClipParams, load_clip, parse_annexb
from csud.sim.packets import PAYLOAD_TYPE, packetize_clip, patch_frame

PARAMS = ClipParams(width=640, height=360, fps=25, bitrate=1_000_000, gop_seconds=1.0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clip-cache")


@pytest.fixture(scope="module")
def clip(cache_dir: Path) -> Clip:
    return load_clip(PARAMS, cache_dir=cache_dir)


def types(nals: tuple[bytes, ...]) -> list[int]:
    return [n[0] & NAL_TYPE_MASK for n in nals]


def test_frame_count_and_gop_structure(clip: Clip) -> None:
    assert PARAMS.gop_frames == 25
    assert len(clip.frames) == PARAMS.n_frames == 100  # max(4 s, 2 GOPs), whole GOPs
    for index, frame in enumerate(clip.frames):
        assert frame.keyframe == (index % 25 == 0), index
        assert (NAL_IDR in types(frame.nals)) == frame.keyframe
        if frame.keyframe:
            assert types(frame.nals)[:2] == [NAL_SPS, NAL_PPS]
        else:
            assert not {NAL_SPS, NAL_PPS} & set(types(frame.nals))
    assert clip.sps == clip.frames[0].nals[0] and clip.pps == clip.frames[0].nals[1]
    assert clip.profile_level_id == clip.sps[1:4].hex().upper()


def test_mean_bitrate_within_15_percent(clip: Clip) -> None:
    assert abs(clip.mean_bitrate / PARAMS.bitrate - 1) <= 0.15, clip.mean_bitrate
    # Real texture, not a trickle: P-frames are not near-empty.
    assert min(f.size for f in clip.frames) > PARAMS.bitrate / 8 / PARAMS.fps / 4


def test_parameter_sets_stripped_on_request(cache_dir: Path, clip: Clip) -> None:
    bare = load_clip(PARAMS, cache_dir=cache_dir, inband_parameter_sets=False)
    assert not bare.inband_parameter_sets
    assert bare.sps == clip.sps and bare.pps == clip.pps
    assert not any({NAL_SPS, NAL_PPS} & set(types(f.nals)) for f in bare.frames)
    assert [f.keyframe for f in bare.frames] == [f.keyframe for f in clip.frames]
    assert types(bare.frames[0].nals)[-1] == NAL_IDR


def test_every_frame_decodes(clip: Clip) -> None:
    codec = av.CodecContext.create("h264", "r")
    data = clip.annexb()
    frames = [f for p in codec.parse(data) + codec.parse(None) for f in codec.decode(p)]
    frames += codec.decode(None)
    assert len(frames) == len(clip.frames)
    assert (frames[0].width, frames[0].height) == (640, 360)


def test_cache_is_used_and_a_bad_cache_is_replaced(
    cache_dir: Path, clip: Clip, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = cache_dir / f"{PARAMS.cache_key()}.h264"
    assert path.exists()
    assert not list(cache_dir.glob("*.tmp"))

    def no_encoding(params: ClipParams) -> bytes:
        raise AssertionError("encoded again despite the cache")

    monkeypatch.setattr(clip_module, "encode_annexb", no_encoding)
    assert load_clip(PARAMS, cache_dir=cache_dir).frames == clip.frames
    monkeypatch.undo()

    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated: wrong frame count, re-encoded
    assert load_clip(PARAMS, cache_dir=cache_dir).frames == clip.frames
    assert path.read_bytes() == good  # the encoder is deterministic


def test_cache_key_depends_on_every_parameter() -> None:
    keys = {
        PARAMS.cache_key(),
        ClipParams(640, 360, 25, 1_000_001).cache_key(),
        ClipParams(642, 360, 25, 1_000_000).cache_key(),
        ClipParams(640, 360, 30, 1_000_000).cache_key(),
        ClipParams(640, 360, 25, 1_000_000, gop_seconds=2).cache_key(),
        ClipParams(640, 360, 25, 1_000_000, seed=1).cache_key(),
    }
    assert len(keys) == 6


@pytest.mark.parametrize(
    ("fps", "gop_seconds", "gop_frames", "n_frames"),
    [(25, 1.0, 25, 100), (25, 2.0, 50, 100), (10, 2.0, 20, 40), (30, 0.5, 15, 120), (25, 4.0, 100, 200)],
)
def test_clip_length_is_whole_gops(fps: int, gop_seconds: float, gop_frames: int, n_frames: int) -> None:
    params = ClipParams(fps=fps, gop_seconds=gop_seconds)
    assert (params.gop_frames, params.n_frames) == (gop_frames, n_frames)


@pytest.mark.parametrize(
    "kwargs", [{"width": 15}, {"height": 241}, {"fps": 0}, {"bitrate": 100}, {"gop_seconds": 0}]
)
def test_bad_params_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ClipParams(**kwargs)  # type: ignore[arg-type]


def test_parse_refuses_a_broken_gop_structure(clip: Clip) -> None:
    data = b"".join(
        b"\x00\x00\x00\x01\x09\xf0" + b"".join(b"\x00\x00\x00\x01" + n for n in f.nals) for f in clip.frames
    )
    assert parse_annexb(PARAMS, data).frames == clip.frames
    with pytest.raises(ValueError, match="expected 100"):
        parse_annexb(PARAMS, data[: len(data) // 2])
    with pytest.raises(ValueError, match="GOP structure"):
        parse_annexb(ClipParams(640, 360, 25, 1_000_000, gop_seconds=2.0), data)


# --- packetized blobs ---------------------------------------------------------------------


def test_blobs_depacketize_to_the_clip(clip: Clip) -> None:
    frames = packetize_clip(clip, mtu_payload=1200)
    assert len(frames) == len(clip.frames)
    depacketizer = H264Depacketizer()
    seq, ssrc = 65530, 0xDEADBEEF  # the sequence number wraps inside the clip
    for n, frame in enumerate(frames):
        assert frame.blob[:2] == b"$\x00"
        blob = patch_frame(frame, seq, 1000 + n * 3600, ssrc, channel=2)
        assert frame.blob[frame.packet_offsets[0] + 4 + 2 : frame.packet_offsets[0] + 4 + 4] == b"\x00\x00"
        offsets = []
        pos = 0
        while pos < len(blob):
            assert blob[pos] == 0x24 and blob[pos + 1] == 2
            length = int.from_bytes(blob[pos + 2 : pos + 4], "big")
            assert length <= 1200 + 12
            offsets.append(pos)
            pt, p_seq, ts, p_ssrc, marker, _, _ = parse_header(blob, pos + 4, pos + 4 + length)
            assert (pt, p_seq, ts, p_ssrc) == (PAYLOAD_TYPE, seq % 65536, 1000 + n * 3600, ssrc)
            assert marker == (pos + 4 + length == len(blob))  # marker on the last packet only
            depacketizer.feed(blob, pos + 4, pos + 4 + length)
            seq += 1
            pos += 4 + length
        assert tuple(offsets) == frame.packet_offsets
        assert frame.payload_octets == len(blob) - frame.packet_count * 16
    next_blob = patch_frame(frames[0], seq, 1000 + len(frames) * 3600, ssrc)
    depacketizer.feed(next_blob, 4, 4 + int.from_bytes(next_blob[2:4], "big"))  # closes the last AU
    units = [e for e in depacketizer.take_events() if isinstance(e, AccessUnit)]
    assert [tuple(u.nals) for u in units] == [f.nals for f in clip.frames]
    assert depacketizer.lost_packets == 0
