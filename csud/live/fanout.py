"""Fan-out of one camera's frames to its live viewers: built once, queued per viewer, bounded.

The recorder calls :meth:`CameraFeed.on_frame` once per complete access unit, in decode order, on
the event loop, synchronously (decode times and B-frames' composition offsets:
:class:`csud.live.fmp4.DecodeClock`). That call builds the frame's fMP4 fragment once
(:mod:`csud.live.fmp4`) and appends the same ``bytes`` object to every viewer's queue: no
per-viewer muxing, no await, no lock.
While a viewer's queue is empty, a message goes straight to its socket through the viewer's
``sink`` (no task wake-up per frame per viewer); the queue only holds what a viewer that has fallen
behind (its socket's send buffer past a high-water mark) has not taken yet, in order.
Recording never waits for a viewer: a viewer's queue is bounded (:data:`VIEWER_QUEUE_MAX_BYTES`);
when it is full, the viewer's queued frames are dropped and it skips to the next keyframe, where a
JSON ``skipped`` event tells it how many frames it lost (counted in
``csud_live_frames_skipped_total``).

Invariants:
* A viewer's first binary message is an init segment, its first fragment a keyframe, and every
  fragment after it decodes from what came before (or a keyframe follows a ``skipped`` event).
* The fragments of the current GOP are kept (up to :data:`GOP_MAX_BYTES`), so that a new viewer
  starts at the latest keyframe and sees a picture at once.
* A new init segment (codec or parameter sets changed) is sent to every viewer before the keyframe
  that needs it, followed by an ``init`` JSON event naming the codec string.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Sequence

from csud.live import fmp4
from csud.log import get_logger
from csud.media.units import AccessUnit

VIEWER_QUEUE_MAX_BYTES = 4 * 1024 * 1024  # ~8 s at 4 Mbit/s
VIEWER_QUEUE_MAX_ITEMS = 400
GOP_MAX_BYTES = 16 * 1024 * 1024  # a longer GOP is not kept: new viewers wait for a keyframe

# (message, n): n > 0 a frame's received_ns; n < 0 a skipped event for -n frames; 0 otherwise.
Item = tuple[bytes | str, int]
# Writes a message to the viewer's socket now and returns True, or returns False (nothing written)
# when the socket is backed up: the message is then queued. Never raises, never blocks.
Sink = Callable[[bytes | str, int], bool]
REPLAYED = 1  # n of the kept GOP's frames sent to a new viewer: frames, but not live (no latency)


def event(kind: str, **fields: object) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


class Viewer:
    """One viewer's bounded queue. Filled by :class:`CameraFeed`, drained by the web shell.

    With a ``sink``, :meth:`push` hands a message to it directly while the queue is empty, so
    order is kept: a queued message is always older than one the sink is offered.
    """

    def __init__(
        self,
        max_bytes: int = VIEWER_QUEUE_MAX_BYTES,
        max_items: int = VIEWER_QUEUE_MAX_ITEMS,
        sink: Sink | None = None,
    ):
        self.sink = sink
        self.sent_direct = False  # the last message pushed went straight to the sink
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self.waiting_keyframe = True  # until its first keyframe is queued
        self.needs_init = True
        self.skipping = 0  # frames lost since the last skip began
        self.skipped_total = 0
        self.closed = False
        self.close_reason = ""

    def push(self, message: bytes | str, received_ns: int = 0) -> bool:
        """Send or queue a message; False (and nothing queued) if the queue is full."""
        if self.closed:
            return True
        if not self._items and self.sink is not None and self.sink(message, received_ns):
            self.sent_direct = True
            return True
        self.sent_direct = False
        if self._bytes + len(message) > self.max_bytes or len(self._items) >= self.max_items:
            return False
        self._items.append((message, received_ns))
        self._bytes += len(message)
        self._wake.set()
        return True

    def drop_all(self) -> tuple[int, int]:
        """Empty the queue; return (frame fragments dropped, frames of unsent skipped events)."""
        frames = sum(1 for _, received_ns in self._items if received_ns > 0)
        unsent = sum(-received_ns for _, received_ns in self._items if received_ns < 0)
        if any(isinstance(m, bytes) and not r for m, r in self._items):
            self.needs_init = True  # an init segment was among them
        self._items.clear()
        self._bytes = 0
        return frames, unsent

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed, self.close_reason = True, reason
            self._wake.set()

    async def wait(self) -> bool:
        """Until a message is queued (True) or the viewer is closed (False)."""
        while not self._items:
            if self.closed:
                return False
            self._wake.clear()
            await self._wake.wait()
        return not self.closed

    def pop(self) -> Item:
        """The oldest queued message (after :meth:`wait` said there is one)."""
        item = self._items.popleft()
        self._bytes -= len(item[0])
        return item

    async def get(self) -> Item | None:
        """The next message, or None once closed."""
        return self.pop() if await self.wait() else None

    @property
    def queued_bytes(self) -> int:
        return self._bytes


class CameraFeed:
    """One camera's live state: its init segment, the current GOP's fragments, its viewers."""

    def __init__(
        self,
        camera_id: str,
        on_skipped: Callable[[int], None] | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> None:
        """``on_skipped(frames)``: frames a viewer lost. ``on_sent(received_ns)``: a frame's fragment
        has been handed to the sink of every viewer that took it directly (once per frame, after
        the last of them: the latest, so an upper bound for each)."""
        self.camera_id = camera_id
        self._on_sent = on_sent
        self.track: fmp4.TrackInfo | None = None
        self.viewers: set[Viewer] = set()
        self._on_skipped = on_skipped
        self._codec = ""
        self._params: tuple[bytes, ...] = ()
        self._gop: list[tuple[bytes, int]] = []
        self._gop_bytes = 0
        self._gop_complete = False  # the kept GOP starts at a keyframe and nothing was left out
        self._sequence = 0
        self.clock = fmp4.DecodeClock()
        self._init_error = ""
        self.frames = 0
        self.log = get_logger(camera=camera_id)

    # -- producer side (the recorder, on the event loop) ------------------------------------

    def on_frame(
        self,
        au: AccessUnit,
        codec: str,
        parameter_sets: Sequence[bytes],
        received_ns: int,
        reorder_ns: int = 0,
    ) -> None:
        """One complete access unit, in decode order (the recorder's :data:`FrameTap`).
        ``reorder_ns``: the decode delay the recorder's segmenter has learned (B-frames; 0 without).
        Cheap when nobody watches: timing only, no fragment."""
        # Presentation time x 90 kHz is the RTP timestamp (mod 2^32) until the camera's clock jumps.
        reorder_ticks = -(-reorder_ns * fmp4.TIMESCALE // 1_000_000_000) if reorder_ns else 0
        dts, offset = self.clock.next(au.rtp_timestamp, au.keyframe, reorder_ticks)
        if au.keyframe and (codec != self._codec or tuple(parameter_sets) != self._params):
            self._new_init(codec, parameter_sets)
        if self.track is None:
            return
        if au.keyframe:
            self._gop.clear()
            self._gop_bytes = 0
            self._gop_complete = True
        elif not self._gop_complete and not self.viewers:
            return
        self._sequence += 1
        data = fmp4.fragment(self._sequence, dts, self.clock.interval, au.nals, au.keyframe, offset)
        self.frames += 1
        if self._gop_complete:
            if self._gop_bytes + len(data) <= GOP_MAX_BYTES:
                self._gop.append((data, received_ns))
                self._gop_bytes += len(data)
            else:
                self._gop_complete = False
                self._gop.clear()
                self._gop_bytes = 0
        direct = False
        for viewer in self.viewers:
            viewer.sent_direct = False
            self._offer(viewer, data, au.keyframe, received_ns)
            direct = direct or viewer.sent_direct
        if direct and self._on_sent is not None:
            self._on_sent(received_ns)

    def _new_init(self, codec: str, parameter_sets: Sequence[bytes]) -> None:
        self._codec, self._params = codec, tuple(parameter_sets)
        try:
            track = fmp4.init_segment(codec, parameter_sets)
        except ValueError as exc:
            self.track = None
            if str(exc) != self._init_error:
                self._init_error = str(exc)
                self.log.warning("live_init_failed", error=str(exc))
            return
        changed = self.track is not None
        self.track, self._init_error = track, ""
        for viewer in self.viewers:
            viewer.needs_init = True  # queued before the keyframe that follows
            if changed:
                viewer.push(event("codec_changed", codec=track.codec_string))

    def _offer(self, viewer: Viewer, data: bytes, keyframe: bool, received_ns: int) -> None:
        if viewer.waiting_keyframe:
            if not keyframe:
                if viewer.skipping:
                    viewer.skipping += 1
                    self._count_skip(viewer, 1)
                return
            viewer.waiting_keyframe = False
            if viewer.skipping:
                viewer.push(event("skipped", frames=viewer.skipping), -viewer.skipping)
                viewer.skipping = 0
        if viewer.needs_init and not self._push_init(viewer):
            self._skip(viewer, 1)
            return
        if not viewer.push(data, received_ns):
            self._skip(viewer, 1)

    def _push_init(self, viewer: Viewer) -> bool:
        assert self.track is not None
        track = self.track
        info = event("init", codec=track.codec_string, width=track.width, height=track.height)
        if viewer.push(track.init) and viewer.push(info):
            viewer.needs_init = False
            return True
        return False

    def _skip(self, viewer: Viewer, lost_now: int) -> None:
        dropped, unsent = viewer.drop_all()
        viewer.waiting_keyframe = True
        viewer.skipping += dropped + lost_now + unsent
        self._count_skip(viewer, dropped + lost_now)

    def _count_skip(self, viewer: Viewer, frames: int) -> None:
        viewer.skipped_total += frames
        if self._on_skipped is not None:
            self._on_skipped(frames)

    # -- consumer side -------------------------------------------------------------------------

    def attach(self, viewer: Viewer) -> Viewer:
        """Add a viewer; it starts at the latest keyframe (the kept GOP) or waits for the next."""
        self.viewers.add(viewer)
        viewer.needs_init = True
        if self.track is not None and self._gop_complete and self._gop:
            if self._push_init(viewer) and all(viewer.push(d, REPLAYED) for d, _ in self._gop):
                viewer.waiting_keyframe = False
            else:
                viewer.drop_all()  # a GOP larger than the queue: start at the next keyframe
                viewer.needs_init, viewer.waiting_keyframe = True, True
        return viewer

    def detach(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
