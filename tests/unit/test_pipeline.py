"""The recording pipeline, driven like aioquic drives a connection: recorded bytes in, a fake
clock, commands out. No socket, no sleep, no event loop.

The recording is the simulator's own: its clip, packetized and patched (sequence numbers,
timestamps, SSRC) exactly as ``csud simulate`` writes it onto the RTSP connection, interleaved
``$`` framing included. It is built once per test session.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest

from csud.media.codec import H264
from csud.media.h264 import packetize_au
from csud.media.rtp import ReceiverReport, build_rtp, parse_rtcp_packets
from csud.media.units import AccessUnit
from csud.recording.pipeline import (
    HEALTHY_SESSION_SECONDS,
    RTCP_REPORT_SECONDS,
    Backoff,
    Close,
    Command,
    Connect,
    Fail,
    KeepAlive,
    Log,
    Mux,
    Open,
    RecordingPipeline,
    SendRtcp,
)
from csud.recording.stats import CameraStats
from csud.sim.clip import ClipParams, load_clip
from csud.sim.packets import PAYLOAD_TYPE, PacketizedFrame, packetize_clip, patch_frame
from tests.helpers import NS_PER_SECOND

FPS = 25
FRAME_NS = NS_PER_SECOND // FPS
TICKS_PER_FRAME = 90_000 // FPS
SSRC = 0x1234_5678
T0_NS = 1_800_000_000 * NS_PER_SECOND  # the server's wall clock at the first frame
T0 = 1000.0  # monotonic seconds at the first frame
STALL_SECONDS = 4.0


@dataclass(frozen=True)
class Capture:
    """The bytes of one TCP-interleaved session, frame by frame, as they came off the socket."""

    frames: tuple[bytes, ...]  # one interleaved blob per access unit
    keyframes: tuple[bool, ...]
    packet_offsets: tuple[tuple[int, ...], ...]
    sps: bytes
    pps: bytes


@pytest.fixture(scope="module")
def capture() -> Capture:
    clip = load_clip(ClipParams(width=320, height=240, fps=FPS, bitrate=300_000, gop_seconds=1.0))
    packetized: Sequence[PacketizedFrame] = packetize_clip(clip)
    frames, seq = [], 0
    for i, frame in enumerate(packetized[: 3 * FPS]):  # three GOPs
        frames.append(bytes(patch_frame(frame, seq, (i * TICKS_PER_FRAME) & 0xFFFF_FFFF, SSRC)))
        seq += frame.packet_count
    return Capture(
        tuple(frames),
        tuple(f.keyframe for f in packetized[: 3 * FPS]),
        tuple(f.packet_offsets for f in packetized[: 3 * FPS]),
        clip.sps,
        clip.pps,
    )


def new_pipeline(seed: int = 7, stats: CameraStats | None = None) -> RecordingPipeline:
    return RecordingPipeline(
        segment_ns=60 * NS_PER_SECOND,
        phase_ns=0,
        stall_seconds=STALL_SECONDS,
        rng=random.Random(seed),
        stats=stats,
    )


def playing(capture: Capture, session_timeout: float = 60.0) -> RecordingPipeline:
    """A pipeline as after a successful DESCRIBE/SETUP/PLAY at ``T0``."""
    pipe = new_pipeline()
    assert pipe.on_timer(T0, T0_NS) == [Connect()]
    pipe.describe("H264", PAYLOAD_TYPE, (capture.sps, capture.pps))
    pipe.session_started(T0, session_timeout)
    return pipe


def chunks(data: bytes, sizes: Iterator[int]) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        size = next(sizes)
        yield data[pos : pos + size]
        pos += size


def writer_commands(commands: Sequence[Command]) -> list[Command]:
    return [c for c in commands if isinstance(c, Open | Mux | Close)]


def frames_muxed(commands: Sequence[Command]) -> int:
    return sum(len(c.frames) for c in commands if isinstance(c, Mux))


def test_a_replayed_session_is_recorded_whatever_the_tcp_reads(capture: Capture) -> None:
    """The same bytes give the same commands whether read whole, in odd chunks or byte by byte."""
    results = []
    rng = random.Random(3)
    readers: list[Callable[[], int]] = [lambda: 1 << 20, lambda: rng.choice([1, 7, 1400, 9000]), lambda: 1]
    for read_size in readers:
        sizes = iter(read_size, None)
        pipe = playing(capture)
        out: list[Command] = []
        for i, blob in enumerate(capture.frames):
            for piece in chunks(blob, sizes):
                out += pipe.feed(piece, T0_NS + i * FRAME_NS)
        out += pipe.session_ended(T0 + 3.0, stopping=True)
        results.append(writer_commands(out))
    assert results[0] == results[1] == results[2]
    commands = results[0]
    assert isinstance(commands[0], Open) and commands[0].codec is H264
    assert commands[0].start_ns == T0_NS and commands[0].sps == capture.sps
    assert isinstance(commands[-1], Close) and [type(c) for c in commands].count(Open) == 1
    assert frames_muxed(commands) == len(capture.frames)  # the clip starts at a keyframe


def test_keep_alive_is_due_at_half_the_session_timeout(capture: Capture) -> None:
    pipe = playing(capture, session_timeout=10.0)
    keepalives = []
    now = T0
    for i, blob in enumerate(capture.frames * 2):  # 6 s of media, timers fired when due
        now = T0 + i / FPS
        pipe.feed(blob, T0_NS + i * FRAME_NS)
        deadline = pipe.next_deadline()
        assert deadline is not None
        if deadline <= now:
            keepalives += [now for c in pipe.on_timer(now, T0_NS + i * FRAME_NS) if isinstance(c, KeepAlive)]
    assert keepalives == [pytest.approx(T0 + 5.0, abs=1 / FPS)]


def test_a_receiver_report_every_five_seconds(capture: Capture) -> None:
    pipe = playing(capture)
    for i, blob in enumerate(capture.frames[:10]):
        pipe.feed(blob, T0_NS + i * FRAME_NS)
    assert not any(isinstance(c, SendRtcp) for c in pipe.on_timer(T0 + 1.0, T0_NS + NS_PER_SECOND))
    (report,) = [c for c in pipe.on_timer(T0 + RTCP_REPORT_SECONDS, T0_NS) if isinstance(c, SendRtcp)]
    (rr,) = parse_rtcp_packets(report.data)
    assert isinstance(rr, ReceiverReport) and rr.reports[0].ssrc == SSRC
    assert rr.reports[0].highest_seq == sum(len(offsets) for offsets in capture.packet_offsets[:10]) - 1


def test_a_stall_fails_the_session_once_no_rtp_came_for_stall_seconds(capture: Capture) -> None:
    pipe = playing(capture)
    for i, blob in enumerate(capture.frames[:25]):  # one second of media, then nothing
        pipe.feed(blob, T0_NS + i * FRAME_NS)
    fails: list[tuple[float, Fail]] = []
    now = T0
    for _ in range(100):  # bounded: the stall is due within STALL_SECONDS + one check
        deadline = pipe.next_deadline()
        assert deadline is not None and deadline > now  # never a busy loop
        now = deadline
        fails += [(now, c) for c in pipe.on_timer(now, T0_NS) if isinstance(c, Fail)]
        if fails:
            break
    ((at, fail),) = fails
    assert "stall" in fail.reason
    # Progress was last seen at the first check after the media stopped (T0 + 1 s at the latest).
    assert T0 + STALL_SECONDS < at <= T0 + 1.0 + STALL_SECONDS + 1.0


def test_media_keeps_the_stall_away(capture: Capture) -> None:
    pipe = playing(capture)
    for i, blob in enumerate(capture.frames):  # three seconds, timers on time
        now = T0 + (i + 1) / FPS
        pipe.feed(blob, T0_NS + i * FRAME_NS)
        deadline = pipe.next_deadline()
        if deadline is not None and deadline <= now:
            assert not any(isinstance(c, Fail) for c in pipe.on_timer(now, T0_NS))


def test_backoff_sequence_after_failures_is_seeded_and_doubles_to_the_cap(capture: Capture) -> None:
    def delays(seed: int) -> list[float]:
        pipe = new_pipeline(seed)
        out = []
        now = T0
        for _ in range(9):
            assert pipe.on_timer(now, T0_NS) == [Connect()]
            pipe.session_ended(now + 0.5)  # refused at once
            deadline = pipe.next_deadline()
            assert deadline is not None
            assert pipe.on_timer(deadline - 0.01, T0_NS) == []  # not yet
            out.append(deadline - (now + 0.5))
            now = deadline
        return out

    first = delays(7)
    assert first == delays(7)  # the injected seed decides, not the random module
    assert first != delays(8)
    for delay, base in zip(first, [1, 2, 4, 8, 16, 32, 60, 60, 60], strict=True):
        assert base / 2 <= delay <= base


def test_a_healthy_session_resets_the_backoff(capture: Capture) -> None:
    pipe = new_pipeline()
    now = T0
    for _ in range(4):  # back off to 8-16 s
        pipe.on_timer(now, T0_NS)
        pipe.session_ended(now)
        now = pipe.next_deadline() or now
    assert pipe.on_timer(now, T0_NS) == [Connect()]
    pipe.describe("H264", PAYLOAD_TYPE, (capture.sps, capture.pps))
    pipe.session_started(now, 60)
    for i, blob in enumerate(capture.frames):
        pipe.feed(blob, T0_NS + i * FRAME_NS)
    ended = now + HEALTHY_SESSION_SECONDS + 1
    commands = pipe.session_ended(ended)
    assert any(isinstance(c, Log) and c.event == "reconnect_scheduled" for c in commands)
    deadline = pipe.next_deadline()
    assert deadline is not None and 0.5 <= deadline - ended <= 1.0
    assert pipe.stats.reconnects == 5


def test_a_loss_mid_gop_cuts_the_gop_at_the_hole(capture: Capture) -> None:
    """One packet of frame 10 (inside the first GOP) never arrives: frames 0-9 are written and
    the segment closes after them; 11-24 are dropped (gap); the next keyframe opens a new one."""
    assert capture.keyframes[0] and capture.keyframes[FPS] and not any(capture.keyframes[1:FPS])
    pipe = playing(capture)
    out: list[Command] = []
    for i, blob in enumerate(capture.frames[: 2 * FPS]):
        if i == 10:
            start = capture.packet_offsets[i][0]
            end = capture.packet_offsets[i][1] if len(capture.packet_offsets[i]) > 1 else len(blob)
            blob = blob[:start] + blob[end:]  # its first packet is lost
        out += pipe.feed(blob, T0_NS + i * FRAME_NS)
    commands = writer_commands(out)
    kinds = [type(c).__name__ for c in commands]
    assert kinds[0] == "Open" and kinds.count("Open") == 2
    first_close = kinds.index("Close")
    assert frames_muxed(commands[:first_close]) == 10
    assert isinstance(commands[first_close], Close) and commands[first_close].end_ns == T0_NS + 10 * FRAME_NS
    reopened = commands[first_close + 1]
    assert isinstance(reopened, Open) and reopened.start_ns == T0_NS + FPS * FRAME_NS
    assert pipe.stats.lost_packets == 1
    assert pipe.stats.dropped_frames == {"gap": FPS - 11}


def test_a_tap_sees_every_access_unit_with_codec_and_parameter_sets(capture: Capture) -> None:
    pipe = playing(capture)
    seen: list[tuple[AccessUnit, str, tuple[bytes, ...], int, int]] = []
    pipe.tap = lambda au, codec, sets, received_ns, reorder_ns: seen.append(
        (au, codec, sets, received_ns, reorder_ns)
    )
    for i, blob in enumerate(capture.frames[:30]):
        pipe.feed(blob, T0_NS + i * FRAME_NS)
    assert [received for *_, received, _ in seen][:29] == [T0_NS + i * FRAME_NS for i in range(29)]
    assert seen[0][0].keyframe and {s[1] for s in seen} == {"h264"}
    sets = seen[0][2]
    assert [n[0] & 0x1F for n in sets] == [7, 8]  # SPS then PPS, known at the first keyframe
    assert {s[4] for s in seen} == {0}  # no B-frames: no decode delay


def test_a_tap_that_raises_is_detached_and_recording_goes_on(capture: Capture) -> None:
    pipe = playing(capture)
    calls: list[int] = []

    def tap(*args: object) -> None:
        calls.append(1)
        raise IndexError("list index out of range")

    pipe.tap = tap
    out = []
    for i, blob in enumerate(capture.frames[:30]):
        out += pipe.feed(blob, T0_NS + i * FRAME_NS)
    assert calls == [1] and pipe.tap is None
    logs = [c for c in out if isinstance(c, Log) and c.event == "frame_tap_failed"]
    assert len(logs) == 1 and logs[0].fields["error"] == "IndexError: list index out of range"
    assert frames_muxed(out) == 26  # the first GOP and the second keyframe (the rest held): as untapped


def _interleaved(aus: Sequence[AccessUnit]) -> list[bytes]:
    """``aus`` as a camera sends them over TCP: RTP packets (timestamps from the units) in ``$`` framing."""
    out, seq = [], 0
    for au in aus:
        payloads = packetize_au(list(au.nals), mtu_payload=1400)
        blob = bytearray()
        for k, payload in enumerate(payloads):
            packet = build_rtp(
                PAYLOAD_TYPE, seq & 0xFFFF, au.rtp_timestamp, SSRC, k == len(payloads) - 1, payload
            )
            blob += b"$\x00" + len(packet).to_bytes(2, "big") + packet
            seq += 1
        out.append(bytes(blob))
    return out


def test_a_tap_passes_the_decode_delay_and_live_viewing_plays_b_frames() -> None:
    """B-frames (libx264, 2): the tap gets the units in decode order and, once the segmenter has
    learned it from a whole GOP, its decode delay; the live fan-out fed by the tap sends fragments
    that decode to every frame, in presentation order, with decode times strictly increasing."""
    import io

    import av

    from csud.live.fanout import CameraFeed, Viewer
    from tests.media import encode

    aus = encode(75, gop=25, bframes=2)
    sps, pps = (next(n for n in aus[0].nals if n[0] & 0x1F == t) for t in (7, 8))
    pipe = new_pipeline()
    assert pipe.on_timer(T0, T0_NS) == [Connect()]
    pipe.describe("H264", PAYLOAD_TYPE, (sps, pps))
    pipe.session_started(T0, 60.0)
    feed = CameraFeed("cam1")
    viewer = feed.attach(Viewer(max_items=1000))
    delays: list[int] = []

    def tap(au: AccessUnit, codec: str, sets: tuple[bytes, ...], received_ns: int, reorder_ns: int) -> None:
        delays.append(reorder_ns)
        feed.on_frame(au, codec, sets, received_ns, reorder_ns)

    pipe.tap = tap
    for i, blob in enumerate(_interleaved(aus)):
        pipe.feed(blob, T0_NS + i * FRAME_NS)
    assert len(delays) == 75  # in decode order, each as its marker bit arrives
    assert set(delays[:25]) == {0} and set(delays[26:]) == {FRAME_NS}  # learned at GOP end
    messages = []
    while viewer.queued_bytes:
        messages.append(viewer.pop()[0])
    stream = b"".join(m for m in messages if isinstance(m, bytes))
    with av.open(io.BytesIO(stream), format="mp4") as c:
        packets = [p for p in c.demux(video=0) if p.size]
        with av.open(io.BytesIO(stream), format="mp4") as d:
            pts = [int(f.pts or 0) for f in d.decode(video=0)]
    dts = [int(p.dts or 0) for p in packets]
    assert all(a < b for a, b in itertools.pairwise(dts)) and sum(p.pts != p.dts for p in packets) > 40
    assert [t - pts[0] for t in pts] == [k * TICKS_PER_FRAME for k in range(75)]  # presentation order


def test_a_camera_that_is_not_h264_or_h265_is_refused() -> None:
    from csud.errors import StreamError

    pipe = new_pipeline()
    with pytest.raises(StreamError, match="unsupported codec MP4V-ES"):
        pipe.describe("MP4V-ES", 96)


def test_backoff_alone_is_seeded() -> None:
    a, b = Backoff(random.Random(1)), Backoff(random.Random(1))
    assert [a.next_delay() for _ in range(5)] == [b.next_delay() for _ in range(5)]
