#!/usr/bin/env python3
"""Hot-path benchmark: RTP packets of one 4 Mbit/s, 25 fps camera through its depacketizer.

Builds ``--seconds`` of H.264 (``--codec h264``, the default: H264Depacketizer, STAP-A and
FU-A) or H.265 (``--codec h265``: H265Depacketizer, AP and FU) stream (1 s GOPs, IDR about
8 times a P frame, fragments with ``--mtu``-byte payloads), then times feeding every packet
and draining the events after each one, as the receiving loop does. Prints the median of
``--runs`` runs in µs per packet and the share of one core one camera costs. Also compares
the two ways of reassembling fragments (list of slices + join, kept; bytearray +=).

    .venv/bin/python scripts/bench_depacketize.py [--codec h265] [--seconds 10] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from csud.media import h264, h265
from csud.media.rtp import build_rtp


@dataclass(frozen=True)
class Codec:
    """What the benchmark needs of one codec: its parameter sets, the NAL header of an IDR
    and of a P slice (up to and including the first slice-header byte), and its RTP code."""

    parameter_sets: tuple[bytes, ...]
    idr_header: bytes
    p_header: bytes
    depacketizer: Callable[[Sequence[bytes]], h264.H264Depacketizer | h265.H265Depacketizer]
    packetize_au: Callable[[Sequence[bytes], int], list[bytes]]


CODECS = {
    "h264": Codec(
        (
            bytes.fromhex("6742c028da01e0089f961000000300100000030328f1832a"),
            bytes.fromhex("68ce3c80"),
        ),
        b"\x65\x88",  # IDR, first_mb_in_slice 0
        b"\x41\x9a",  # non-IDR slice, first_mb_in_slice 0
        h264.H264Depacketizer,
        h264.packetize_au,
    ),
    "h265": Codec(
        (  # VPS, SPS, PPS of a 320x240 libx265 stream
            bytes.fromhex("40010c01ffff01600000030090000003000003003cba0240"),
            bytes.fromhex("42010101600000030090000003000003003ca00a080f165ba4a4c2e68080000003008000000c84"),
            bytes.fromhex("4401c0718312"),
        ),
        b"\x26\x01\xaf",  # IDR_W_RADL, first_slice_segment_in_pic_flag
        b"\x02\x01\xd0",  # TRAIL_R, first_slice_segment_in_pic_flag
        h265.H265Depacketizer,
        h265.packetize_au,
    ),
}


def build_stream(codec: Codec, seconds: int, bitrate: int, fps: int, mtu: int) -> list[bytes]:
    bytes_per_gop = bitrate // 8
    p_size = bytes_per_gop // (fps - 1 + 8)
    idr_size = 8 * p_size
    pattern = bytes(range(1, 256)) * (idr_size // 255 + 1)
    packets, seq = [], 0
    for frame in range(seconds * fps):
        if frame % fps == 0:
            nals = [*codec.parameter_sets, codec.idr_header + pattern[: idr_size - len(codec.idr_header)]]
        else:
            body = pattern[frame % 200 : frame % 200 + p_size - len(codec.p_header)]
            nals = [codec.p_header + body]
        payloads = codec.packetize_au(nals, mtu)
        for i, payload in enumerate(payloads):
            packets.append(build_rtp(96, seq, frame * 3600, 0x1234, i == len(payloads) - 1, payload))
            seq = (seq + 1) & 0xFFFF
    return packets


def run_once(codec: Codec, packets: list[bytes]) -> tuple[float, int]:
    d = codec.depacketizer(codec.parameter_sets)
    feed, take = d.feed, d.take_events
    units = 0
    t0 = time.perf_counter()
    for p in packets:
        feed(p)
        if d.events:
            units += len(take())
    elapsed = time.perf_counter() - t0
    assert d.lost_packets == d.malformed_packets == 0
    return elapsed, units


def run_once_offsets(codec: Codec, buf: memoryview, spans: list[tuple[int, int]]) -> float:
    """Packets fed as offsets into one receive buffer (TCP interleaved), memoryview input."""
    d = codec.depacketizer(codec.parameter_sets)
    feed = d.feed
    t0 = time.perf_counter()
    for a, b in spans:
        feed(buf, a, b)
        if d.events:
            d.take_events()
    return time.perf_counter() - t0


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def fu_accumulation(packets: list[bytes], runs: int) -> tuple[float, float]:
    """ns per fragment: list of bytes slices + join (kept) against bytearray +=."""
    frags = [p for p in packets if len(p) > 100]

    def as_list() -> float:
        t0 = time.perf_counter()
        parts: list[bytes] = [b"\x65"]
        for i, p in enumerate(frags):
            parts.append(p[14:])
            if i % 20 == 19:
                b"".join(parts)
                parts = [b"\x65"]
        return time.perf_counter() - t0

    def as_bytearray() -> float:
        t0 = time.perf_counter()
        acc = bytearray(b"\x65")
        for i, p in enumerate(frags):
            acc += p[14:]
            if i % 20 == 19:
                bytes(acc)
                acc = bytearray(b"\x65")
        return time.perf_counter() - t0

    n = len(frags)
    return median_of(runs, as_list) / n * 1e9, median_of(runs, as_bytearray) / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--codec", choices=sorted(CODECS), default="h264")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--bitrate", type=int, default=4_000_000, help="bit/s")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--mtu", type=int, default=1400, help="RTP payload bytes")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    codec = CODECS[args.codec]
    packets = build_stream(codec, args.seconds, args.bitrate, args.fps, args.mtu)
    n = len(packets)
    _, units = run_once(codec, packets)
    assert units == args.seconds * args.fps, units
    elapsed = median_of(args.runs, lambda: run_once(codec, packets)[0])
    us_per_packet = elapsed / n * 1e6
    packets_per_second = n / args.seconds
    core_share = elapsed / args.seconds * 100

    joined = b"".join(b"$\x00" + len(p).to_bytes(2, "big") + p for p in packets)
    spans, pos = [], 0
    for p in packets:
        spans.append((pos + 4, pos + 4 + len(p)))
        pos += 4 + len(p)
    view = memoryview(bytearray(joined))
    elapsed_mv = median_of(args.runs, lambda: run_once_offsets(codec, view, spans))

    list_ns, bytearray_ns = fu_accumulation(packets, args.runs)
    print(
        f"stream: {args.codec}, {args.seconds} s, {args.bitrate / 1e6:g} Mbit/s, {args.fps} fps, "
        f"{n} packets ({packets_per_second:.0f}/s), {units} access units, median of {args.runs} runs"
    )
    print(
        f"bytes packets:            {us_per_packet:.3f} µs/packet, {core_share:.3f} % of one core per camera"
    )
    print(
        f"memoryview at offsets:    {elapsed_mv / n * 1e6:.3f} µs/packet, "
        f"{elapsed_mv / args.seconds * 100:.3f} % of one core per camera"
    )
    print(
        f"FU accumulation:          list+join {list_ns:.0f} ns/fragment, "
        f"bytearray+= {bytearray_ns:.0f} ns/fragment"
    )
    print(f"=> {int(100 / core_share)} such cameras per core (depacketizing only)")


if __name__ == "__main__":
    main()
