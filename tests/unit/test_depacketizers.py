"""What the H.264 and H.265 depacketizers share, tested once over both codecs.

Each codec's own module (test_h264.py, test_h265.py) keeps what differs: NAL unit headers,
FU-A/FU and STAP-A/AP layouts, type-specific errors, SPS parsing. The streams here are built with
each module's own helpers, so the same assertions run on both payload formats.
"""

from __future__ import annotations

from types import ModuleType

import av
import pytest

from csud.media.codec import CODECS, H264, H265, Codec, codec_for_encoding
from csud.media.rtp import Buffer, build_rtp
from csud.media.units import AccessUnit
from tests.unit import test_h264, test_h265

CODEC_TESTS = [pytest.param(H264, test_h264, id="h264"), pytest.param(H265, test_h265, id="h265")]


@pytest.mark.parametrize(("codec", "t"), CODEC_TESTS)
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_feed_at_offsets_in_a_reused_buffer(codec: Codec, t: ModuleType, kind: str) -> None:
    """Packets inside a larger buffer (TCP interleaved); the buffer is reused afterwards."""
    packets = t.FU_STREAM
    joined = b"".join(b"$\x00" + len(p).to_bytes(2, "big") + p for p in packets)
    store = bytearray(joined)
    buffers: dict[str, Buffer] = {"bytes": joined, "bytearray": store, "memoryview": memoryview(store)}
    d = codec.depacketizer()
    pos = 0
    for p in packets:
        d.feed(buffers[kind], pos + 4, pos + 4 + len(p))
        pos += 4 + len(p)
    store[:] = bytes(len(store))  # the caller reuses its buffer: nothing kept may alias it
    assert list(d.take_events()) == [t.au(t.T0, t.KEY_AU), t.au(t.T1, [t.IDR_BIG]), t.au(t.T2, [t.P_SMALL])]


@pytest.mark.parametrize(("codec", "t"), CODEC_TESTS)
def test_counters(codec: Codec, t: ModuleType) -> None:
    d = codec.depacketizer()
    packets = t.Stream().au([t.SPS, t.PPS, t.IDR_SMALL], t.T0).au([t.P_BIG], t.T1).packets()
    for p in packets:
        d.feed(p)
    assert d.packets == len(packets)
    assert d.bytes == sum(map(len, packets))
    assert d.access_units == 2
    events = d.take_events()
    assert [type(e) for e in events] == [AccessUnit, AccessUnit]
    assert [e.keyframe for e in events if isinstance(e, AccessUnit)] == [True, False]
    assert d.take_events() == []


@pytest.mark.parametrize(("codec", "t"), CODEC_TESTS)
def test_take_events_hands_over_the_list(codec: Codec, t: ModuleType) -> None:
    d = codec.depacketizer()
    d.feed(build_rtp(t.PT, 1, 0, t.SSRC, True, t.IDR_SMALL))
    first = d.take_events()
    d.feed(build_rtp(t.PT, 2, 1, t.SSRC, True, t.P_SMALL))
    assert first == [t.au(0, [t.IDR_SMALL])]
    assert d.take_events() == [t.au(1, [t.P_SMALL])]


# --- the Codec record ----------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "t"), CODEC_TESTS)
def test_codec_record_agrees_with_its_payload_format(codec: Codec, t: ModuleType) -> None:
    fmt = codec.payload_format
    assert set(codec.param_types) == fmt.parameter_set_types
    assert codec.sps_type == codec.param_types[-2]
    assert codec.nal_type(t.SPS) == codec.sps_type and codec.nal_type(t.PPS) == codec.param_types[-1]
    assert codec.nal_type(t.IDR_SMALL) in codec.key_types
    assert codec.nal_type(b"") == -1
    assert codec_for_encoding(codec.encoding.lower()) is codec is CODECS[codec.encoding]


def test_an_unrecorded_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported codec VP8"):
        codec_for_encoding("VP8")


@pytest.mark.parametrize("codec", [H264, H265], ids=["h264", "h265"])
def test_the_muxer_writes_the_sample_entry_the_record_names(codec: Codec) -> None:
    """Encode two frames with the codec's encoder and mux them as the writer does."""
    from fractions import Fraction

    from csud.media.h264 import split_annexb
    from csud.recording.segmenter import Frame
    from csud.recording.writer import FragmentMuxer

    encoder = av.CodecContext.create({"h264": "libx264", "hevc": "libx265"}[codec.av_name], "w")
    encoder.width, encoder.height, encoder.pix_fmt = 64, 64, "yuv420p"
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"preset": "ultrafast"}
    packets = []
    for i in range(3):
        frame = av.VideoFrame(64, 64, "yuv420p")
        frame.pts = i
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    muxer = FragmentMuxer(64, 64, codec=codec.av_name)
    annexb = [b"".join(b"\x00\x00\x00\x01" + n for n in split_annexb(bytes(p))) for p in packets]
    frames = [Frame(data, i * 40_000_000, 40_000_000, i == 0) for i, data in enumerate(annexb)]
    out = muxer.mux(frames, 0) + muxer.close()
    assert codec.sample_entry.encode() in out
