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
  At a non-key frame it is handled like a gap.
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
    """One access unit ready to mux: Annex B bytes, pts on the server's clock (UTC ns)."""

    data: bytes
    pts_ns: int
    duration_ns: int
    keyframe: bool


@dataclass(frozen=True, slots=True)
class Open:
    """Open a segment starting at ``start_ns``, in ``codec``, whose first keyframe carries
    ``parameter_sets`` (in ``codec.param_types`` order): all the writer needs (the picture size
    comes from the SPS)."""

    start_ns: int
    codec: Codec = H264
    parameter_sets: tuple[bytes, ...] = ()

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
        self._key_bytes = 0  # its payload size (as counted for drops)
        self._held: list[tuple[bytes, int]] = []  # (annexb, pts_ns) of the GOP's other frames
        self._held_bytes = 0
        self._last_pts_ns = 0  # pts of the last frame accepted into the open segment

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
                self._observe_interval(pts_ns)
                if pts_ns >= self._boundary_ns or self._params_changed:
                    # Rotation (or new parameter sets on the same timeline): exactly contiguous.
                    self._emit_held(actions, next_pts_ns=pts_ns, extra=None)
                    actions.append(Close(pts_ns, drop_tail=False))
                    self._reset_segment()
                else:
                    key = self._keyframe(au, pts_ns, first=False)
                    self._emit_held(actions, next_pts_ns=pts_ns, extra=key)
                    self._key = key
                    self._key_bytes = size
                    self._last_pts_ns = pts_ns
                    return actions
            else:
                self._observe_interval(pts_ns)
                self._held.append((au.annexb(), pts_ns))
                self._held_bytes += size
                self._last_pts_ns = pts_ns
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
        interval_ns = pts_ns - self._last_pts_ns
        if interval_ns > 0:
            self._nominal_ns = interval_ns

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
        return Frame(data, pts_ns, self._nominal_ns, True)

    def _open_at(self, actions: list[Action], au: AccessUnit, pts_ns: int, size: int) -> None:
        key = self._keyframe(au, pts_ns, first=True)
        actions.append(Open(pts_ns, self.codec, tuple(self._params[t] for t in self.codec.param_types)))
        actions.append(Mux((key,)))
        self.frames_muxed += 1
        self.segments_opened += 1
        self._open = True
        self._params_changed = False
        self._after_gap = False
        self._start_ns = pts_ns
        self._boundary_ns = self.boundary_after(pts_ns)
        self._key = key
        self._key_bytes = size
        self._last_pts_ns = pts_ns

    def _emit_held(self, actions: list[Action], next_pts_ns: int | None, extra: Frame | None) -> None:
        """Mux the held frames (durations from their successors) plus ``extra``, if any."""
        frames: list[Frame] = []
        held = self._held
        for i, (data, pts_ns) in enumerate(held):
            if i + 1 < len(held):
                duration_ns = held[i + 1][1] - pts_ns
            elif next_pts_ns is not None:
                duration_ns = next_pts_ns - pts_ns
            else:
                duration_ns = self._nominal_ns
            frames.append(Frame(data, pts_ns, max(duration_ns, 0), False))
        if extra is not None:
            frames.append(extra)
        self._held = []
        self._held_bytes = 0
        if frames:
            actions.append(Mux(tuple(frames)))
            self.frames_muxed += len(frames)

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
        self._held = []
        self._held_bytes = 0
