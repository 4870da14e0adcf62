"""Segmenter: table-driven scenarios and invariants over random streams. Pure, no event loop.

Scenarios are written in a compact notation (times in ms):
  inputs   "K0"  keyframe at 0 ms, "P40" non-key frame, "K500d"/"P80d" with discontinuity,
           "K80s" keyframe carrying a new SPS in-band, "gap", "stop"
  actions  "O0" Open(0), "M[K0/40 P40/40]" Mux(frames pts/duration), "C80" Close(80),
           "C0!" Close(0, drop_tail), "D3:gap" Drop(3 frames, reason)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csud.media.codec import H264, H265
from csud.media.units import ANNEXB_START_CODE, AccessUnit
from csud.recording.segmenter import Action, Close, Drop, Frame, Mux, Open, Segmenter

MS = 1_000_000
SPS_A = bytes([0x67, 0x42, 0xC0, 0x0D, 0xAA])
SPS_B = bytes([0x67, 0x42, 0xC0, 0x1E, 0xBB])
PPS = bytes([0x68, 0xCE, 0x0F, 0xC8])
AUD = bytes([0x09, 0xF0])


def idr(tag: int) -> bytes:
    return bytes([0x65, 0x88]) + tag.to_bytes(4, "big")


def non_idr(tag: int) -> bytes:
    return bytes([0x41, 0x9A]) + tag.to_bytes(4, "big")


def au(nals: list[bytes], keyframe: bool) -> AccessUnit:
    return AccessUnit(0, nals, keyframe, sum(len(n) for n in nals))


def render(action: Action) -> str:
    if isinstance(action, Open):
        return f"O{action.start_ns // MS}"
    if isinstance(action, Mux):
        return "M[" + " ".join(render_frame(f) for f in action.frames) + "]"
    if isinstance(action, Close):
        return f"C{action.end_ns // MS}" + ("!" if action.drop_tail else "")
    return f"D{action.frames}:{action.reason}"


def render_frame(f: Frame) -> str:
    return f"{'K' if f.keyframe else 'P'}{f.pts_ns // MS}/{f.duration_ns // MS}"


def run(script: str, seg: Segmenter | None = None) -> list[str]:
    """Feed a script, return one line of rendered actions per input."""
    seg = seg or Segmenter(segment_ns=1000 * MS, phase_ns=0)
    seg.params(SPS_A, PPS)
    out = []
    for i, word in enumerate(script.split()):
        if word == "gap":
            actions = seg.gap("loss")
        elif word == "stop":
            actions = seg.stop()
        else:
            kind, rest = word[0], word[1:]
            disc = rest.endswith("d")
            new_sps = rest.endswith("s")
            pts_ms = int(rest.rstrip("ds"))
            if kind == "K":
                nals = ([SPS_B, PPS] if new_sps else []) + [idr(i)]
                actions = seg.push(au(nals, True), pts_ms * MS, disc)
            else:
                actions = seg.push(au([non_idr(i)], False), pts_ms * MS, disc)
        out.append(" ".join(render(a) for a in actions))
    return out


SCENARIOS: list[tuple[str, str, list[str], dict[str, int]]] = [
    (
        "waits for the first keyframe",
        "P0 P40 K80 P120",
        ["D1:wait_keyframe", "D1:wait_keyframe", "O80 M[K80/40]", ""],
        {},
    ),
    (
        "a GOP is muxed when the next keyframe arrives, with that keyframe",
        "K0 P40 P80 K120 P160 P200",
        ["O0 M[K0/40]", "", "", "M[P40/40 P80/40 K120/40]", "", ""],
        {},
    ),
    (
        "durations come from the next frame; the keyframe's is the last interval",
        "K0 P40 P100 K150 P160",
        ["O0 M[K0/40]", "", "", "M[P40/60 P100/50 K150/50]", ""],
        {},
    ),
    (
        "rotation at the first keyframe at or after the boundary, exactly contiguous",
        "K0 P400 K800 P900 K1000 P1400 K1800 P1900 K2300",
        [
            "O0 M[K0/40]",
            "",
            "M[P400/400 K800/400]",
            "",
            "M[P900/100] C1000 O1000 M[K1000/100]",
            "",
            "M[P1400/400 K1800/400]",
            "",
            "M[P1900/400] C2300 O2300 M[K2300/400]",
        ],
        {},
    ),
    (
        "a one-frame GOP at rotation: nothing left to mux before the close",
        "K0 K1000",
        ["O0 M[K0/40]", "C1000 O1000 M[K1000/1000]"],
        {},
    ),
    (
        "a gap mid-GOP cuts it there: frames before it are written, those after dropped",
        "K0 P40 K80 P120 gap P160 K200 P240",
        ["O0 M[K0/40]", "", "M[P40/40 K80/40]", "", "M[P120/40] C160", "D1:gap", "O200 M[K200/40]", ""],
        {},
    ),
    (
        "a gap with no segment open only counts",
        "gap P0 K40",
        ["", "D1:gap", "O40 M[K40/40]"],
        {},
    ),
    (
        "a discontinuity at a keyframe closes cleanly with the nominal duration",
        "K0 P40 K500d P540 stop",
        ["O0 M[K0/40]", "", "M[P40/40] C80 O500 M[K500/40]", "", "M[P540/40] C580"],
        {},
    ),
    (
        "time going backwards at a keyframe: a new segment, overlapping is the truth",
        "K10000 P10040 K3000d",
        ["O10000 M[K10000/40]", "", "M[P10040/40] C10080 O3000 M[K3000/40]"],
        {},
    ),
    (
        "a discontinuity at a non-key frame cuts the GOP before it, like a gap",
        "K0 P40 P80d P120 K160",
        ["O0 M[K0/40]", "", "M[P40/40] C80 D1:discontinuity", "D1:gap", "O160 M[K160/40]"],
        {},
    ),
    (
        "a new SPS in-band rotates at its keyframe, contiguous",
        "K0 P40 K80s P120",
        ["O0 M[K0/40]", "", "M[P40/40] C80 O80 M[K80/40]", ""],
        {},
    ),
    (
        "a GOP over the frame bound is dropped and the file cut",
        "K0 P40 K80 P120 P160 P200 P240",
        ["O0 M[K0/40]", "", "M[P40/40 K80/40]", "", "", "D4:gop_too_large C80!", "D1:wait_keyframe"],
        {"max_gop_frames": 3},
    ),
    (
        "stop flushes the GOP in flight",
        "K0 P40 P80 stop stop",
        ["O0 M[K0/40]", "", "", "M[P40/40 P80/40] C120", ""],
        {},
    ),
    (
        "stop with only a keyframe",
        "K0 stop",
        ["O0 M[K0/40]", "C40"],
        {},
    ),
    (
        "rotation with a phase: boundaries at 300 + n * 1000",
        "K0 K280 K320 K1250 K1300",
        ["O0 M[K0/40]", "M[K280/280]", "C320 O320 M[K320/40]", "M[K1250/930]", "C1300 O1300 M[K1300/50]"],
        {"phase_ns": 300 * MS},
    ),
]


@pytest.mark.parametrize(
    ("script", "expected", "kwargs"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS]
)
def test_scenarios(script: str, expected: list[str], kwargs: dict[str, int]) -> None:
    seg = Segmenter(segment_ns=1000 * MS, **{"phase_ns": 0, **kwargs})
    assert run(script, seg) == expected


def test_gop_byte_bound() -> None:
    seg = Segmenter(segment_ns=1000 * MS, phase_ns=0, max_gop_bytes=20)
    seg.params(SPS_A, PPS)
    seg.push(au([idr(0)], True), 0)
    assert seg.push(au([non_idr(1)], False), 40 * MS) == []  # 6 + 6 bytes
    actions = seg.push(au([non_idr(2), b"\x41" * 10], False), 80 * MS)
    assert actions == [Drop(3, 6 + 6 + 16, "gop_too_large"), Close(0, True)]
    assert seg.bytes_dropped == {"gop_too_large": 28}


def test_phase_boundaries() -> None:
    seg = Segmenter(segment_ns=60_000 * MS, phase_ns=17_485 * MS)
    assert seg.boundary_after(0) == 17_485 * MS
    assert seg.boundary_after(17_485 * MS) == 77_485 * MS  # strictly after
    assert seg.boundary_after(17_484 * MS) == 17_485 * MS
    assert Segmenter(segment_ns=1000, phase_ns=2500).phase_ns == 500


def annexb(*nals: bytes) -> bytes:
    return b"".join(ANNEXB_START_CODE + n for n in nals)


def test_first_keyframe_gets_parameter_sets_prefixed() -> None:
    seg = Segmenter(segment_ns=1000 * MS, phase_ns=0)
    seg.params(SPS_A, PPS)
    actions = seg.push(au([AUD, idr(1)], True), 0)
    assert actions[0] == Open(0, H264, (SPS_A, PPS))
    assert isinstance(actions[1], Mux)
    assert actions[1].frames[0].data == annexb(AUD, SPS_A, PPS, idr(1))  # AUD stays first
    # Later keyframes of the same segment are left as they are.
    seg.push(au([idr(2)], True), 40 * MS)
    actions = seg.push(au([idr(3)], True), 80 * MS)
    assert isinstance(actions[0], Mux)
    assert actions[0].frames[-1].data == annexb(idr(3))


def test_inband_parameter_sets_are_kept_and_learnt() -> None:
    seg = Segmenter(segment_ns=1000 * MS, phase_ns=0)
    actions = seg.push(au([SPS_A, PPS, idr(1)], True), 0)
    assert isinstance(actions[1], Mux)
    assert actions[1].frames[0].data == annexb(SPS_A, PPS, idr(1))
    assert (seg.sps, seg.pps) == (SPS_A, PPS)


def test_a_keyframe_without_parameter_sets_cannot_open() -> None:
    seg = Segmenter(segment_ns=1000 * MS, phase_ns=0)
    assert seg.push(au([idr(1)], True), 0) == [Drop(1, 6, "no_parameter_sets")]
    seg.params(SPS_A, PPS)
    assert [render(a) for a in seg.push(au([idr(2)], True), 40 * MS)] == ["O40", "M[K40/40]"]


def test_params_change_out_of_band_rotates_at_next_keyframe() -> None:
    seg = Segmenter(segment_ns=1000 * MS, phase_ns=0)
    seg.params(SPS_A, PPS)
    seg.push(au([idr(1)], True), 0)
    seg.params(SPS_A, PPS)  # same: nothing
    assert [render(a) for a in seg.push(au([idr(2)], True), 40 * MS)] == ["M[K40/40]"]
    seg.params(SPS_B, PPS)
    actions = seg.push(au([idr(3)], True), 80 * MS)
    assert [render(a) for a in actions] == ["C80", "O80", "M[K80/40]"]
    assert actions[1] == Open(80 * MS, H264, (SPS_B, PPS))
    assert isinstance(actions[2], Mux)
    assert actions[2].frames[0].data.startswith(annexb(SPS_B, PPS))


def test_counters() -> None:
    seg = Segmenter(segment_ns=1000 * MS, phase_ns=0)
    run("P0 K40 P80 K120 P160 gap P200 K240 P280 stop", seg)
    assert seg.frames_in == 8
    assert seg.frames_dropped == {"wait_keyframe": 1, "gap": 1}
    assert seg.frames_muxed == 6  # K40 P80 K120 P160 (cut at the gap) | K240 P280
    assert seg.tail_frames_discarded == 0
    assert seg.gaps == {"loss": 1}
    assert seg.segments_opened == 2
    assert seg.frames_pending == 0


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        Segmenter(segment_ns=0, phase_ns=0)
    with pytest.raises(ValueError):
        Segmenter(segment_ns=1, phase_ns=0, max_gop_frames=0)


# -- invariants over random streams ---------------------------------------------------------


@dataclass
class FileModel:
    """What a writer following the actions would leave in one segment file."""

    start_ns: int
    frames: list[Frame] = field(default_factory=list)
    end_ns: int | None = None
    drop_tail: bool = False


EVENTS = st.sampled_from(["K", "P", "P", "P", "P", "P", "gap", "Kd", "Pd", "Ks", "wait"])


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(st.tuples(EVENTS, st.integers(1, 400)), max_size=150),
    segment_ms=st.integers(50, 3000),
    phase_ms=st.integers(0, 3000),
    max_gop_frames=st.integers(1, 30),
)
def test_invariants(
    events: list[tuple[str, int]], segment_ms: int, phase_ms: int, max_gop_frames: int
) -> None:
    seg = Segmenter(segment_ns=segment_ms * MS, phase_ns=phase_ms * MS, max_gop_frames=max_gop_frames)
    actions: list[Action] = []
    pts_ns = 1_790_000_000_000 * MS
    pushed = 0
    for i, (kind, step_ms) in enumerate(events):
        pts_ns += step_ms * MS
        if kind == "gap":
            actions += seg.gap("loss")
            continue
        if kind == "wait":
            seg.params(SPS_A, PPS)
            continue
        pushed += 1
        disc = kind.endswith("d")
        if disc:
            pts_ns -= 2000 * MS  # discontinuities may go backwards
        if kind.startswith("K"):
            nals = ([SPS_B if i % 2 else SPS_A, PPS] if kind == "Ks" else []) + [idr(i)]
            step = seg.push(au(nals, True), pts_ns, disc)
        else:
            step = seg.push(au([non_idr(i)], False), pts_ns, disc)
        closes = [a for a in step if isinstance(a, Close) and not a.drop_tail]
        opens = [a for a in step if isinstance(a, Open)]
        if closes and opens and not disc:
            # Rotation or new SPS on a continuous timeline: exactly contiguous.
            assert closes[0].end_ns == opens[0].start_ns == pts_ns
        actions += step
    actions += seg.stop()

    files: list[FileModel] = []
    current: FileModel | None = None
    muxed_tags: list[bytes] = []
    dropped = 0
    for a in actions:
        if isinstance(a, Open):
            assert current is None, "Open while a segment is open"
            current = FileModel(a.start_ns)
            assert a.sps and a.pps
        elif isinstance(a, Mux):
            assert current is not None, "Mux outside a segment"
            assert a.frames
            if not current.frames:
                first = a.frames[0]
                assert first.keyframe and first.pts_ns == current.start_ns
                assert b"\x00\x00\x00\x01\x67" in first.data and b"\x00\x00\x00\x01\x68" in first.data
            current.frames.extend(a.frames)
            muxed_tags.extend(f.data[-4:] for f in a.frames)
        elif isinstance(a, Close):
            assert current is not None, "Close without Open"
            current.end_ns, current.drop_tail = a.end_ns, a.drop_tail
            files.append(current)
            current = None
        else:
            assert isinstance(a, Drop) and a.frames > 0
            dropped += a.frames
    assert current is None, "stop() left a segment open"

    # Every frame: muxed once or dropped once; drop_tail discards one frame also counted in a Drop.
    assert len(muxed_tags) == len(set(muxed_tags))
    tails = sum(1 for f in files if f.drop_tail)
    assert pushed == seg.frames_in == len(muxed_tags) - tails + dropped
    assert seg.frames_muxed == len(muxed_tags)
    assert seg.tail_frames_discarded == tails
    assert sum(seg.frames_dropped.values()) == dropped
    assert seg.frames_pending == 0

    for f in files:
        assert f.end_ns is not None
        kept = f.frames[:-1] if f.drop_tail else f.frames
        if f.drop_tail:
            assert f.frames[-1].keyframe and f.end_ns == f.frames[-1].pts_ns
        # Within a file: strictly increasing pts, durations that tile the timeline up to end_ns.
        assert all(x.pts_ns < y.pts_ns for x, y in itertools.pairwise(f.frames))
        for x, y in itertools.pairwise(kept):
            if not x.keyframe:  # keyframe durations are provisional by design
                assert x.pts_ns + x.duration_ns == y.pts_ns
        if kept and not f.drop_tail and not kept[-1].keyframe:
            assert kept[-1].pts_ns + kept[-1].duration_ns == f.end_ns
        assert f.start_ns <= f.end_ns
        assert all(f.start_ns <= fr.pts_ns < f.end_ns for fr in kept)
        # Frames per GOP stay within the bound.
        gop = 0
        for fr in kept:
            gop = 1 if fr.keyframe else gop + 1
            assert gop <= max_gop_frames


def test_h265_first_keyframe_carries_vps_sps_pps_after_its_delimiter() -> None:
    def nal(nal_type: int, body: int) -> bytes:
        return bytes([nal_type << 1, 1, body])

    vps, sps, pps, aud, idr = nal(32, 0xA), nal(33, 0xB), nal(34, 0xC), nal(35, 0x50), nal(19, 0x80)
    seg = Segmenter(segment_ns=1000 * MS, phase_ns=0, codec=H265)
    seg.parameter_sets([sps, pps])  # the VPS is missing: no segment can start
    (drop,) = seg.push(AccessUnit(0, [aud, idr], True), 0)
    assert drop == Drop(1, 6, "no_parameter_sets")
    seg.parameter_sets([vps])
    opened, mux = seg.push(AccessUnit(3600, [aud, idr], True), 40 * MS)
    assert isinstance(opened, Open) and opened.sps == sps and opened.pps == pps
    assert isinstance(mux, Mux) and mux.frames[0].data == annexb(aud, vps, sps, pps, idr)
    # A new SPS in-band rotates at its keyframe, as for H.264.
    new_sps = nal(33, 0xD)
    actions = seg.push(AccessUnit(7200, [new_sps, pps, idr], True), 80 * MS)
    assert [type(a).__name__ for a in actions] == ["Close", "Open", "Mux"]
    assert seg.sps == new_sps


# -- B-frames: decode order differs from presentation order -----------------------------------


def push_decode_order(seg: Segmenter, pts_ms: list[int], keys: set[int]) -> list[Action]:
    actions: list[Action] = []
    for i, p in enumerate(pts_ms):
        unit = au([idr(i)], True) if p in keys else au([non_idr(i)], False)
        actions += seg.push(unit, p * MS)
    return actions + seg.stop()


def test_b_frames_first_gop_reopens_with_the_decode_delay() -> None:
    """I0 P3 B1 B2 P6 B4 B5 | I7: the first GOP shows a one-frame decode delay; the segment that
    opened without one is re-opened at the same keyframe with it (nothing lost), and later
    segments open with it."""
    seg = Segmenter(segment_ns=1000 * MS, phase_ns=0)
    seg.params(SPS_A, PPS)
    order = [0, 120, 40, 80, 240, 160, 200, 280, 400, 320, 360]
    actions = push_decode_order(seg, order, keys={0, 280})
    assert [render(a) for a in actions] == [
        "O0",
        "M[K0/40]",
        "C0!",
        "O0",
        "M[K0/40]",
        "M[P120/40 P40/40 P80/40 P240/40 P160/40 P200/40 K280/40]",
        "M[P400/40 P320/40 P360/40]",
        "C440",
    ]
    opens = [a for a in actions if isinstance(a, Open)]
    assert [o.reorder_ns for o in opens] == [0, 40 * MS]
    frames = [f for a in actions[4:] if isinstance(a, Mux) for f in a.frames]
    dts = [f.dts_ns for f in frames]
    assert dts == [p * MS - 40 * MS for p in range(0, 440, 40)]  # rank order minus the delay
    assert all(f.dts_ns is not None and f.dts_ns <= f.pts_ns for f in frames)
    assert seg.frames_in == seg.frames_muxed - seg.tail_frames_discarded == len(order)
    # The next segment opens with the delay at once.
    assert seg.push(au([idr(99)], True), 5000 * MS)[0] == Open(5000 * MS, H264, (SPS_A, PPS), 40 * MS)


def test_no_b_frames_dts_equal_pts() -> None:
    seg = Segmenter(segment_ns=1000 * MS, phase_ns=0)
    seg.params(SPS_A, PPS)
    actions = push_decode_order(seg, [0, 40, 80, 120, 160], keys={0, 120})
    frames = [f for a in actions if isinstance(a, Mux) for f in a.frames]
    assert [f.dts_ns for f in frames] == [f.pts_ns for f in frames]
    assert seg.tail_frames_discarded == 0


@settings(max_examples=60, deadline=None)
@given(
    gops=st.lists(st.tuples(st.integers(1, 12), st.integers(0, 3)), min_size=1, max_size=12),
    segment_ms=st.sampled_from([200, 1000, 3000]),
)
def test_property_b_frames_every_frame_recorded_dts_monotonic(
    gops: list[tuple[int, int]], segment_ms: int
) -> None:
    """Random GOPs of P-frames each followed by up to 3 B-frames (sent after it, as encoders
    do): every frame ends up in a file exactly once (re-opens aside), dts never decreases in a
    file and never passes pts; the first keyframe's offset is the segment's delay."""
    seg = Segmenter(segment_ns=segment_ms * MS, phase_ns=0)
    seg.params(SPS_A, PPS)
    pts_order: list[int] = []
    keys: set[int] = set()
    n = 0
    for minigops, bframes in gops:
        keys.add(n * 40)
        pts_order.append(n * 40)
        n += 1
        for _ in range(minigops):
            p = n + bframes  # the reference is sent first, the B-frames before it after
            pts_order.append(p * 40)
            pts_order.extend((n + b) * 40 for b in range(bframes))
            n = p + 1
    actions = push_decode_order(seg, pts_order, keys)
    files: list[tuple[Open, list[Frame], Close]] = []
    current: tuple[Open, list[Frame]] | None = None
    for a in actions:
        if isinstance(a, Open):
            current = (a, [])
        elif isinstance(a, Mux):
            assert current is not None
            current[1].extend(a.frames)
        elif isinstance(a, Close):
            assert current is not None
            files.append((current[0], current[1], a))
            current = None
    recorded: list[int] = []
    for opened, frames, closed in files:
        kept = frames[:-1] if closed.drop_tail else frames
        recorded.extend(f.pts_ns // MS for f in kept)
        dts = [f.dts_ns if f.dts_ns is not None else f.pts_ns for f in frames]
        assert dts == sorted(dts)
        assert all(f.pts_ns >= d for f, d in zip(frames, dts, strict=True))
        assert frames[0].pts_ns - dts[0] == opened.reorder_ns
        assert frames[0].keyframe and frames[0].pts_ns == opened.start_ns
    assert sorted(recorded) == sorted(pts_order)
    assert sum(seg.frames_dropped.values()) == 0
