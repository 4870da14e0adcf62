"""The clip as ready-to-send bytes: every frame packetized once, patched per session.

For every frame of the clip, the RTP packets (RFC 6184: STAP-A for small NAL units, FU-A for
large ones, marker on the last packet of the access unit) are laid out as one TCP-interleaved
blob, ``$ <channel> <length:16> <rtp packet>`` repeated. Sequence number, timestamp and SSRC
are left zero (and the channel 0); a session copies the blob and patches them in place at the
precomputed offsets (:func:`patch_frame`), then writes it with one ``transport.write``. That is
the whole per-frame cost of a session: one copy and one ``pack_into`` per packet.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from csud.media.h264 import packetize_au
from csud.media.rtp import RTP_SEQ_OFFSET, RTP_SSRC_OFFSET, RTP_TS_OFFSET, build_rtp
from csud.sim.clip import Clip

PAYLOAD_TYPE = 96
RTP_CLOCK_RATE = 90_000
INTERLEAVED_MAGIC = b"$"
INTERLEAVED_HEADER_SIZE = 4  # "$", channel, 16-bit length
INTERLEAVED_CHANNEL_OFFSET = 1
DEFAULT_MTU_PAYLOAD = 1400
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32

# seq, timestamp and SSRC are contiguous in the RTP header: one pack_into patches all three.
assert RTP_TS_OFFSET == RTP_SEQ_OFFSET + 2 and RTP_SSRC_OFFSET == RTP_TS_OFFSET + 4
_SEQ_TS_SSRC = struct.Struct("!HII")
_pack_seq_ts_ssrc = _SEQ_TS_SSRC.pack_into
PATCH_OFFSET = INTERLEAVED_HEADER_SIZE + RTP_SEQ_OFFSET  # from a packet's "$" to its seq field


@dataclass(frozen=True, slots=True)
class PacketizedFrame:
    """One frame of the clip as an interleaved blob.

    ``packet_offsets[i]`` is the offset of packet i's ``$`` in ``blob``; ``payload_octets`` is
    the RTP payload bytes (what an RTCP SR's octet count adds up); ``index`` the clip position.
    """

    index: int
    keyframe: bool
    blob: bytes
    packet_offsets: tuple[int, ...]
    payload_octets: int

    @property
    def packet_count(self) -> int:
        return len(self.packet_offsets)


def packetize_clip(
    clip: Clip, mtu_payload: int = DEFAULT_MTU_PAYLOAD, payload_type: int = PAYLOAD_TYPE
) -> tuple[PacketizedFrame, ...]:
    out = []
    for index, frame in enumerate(clip.frames):
        payloads = packetize_au(list(frame.nals), mtu_payload=mtu_payload)
        if not payloads:
            raise ValueError(f"frame {index} packetized to no RTP packet")
        blob = bytearray()
        offsets = []
        last = len(payloads) - 1
        for i, payload in enumerate(payloads):
            packet = build_rtp(payload_type, 0, 0, 0, i == last, payload)
            offsets.append(len(blob))
            blob += INTERLEAVED_MAGIC + b"\x00" + len(packet).to_bytes(2, "big") + packet
        out.append(
            PacketizedFrame(
                index=index,
                keyframe=frame.keyframe,
                blob=bytes(blob),
                packet_offsets=tuple(offsets),
                payload_octets=sum(len(p) for p in payloads),
            )
        )
    return tuple(out)


def patch_frame(frame: PacketizedFrame, seq: int, timestamp: int, ssrc: int, channel: int = 0) -> bytearray:
    """A copy of ``frame.blob`` with consecutive sequence numbers from ``seq`` (mod 2**16),
    ``timestamp`` and ``ssrc`` on every packet, sent on interleaved ``channel``."""
    buf = bytearray(frame.blob)
    pack = _pack_seq_ts_ssrc
    for offset in frame.packet_offsets:
        pack(buf, offset + PATCH_OFFSET, seq & 0xFFFF, timestamp, ssrc)
        seq += 1
    if channel:
        for offset in frame.packet_offsets:
            buf[offset + INTERLEAVED_CHANNEL_OFFSET] = channel
    return buf
