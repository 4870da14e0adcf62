"""Put UDP RTP packets back in sequence order, within a small window.

Pure: no I/O, no clock. Over UDP, packets may arrive out of order; the depacketizer treats a
packet behind the expected sequence number as late (dropped) and one ahead as a loss. This
buffer holds packets that arrive ahead of a hole for at most ``window`` packets; when the hole
fills they are released in order; when the window overflows the hole is given up (released as
they are, so the depacketizer sees and counts the loss).

The in-order case, nearly every packet, costs one comparison and one call.
"""

from __future__ import annotations

from collections.abc import Callable

SEQ_MOD = 1 << 16
SEQ_HALF = SEQ_MOD >> 1
DEFAULT_WINDOW = 32

Emit = Callable[[bytes], None]


class ReorderBuffer:
    __slots__ = ("_expected", "_held", "_ssrc", "emit", "late_packets", "reordered_packets", "window")

    def __init__(self, emit: Emit, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.emit = emit
        self.window = window
        self._expected = -1
        self._ssrc = b""  # sequence numbers only compare within one source
        self._held: dict[int, bytes] = {}
        self.reordered_packets = 0  # packets released after waiting for a hole to fill
        self.late_packets = 0  # packets behind what was already released (duplicates, stragglers)

    @property
    def held(self) -> int:
        return len(self._held)

    def push(self, packet: bytes) -> None:
        """One RTP packet (shorter than an RTP header, it goes through untouched)."""
        if len(packet) < 12:
            self.emit(packet)  # the depacketizer reports it as malformed
            return
        ssrc = packet[8:12]
        if ssrc != self._ssrc:
            # A new source (camera reboot): its sequence numbers start anywhere. Release what the
            # old one left, in order, and follow the new one from this packet.
            self.flush()
            self._ssrc = ssrc
            self._expected = -1
        seq = packet[2] << 8 | packet[3]
        if seq == self._expected or self._expected < 0:
            self._expected = (seq + 1) % SEQ_MOD
            self.emit(packet)
            if self._held:
                self._drain()
            return
        ahead = (seq - self._expected) % SEQ_MOD
        if ahead >= SEQ_HALF:  # behind: already released or given up
            self.late_packets += 1
            self.emit(packet)  # the depacketizer counts and drops it
            return
        self._held[seq] = packet
        if len(self._held) > self.window:
            self._give_up_hole()

    def flush(self) -> None:
        """Release everything held, in order (end of stream)."""
        while self._held:
            self._give_up_hole()

    def _drain(self) -> None:
        held = self._held
        while self._expected in held:
            packet = held.pop(self._expected)
            self.reordered_packets += 1
            self._expected = (self._expected + 1) % SEQ_MOD
            self.emit(packet)

    def _give_up_hole(self) -> None:
        # Jump to the nearest held packet: the hole before it is lost.
        nearest = min(self._held, key=lambda s: (s - self._expected) % SEQ_MOD)
        self._expected = nearest
        self._drain()
