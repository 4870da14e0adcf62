"""When a segment opens and closes, and which frames go into it: one pure state machine per camera.

Pure: no I/O, no clock, no PyAV. Access units (with their pts on the server's clock, from
:mod:`csud.recording.timeline`) and gaps go in; small frozen actions come out, which the writer
executes in order: ``Open``, ``Mux``, ``Close``, ``Drop`` (the last one only counts and logs).

Invariants (tested, including over random streams):

- Nothing is written before the first keyframe of a segment; a segment starts at a keyframe whose
  first frame carries SPS and PPS in-band (prefixed here when the camera sent them out of band).
- ``Open`` and ``Close`` alternate, starting with ``Open``; every ``Mux`` happens between them.
- Every access unit pushed ends up, exactly once, either in a ``Mux`` (and in the file) or counted
  in a ``Drop``. The one exception is explicit: ``Close(drop_tail=True)`` discards the keyframe
  muxed last (the GOP in flight); that keyframe is *also* counted in the ``Drop`` emitted just
  before, so ``Drop`` actions always account for every frame the recording lost::

      frames_in == frames_muxed - tail_frames_discarded + sum(frames_dropped.values()) + frames_pending

- Nothing after a hole is written before the next keyframe. A gap (packets lost or malformed)
  or a discontinuity inside a GOP cuts it at the hole: the frames before it are whole and only
  reference earlier frames, so they are written and the segment closes after them; the frames
  after it are dropped (reason ``gap``). A GOP over the size bound is dropped whole, and the file
  then ends at the last complete GOP.
- Rotation is at the first keyframe at or after a boundary ``phase_ns + n * segment_ns`` (UTC
  epoch aligned), or at the first keyframe after the SPS changed (in-band or via ``params``);
  the closed segment ends exactly where the next one starts.
- A discontinuity (timeline re-anchor, new SSRC) at a keyframe closes the segment at its last
  frame's pts plus the nominal interval and opens the next one at the keyframe's pts, which may
  even be earlier (the server clock is the truth; segments of one camera may then overlap).
  The timeline reports time discontinuities only at keyframes, so time never costs a frame; at a
  non-key frame (a new SSRC: the decoder's references are gone) it is handled like a gap.
- B-frames: frames arrive in decode order, their pts (from RTP) are not monotonic. A GOP is
  emitted whole, so each frame gets ``dts`` = the GOP's pts in rank order minus the segment's
  decode delay ``Open.reorder_ns`` (dts never decreases, never passes pts) and a duration up to
  the next pts in presentation order. The delay is learned from complete GOPs; a GOP needing
  more than its segment has re-opens the segment at its keyframe (``Close(drop_tail)`` then
  ``Open`` with the new delay and the keyframe muxed again), so nothing is lost.
- Memory is bounded: at most one GOP (``max_gop_frames``, ``max_gop_bytes``) is held.

Frame durations: a non-key frame's duration is known when the next frame arrives, and frames are
only emitted once their GOP is complete, so those are exact. A keyframe is muxed as soon as it
arrives (that is what makes the muxer flush the previous GOP's fragment at once, so a crash loses
at most the GOP in flight); its duration is provisional: the nominal frame interval (the last
observed one). The fragmented MP4 muxer only uses a packet's duration for the very last sample of
a fragment, and it aligns it on the next keyframe's dts when there is one, so the provisional value
only reaches the file for the last sample of a segment closed by a discontinuity or ``stop()``, or
for a one-frame GOP closed by rotation. The index ``end_ns`` (from ``Close``) is authoritative.

Codec knowledge comes from one :class:`csud.media.codec.Codec` record (how to read a NAL type,
which types are parameter sets and delimiters). The segmenter is the one owner of the stream's
parameter sets: from the SDP (:meth:`Segmenter.parameter_sets`) and in band, from any access unit.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from csud.media.codec import H264, Codec
from csud.media.units import AccessUnit

MIB = 1 << 20
DEFAULT_MAX_GOP_FRAMES = 1000
DEFAULT_MAX_GOP_BYTES = 64 * MIB
DEFAULT_FRAME_NS = 40_000_000  # 25 fps, until the stream shows its own interval

# Drop reasons (metric label values; keep the set small and stable).
DROP_WAIT_KEYFRAME = "wait_keyframe"
DROP_NO_PARAMETER_SETS = "no_parameter_sets"
DROP_GAP = "gap"
DROP_DISCONTINUITY = "discontinuity"
DROP_GOP_TOO_LARGE = "gop_too_large"


@dataclass(frozen=True, slots=True)
class Frame:
    """One access unit ready to mux: Annex B bytes, pts on the server's clock (UTC ns).

    ``dts_ns``: its decode time, ``None`` when it equals ``pts_ns``. Within a segment dts never
    decreases and never passes pts; a keyframe's is ``pts_ns - Open.reorder_ns``.
    """

    data: bytes
    pts_ns: int
    duration_ns: int
    keyframe: bool
    dts_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Open:
    """Open a segment starting at ``start_ns``, in ``codec``, whose first keyframe carries
    ``parameter_sets`` (in ``codec.param_types`` order): all the writer needs (the picture size
    comes from the SPS).

    ``reorder_ns``: the segment's decode delay (0 without B-frames): every frame's dts is its
    presentation-order rank's pts minus this, so that dts never decreases and never passes pts.
    """

    start_ns: int
    codec: Codec = H264
    parameter_sets: tuple[bytes, ...] = ()
    reorder_ns: int = 0

    @property
    def sps(self) -> bytes:
        return self._param(self.codec.sps_type)

    @property
    def pps(self) -> bytes:
        return self._param(self.codec.param_types[-1])

    def _param(self, ntype: int) -> bytes:
        return next((n for n in self.parameter_sets if self.codec.nal_type(n) == ntype), b"")


@dataclass(frozen=True, slots=True)
class Mux:
    """Mux these frames, in order, into the open segment."""

    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class Close:
    """Close the open segment at ``end_ns``.

    ``drop_tail``: discard what the muxer flushes on close (the lone keyframe of the GOP in flight)
    so that the file ends at its last complete GOP; ``end_ns`` is then that keyframe's pts.
    """

    end_ns: int
    drop_tail: bool


@dataclass(frozen=True, slots=True)
class Drop:
    """``frames`` access units (``nbytes`` bytes) will not be recorded, because of ``reason``."""

    frames: int
    nbytes: int
    reason: str


Action = Open | Mux | Close | Drop


class Segmenter:
    """Per-camera segmenter. See the module docstring for the rules and invariants.

    ``segment_ns``: nominal segment length; ``phase_ns``: this camera's rotation offset
    (:func:`csud.store.layout.stagger_phase_ns`).
    """

    def __init__(
        self,
        segment_ns: int,
        phase_ns: int,
        max_gop_frames: int = DEFAULT_MAX_GOP_FRAMES,
        max_gop_bytes: int = DEFAULT_MAX_GOP_BYTES,
        default_frame_ns: int = DEFAULT_FRAME_NS,
        codec: Codec = H264,
    ) -> None:
        if segment_ns <= 0:
            raise ValueError(f"segment_ns must be positive, got {segment_ns}")
        if max_gop_frames < 1 or max_gop_bytes < 1 or default_frame_ns < 1:
            raise ValueError("max_gop_frames, max_gop_bytes and default_frame_ns must be positive")
        self.segment_ns = segment_ns
        self.phase_ns = phase_ns % segment_ns
        self.max_gop_frames = max_gop_frames
        self.max_gop_bytes = max_gop_bytes
        self._nominal_ns = default_frame_ns
        self.codec = codec

        self._params: dict[int, bytes] = {}  # latest parameter set of each type
        self._params_changed = False  # SPS changed since the open segment started
        self._after_gap = False  # frames until the next keyframe are dropped as "gap"

        # Open segment state (meaningful only while self._open).
        self._open = False
        self._start_ns = 0
        self._boundary_ns = 0
        self._key: Frame | None = None  # keyframe of the GOP in flight (already muxed)
        self._key_au: AccessUnit | None = None  # its access unit (to re-open a segment at it)
        self._key_bytes = 0  # its payload size (as counted for drops)
        self._held: list[tuple[bytes, int]] = []  # (annexb, pts_ns) of the GOP's other frames
        self._held_bytes = 0
        self._last_pts_ns = 0  # highest pts accepted into the open segment
        self._seg_reorder_ns = 0  # the open segment's decode delay (Open.reorder_ns)
        self.reorder_ns = 0
        """Decode delay learned from the stream: B-frames make it positive (kept per session)."""

        # Counters.
        self.frames_in = 0
        self.frames_muxed = 0
        self.tail_frames_discarded = 0
        self.frames_dropped: dict[str, int] = {}
        self.bytes_dropped: dict[str, int] = {}
        self.gaps: dict[str, int] = {}
        self.segments_opened = 0

    # -- inspection -------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """A segment is open (a keyframe has been muxed and not closed)."""
        return self._open

    @property
    def frames_pending(self) -> int:
        """Frames held in memory, not yet in any action (the incomplete GOP's non-key frames)."""
        return len(self._held)

    @property
    def sps(self) -> bytes | None:
        return self._params.get(self.codec.sps_type)

    @property
    def pps(self) -> bytes | None:
        return self._params.get(self.codec.param_types[-1])

    @property
    def next_boundary_ns(self) -> int | None:
        """The boundary at or after which the next keyframe rotates the open segment."""
        return self._boundary_ns if self._open else None

    def boundary_after(self, start_ns: int) -> int:
        """The first boundary strictly after ``start_ns``."""
        n = (start_ns - self.phase_ns) // self.segment_ns + 1
        return self.phase_ns + n * self.segment_ns

    @property
    def current_parameter_sets(self) -> tuple[bytes, ...]:
        """The parameter sets known now (SDP and in band), in ``codec.param_types`` order."""
        return tuple(self._params[t] for t in self.codec.param_types if t in self._params)

    # -- inputs -----------------------------------------------------------------------------

    def params(self, sps: bytes | None, pps: bytes | None) -> None:
        """The current SPS and PPS (from the SDP or the stream). A new SPS rotates at the next keyframe."""
        self.parameter_sets([n for n in (sps, pps) if n])

    def parameter_sets(self, nals: list[bytes]) -> None:
        """Parameter set NAL units of any type the codec uses (VPS, SPS, PPS); others are ignored."""
        codec = self.codec
        for nal in nals:
            t = codec.nal_type(nal)
            if t not in codec.param_types:
                continue
            old = self._params.get(t)
            if t == codec.sps_type and old is not None and nal != old:
                self._params_changed = True
            self._params[t] = bytes(nal)

    def push(self, au: AccessUnit, pts_ns: int, discontinuity: bool = False) -> list[Action]:
        """One access unit at ``pts_ns`` (server clock). ``discontinuity``: the timeline re-anchored,
        or the source was reset, just before this unit."""
        self.frames_in += 1
        size = au.size or sum(len(n) for n in au.nals)
        self._learn_inband_params(au)
        actions: list[Action] = []

        if self._open:
            if discontinuity:
                if not au.keyframe:
                    # This frame belongs to another timeline and cannot start a segment: cut the
                    # GOP before it, as for a gap, and wait for a keyframe.
                    self._cut(actions)
                    self._drop(actions, DROP_DISCONTINUITY, 1, size)
                    self._after_gap = True
                    return actions
                # Clean cut at this keyframe: the GOP in flight is complete, its last frame's
                # duration is unknown (the next pts is on another timeline): use the nominal one.
                self._emit_held(actions, next_pts_ns=None, extra=None)
                actions.append(Close(self._last_pts_ns + self._nominal_ns, drop_tail=False))
                self._reset_segment()
            elif au.keyframe:
                self._learn_interval(pts_ns)
                if pts_ns >= self._boundary_ns or self._params_changed:
                    # Rotation (or new parameter sets on the same timeline): exactly contiguous.
                    self._emit_held(actions, next_pts_ns=pts_ns, extra=None)
                    actions.append(Close(pts_ns, drop_tail=False))
                    self._reset_segment()
                else:
                    self._emit_held(actions, next_pts_ns=pts_ns, extra=None)
                    key = self._keyframe(au, pts_ns, first=False)
                    self._append_mux(actions, key)
                    self._key = key
                    self._key_au = au
                    self._key_bytes = size
                    self._last_pts_ns = pts_ns
                    return actions
            else:
                self._observe_interval(pts_ns)
                self._held.append((au.annexb(), pts_ns))
                self._held_bytes += size
                self._last_pts_ns = max(self._last_pts_ns, pts_ns)
                assert self._key is not None
                gop_frames = 1 + len(self._held)
                gop_bytes = self._key_bytes + self._held_bytes
                if gop_frames > self.max_gop_frames or gop_bytes > self.max_gop_bytes:
                    self._abort_gop(actions, DROP_GOP_TOO_LARGE, extra_frames=0, extra_bytes=0)
                return actions

        # No segment open: only a keyframe with known parameter sets can open one.
        if not au.keyframe:
            self._drop(actions, DROP_GAP if self._after_gap else DROP_WAIT_KEYFRAME, 1, size)
        elif not all(t in self._params for t in self.codec.param_types):
            self._drop(actions, DROP_NO_PARAMETER_SETS, 1, size)
        else:
            self._open_at(actions, au, pts_ns, size)
        return actions

    def gap(self, reason: str = "loss") -> list[Action]:
        """Data was lost or malformed: the GOP in flight is cut at the loss.

        Every frame pushed before the loss is whole (the depacketizer never emits a damaged access
        unit) and, in decode order, references only earlier frames: those are written and the
        segment closes after the last of them. Frames after the loss may reference what was
        lost: they are dropped (reason ``gap``) until the next keyframe opens a segment.
        """
        self.gaps[reason] = self.gaps.get(reason, 0) + 1
        actions: list[Action] = []
        if self._open:
            self._cut(actions)
        self._after_gap = True
        return actions

    def stop(self) -> list[Action]:
        """Shutdown: flush the GOP in flight (last duration nominal) and close the segment."""
        actions: list[Action] = []
        if self._open:
            self._emit_held(actions, next_pts_ns=None, extra=None)
            actions.append(Close(self._last_pts_ns + self._nominal_ns, drop_tail=False))
            self._reset_segment()
        return actions

    # -- internals --------------------------------------------------------------------------

    def _learn_inband_params(self, au: AccessUnit) -> None:
        # Every access unit, not only keyframes: some cameras send their parameter sets as an
        # access unit of their own. One table lookup per NAL unit; no list unless one is found.
        codec = self.codec
        types = codec.param_types
        nal_types = codec.payload_format.nal_types
        for nal in au.nals:
            if nal and nal_types[nal[0]] in types:
                self.parameter_sets([nal])

    def _observe_interval(self, pts_ns: int) -> None:
        # In decode order with B-frames this over-estimates (a P-frame jumps several frames ahead);
        # _learn_interval corrects it from the whole GOP in presentation order.
        interval_ns = pts_ns - self._last_pts_ns
        if interval_ns > 0:
            self._nominal_ns = interval_ns

    def _learn_interval(self, next_pts_ns: int) -> None:
        """The GOP in flight is complete: the nominal interval is its last one in presentation order."""
        assert self._key is not None
        ordered = sorted([self._key.pts_ns, *(p for _, p in self._held), next_pts_ns])
        interval_ns = ordered[-1] - ordered[-2]
        if interval_ns > 0:
            self._nominal_ns = interval_ns

    def _append_mux(self, actions: list[Action], frame: Frame) -> None:
        """Add ``frame`` to the last action if it is a ``Mux``, else as a ``Mux`` of its own."""
        self.frames_muxed += 1
        if actions and isinstance(actions[-1], Mux):
            actions[-1] = Mux((*actions[-1].frames, frame))
        else:
            actions.append(Mux((frame,)))

    def _keyframe(self, au: AccessUnit, pts_ns: int, first: bool) -> Frame:
        data = au.annexb()
        if first:
            codec = self.codec
            types = {codec.nal_type(n) for n in au.nals}
            if not types.issuperset(codec.param_types):
                params = [self._params[t] for t in codec.param_types]
                # Access unit delimiters must stay first; the parameter sets follow them.
                lead = 0
                while lead < len(au.nals) and codec.nal_type(au.nals[lead]) == codec.aud_type:
                    lead += 1
                rest = [n for n in au.nals[lead:] if codec.nal_type(n) not in codec.param_types]
                data = AccessUnit(au.rtp_timestamp, [*au.nals[:lead], *params, *rest], True).annexb()
        return Frame(data, pts_ns, self._nominal_ns, True, pts_ns - self._seg_reorder_ns)

    def _param_tuple(self) -> tuple[bytes, ...]:
        return tuple(self._params[t] for t in self.codec.param_types)

    def _open_at(self, actions: list[Action], au: AccessUnit, pts_ns: int, size: int) -> None:
        self._seg_reorder_ns = self.reorder_ns
        key = self._keyframe(au, pts_ns, first=True)
        actions.append(Open(pts_ns, self.codec, self._param_tuple(), self.reorder_ns))
        actions.append(Mux((key,)))
        self.frames_muxed += 1
        self.segments_opened += 1
        self._open = True
        self._params_changed = False
        self._after_gap = False
        self._start_ns = pts_ns
        self._boundary_ns = self.boundary_after(pts_ns)
        self._key = key
        self._key_au = au
        self._key_bytes = size
        self._last_pts_ns = pts_ns

    def _emit_held(self, actions: list[Action], next_pts_ns: int | None, extra: Frame | None) -> None:
        """Mux the held frames of the GOP in flight (it is complete), plus ``extra``, if any.

        Durations follow presentation order (a frame lasts until the next pts of its GOP, or
        ``next_pts_ns``); dts are the GOP's pts in rank order minus the segment's decode delay.
        A GOP that needs a longer delay than its segment has re-opens the segment at its
        keyframe (the segment so far closes there, ``drop_tail``), with the delay it needs.
        """
        held = self._held
        frames: list[Frame] = []
        if held:
            assert self._key is not None and self._key_au is not None
            key_pts = self._key.pts_ns
            decode = [key_pts, *(p for _, p in held)]
            ranked = sorted(decode)
            needed = max(r - p for r, p in zip(ranked, decode, strict=True))
            if needed > self._seg_reorder_ns:
                self.reorder_ns = max(self.reorder_ns, needed)
                self._reopen_at_key(actions, needed)
            if next_pts_ns is None and ranked[-1] > ranked[-2]:
                self._nominal_ns = ranked[-1] - ranked[-2]  # the GOP ends here: its last interval
            later = sorted({*decode, *((next_pts_ns,) if next_pts_ns is not None else ())})
            successor = dict(itertools.pairwise(later))
            delay = self._seg_reorder_ns
            for (data, pts_ns), dts_ns in zip(held, ranked[1:], strict=True):
                nxt = successor.get(pts_ns)
                duration_ns = nxt - pts_ns if nxt is not None else self._nominal_ns
                frames.append(Frame(data, pts_ns, max(duration_ns, 0), False, dts_ns - delay))
        if extra is not None:
            frames.append(extra)
        self._held = []
        self._held_bytes = 0
        if frames:
            actions.append(Mux(tuple(frames)))
            self.frames_muxed += len(frames)

    def _reopen_at_key(self, actions: list[Action], reorder_ns: int) -> None:
        """Close the open segment before the keyframe in flight (``drop_tail``: it is the last one
        muxed) and open a new one at that keyframe with ``reorder_ns``. Nothing is lost: the
        keyframe is muxed again (``tail_frames_discarded`` and ``frames_muxed`` both count it)."""
        assert self._key is not None and self._key_au is not None
        key_pts = self._key.pts_ns
        actions.append(Close(key_pts, drop_tail=True))
        self.tail_frames_discarded += 1
        self._seg_reorder_ns = reorder_ns
        key = self._keyframe(self._key_au, key_pts, first=True)
        actions.append(Open(key_pts, self.codec, self._param_tuple(), reorder_ns))
        actions.append(Mux((key,)))
        self.frames_muxed += 1
        self.segments_opened += 1
        self._start_ns = key_pts
        self._boundary_ns = self.boundary_after(key_pts)
        self._key = key

    def _cut(self, actions: list[Action]) -> None:
        """Write the held frames of the GOP in flight and close after the last one."""
        self._emit_held(actions, next_pts_ns=None, extra=None)
        actions.append(Close(self._last_pts_ns + self._nominal_ns, drop_tail=False))
        self._reset_segment()

    def _abort_gop(self, actions: list[Action], reason: str, extra_frames: int, extra_bytes: int) -> None:
        """Drop the GOP in flight (its muxed keyframe included) and close with ``drop_tail``."""
        assert self._key is not None
        frames = 1 + len(self._held) + extra_frames
        nbytes = self._key_bytes + self._held_bytes + extra_bytes
        self._drop(actions, reason, frames, nbytes)
        actions.append(Close(self._key.pts_ns, drop_tail=True))
        self.tail_frames_discarded += 1
        self._reset_segment()

    def _drop(self, actions: list[Action], reason: str, frames: int, nbytes: int) -> None:
        actions.append(Drop(frames, nbytes, reason))
        self.frames_dropped[reason] = self.frames_dropped.get(reason, 0) + frames
        self.bytes_dropped[reason] = self.bytes_dropped.get(reason, 0) + nbytes

    def _reset_segment(self) -> None:
        self._open = False
        self._key = None
        self._key_au = None
        self._held = []
        self._held_bytes = 0
