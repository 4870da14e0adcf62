"""RTSP over TCP: split the byte stream into interleaved binary frames and RTSP messages.

RFC 2326 §10.12 interleaves ``$ <channel:8> <length:16> <data>`` frames with ordinary RTSP
messages on one connection. This is the hot path of every TCP camera, so it works on offsets:
a binary frame is handed to its callback as ``(channel, buffer, start, end)``, never copied,
and no object is made per frame. RTSP messages (responses, and requests some servers send
to the client) are rare and are handed over whole, as bytes, to be parsed elsewhere.

Hostile input: bytes that are neither a ``$`` frame nor the start of an RTSP message are
skipped up to the next ``$`` and counted (``garbage_bytes``); a header block longer than
``max_message_bytes`` raises :class:`ValueError`. A frame that announces more bytes than ever
arrive just waits: the session's stall timer ends it.
"""

from __future__ import annotations

from collections.abc import Callable

INTERLEAVED_MAGIC = 0x24  # "$"
INTERLEAVED_HEADER_SIZE = 4  # magic, channel, 16-bit length
HEADER_END = b"\r\n\r\n"
MAX_MESSAGE_BYTES = 64 * 1024

BinaryHandler = Callable[[int, bytes, int, int], None]
MessageHandler = Callable[[bytes], None]


def _content_length(header: bytes) -> int:
    for line in header.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise ValueError(f"bad Content-Length {value.strip()[:20]!r}") from None
            if length < 0 or length > MAX_MESSAGE_BYTES:
                raise ValueError(f"Content-Length {length} out of range")
            return length
    return 0


class InterleavedDemux:
    """Feed it TCP bytes; it calls ``on_binary`` per ``$`` frame and ``on_message`` per RTSP message."""

    __slots__ = ("_tail", "garbage_bytes", "max_message_bytes", "on_binary", "on_message")

    def __init__(
        self,
        on_binary: BinaryHandler,
        on_message: MessageHandler,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.on_binary = on_binary
        self.on_message = on_message
        self.max_message_bytes = max_message_bytes
        self.garbage_bytes = 0
        self._tail = b""

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame or message."""
        return len(self._tail)

    def feed(self, data: bytes) -> None:
        pos = 0
        tail = self._tail
        if tail:
            self._tail = b""
            if tail[0] != INTERLEAVED_MAGIC:
                data = tail + data  # the rest of an RTSP message, or garbage: rare
            else:
                # The usual case: a frame cut by the TCP read. Complete it with the bytes it still
                # needs rather than copying the whole chunk behind the tail.
                if len(tail) < INTERLEAVED_HEADER_SIZE:
                    pos = INTERLEAVED_HEADER_SIZE - len(tail)
                    tail += data[:pos]
                    if len(tail) < INTERLEAVED_HEADER_SIZE:
                        self._tail = tail
                        return
                missing = INTERLEAVED_HEADER_SIZE + (tail[2] << 8 | tail[3]) - len(tail)
                if missing > len(data) - pos:
                    self._tail = tail + data[pos:]
                    return
                frame = tail + data[pos : pos + missing]
                pos += missing
                self.on_binary(frame[1], frame, INTERLEAVED_HEADER_SIZE, len(frame))
        end = len(data)
        on_binary = self.on_binary
        while pos < end:
            if data[pos] == INTERLEAVED_MAGIC:
                if end - pos < INTERLEAVED_HEADER_SIZE:
                    break
                start = pos + INTERLEAVED_HEADER_SIZE
                stop = start + (data[pos + 2] << 8 | data[pos + 3])
                if stop > end:
                    break
                on_binary(data[pos + 1], data, start, stop)
                pos = stop
                continue
            if not (0x41 <= data[pos] <= 0x5A):  # RTSP messages start with an upper-case token
                nxt = data.find(b"$", pos + 1)
                skipped = (nxt if nxt >= 0 else end) - pos
                self.garbage_bytes += skipped
                pos += skipped
                continue
            header_end = data.find(HEADER_END, pos, pos + self.max_message_bytes)
            if header_end < 0:
                if end - pos >= self.max_message_bytes:
                    raise ValueError(f"RTSP header longer than {self.max_message_bytes} bytes")
                break
            body_start = header_end + len(HEADER_END)
            stop = body_start + _content_length(data[pos:header_end])
            if stop > end:
                break
            self.on_message(data[pos:stop])
            pos = stop
        if pos < end:
            self._tail = data[pos:]
