#!/usr/bin/env python3
"""The long fuzz run (``make fuzz``): 10^6 inputs through every parser that reads camera bytes.

A seeded mutation loop, not hypothesis: hypothesis spends most of a long run shrinking and
replaying its database, while what a long run is for is volume. The short property tests
(``tests/unit/test_fuzz_*.py``, part of ``make test``) cover the shapes; this script multiplies
the inputs. Targets, in turn (``--only`` picks some):

- ``scanner``: the fMP4 recovery scanner on a real segment truncated, bit-flipped, spliced, with
  bytes inserted or dropped, and on random bytes; must never raise, reads stay in the file;
- ``h264`` / ``h265``: the depacketizers fed real RTP packets of a real clip, mutated, dropped,
  duplicated and reordered; only ``ValueError``, and their state stays within its bounds;
- ``rtsp``: ``LeanConnection.data_received`` with RTSP responses and interleaved frames mutated
  and cut anywhere; nothing escapes, a failure is a ``StreamError``, the buffer stays bounded;
- ``sdp``: csud's SDP parser (``ValueError`` only), then as the session reads a DESCRIBE answer
  (``parse_description`` and ``stream_description`` inside ``rtsp_errors``: ``StreamError`` only);
- ``rtcp``: ``parse_rtcp_packets`` (``ValueError`` only).

Any other exception, or an input taking more than ``--slow`` seconds, is a finding: the input is
written (hex) under ``--out`` and the run exits 1 after the summary.

    .venv/bin/python scripts/fuzz.py --inputs 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from csud.errors import StreamError
from csud.media import h264, h265
from csud.media.rtp import build_rtp, parse_rtcp_packets
from csud.recording.segmenter import Frame
from csud.recording.writer import FragmentMuxer
from csud.rtsp.aiortsp_adapter import LeanConnection, rtsp_errors
from csud.rtsp.client import parse_description, stream_description
from csud.rtsp.interleave import INTERLEAVED_HEADER_SIZE, MAX_MESSAGE_BYTES
from csud.rtsp.sdp import parse_sdp
from csud.store.scan import MAX_MOOF_SIZE, scan
from tests.media import FRAME_NS, GOP, T0_NS, encode

MAX_BUFFERED = 2 * MAX_MESSAGE_BYTES + 0xFFFF + INTERLEAVED_HEADER_SIZE


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One to four random edits: flip, set, insert, delete, truncate, splice, duplicate."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[at % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[at % len(buf)] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x24, rng.randrange(256)))
        elif op == 2:
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:
            del buf[at : at + rng.randint(1, 64)]
        elif op == 4:
            del buf[at:]
        elif op == 5 and pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[at:] = other[cut:]
        elif op == 6:
            chunk = bytes(buf[at : at + rng.randint(1, 256)])
            buf[at:at] = chunk
        else:
            # A 32-bit field set to an edge value (box sizes, counts, lengths).
            if len(buf) >= 4:
                pos = rng.randrange(len(buf) - 3)
                buf[pos : pos + 4] = rng.choice((0, 1, 7, 8, 0xFFFFFFFF, 0x7FFFFFFF, len(buf))).to_bytes(
                    4, "big"
                )
    return bytes(buf)


class Corpus:
    def __init__(self) -> None:
        aus = encode(2 * GOP, width=64, height=48)
        muxer = FragmentMuxer(64, 48)
        frames = [Frame(au.annexb(), T0_NS + i * FRAME_NS, FRAME_NS, au.keyframe) for i, au in enumerate(aus)]
        seg = muxer.mux(frames[:1], T0_NS)
        seg += muxer.mux(frames[1 : GOP + 1], T0_NS)
        seg += muxer.mux(frames[GOP + 1 :], T0_NS)
        self.segment = seg + muxer.close()
        self.h264_packets: list[bytes] = []
        seq = 0
        for ts, au in enumerate(aus):
            payloads = h264.packetize_au(list(au.nals), 200, True)
            for i, p in enumerate(payloads):
                self.h264_packets.append(build_rtp(96, seq, ts * 3600, 7, i == len(payloads) - 1, p))
                seq += 1
        self.h265_packets: list[bytes] = []
        vps, sps, pps = b"\x40\x01\x0c\x01", b"\x42\x01\x01\x01", b"\x44\x01\xc0"
        for ts in range(30):
            nals = (
                [vps, sps, pps, b"\x26\x01" + bytes(range(200))]
                if ts % 10 == 0
                else [b"\x02\x01" + bytes(300)]
            )
            payloads = h265.packetize_au(nals, 120, True)
            for i, p in enumerate(payloads):
                self.h265_packets.append(build_rtp(96, seq, ts * 3600, 9, i == len(payloads) - 1, p))
                seq += 1
        self.rtsp = [
            b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: OPTIONS, DESCRIBE\r\n\r\n",
            b'RTSP/1.0 401 Unauthorized\r\nCSeq: 2\r\nWWW-Authenticate: Digest realm="r", nonce="n"\r\n\r\n',
            b"RTSP/1.0 200 OK\r\nCSeq: 3\r\nContent-Type: application/sdp\r\nContent-Length: 12\r\n\r\n"
            b"v=0\r\ns=x\r\n\r\n",
            b"GET_PARAMETER rtsp://c RTSP/1.0\r\nCSeq: 7\r\nSession: 1\r\n\r\n",
            *(b"$\x00" + len(p).to_bytes(2, "big") + p for p in self.h264_packets[:20]),
        ]
        self.sdp = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=cam\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=control:*\r\n"
            "m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
            "a=fmtp:96 packetization-mode=1;profile-level-id=42001e;sprop-parameter-sets=Z0IAHqtA,aM4=\r\n"
            "a=control:trackID=0\r\n"
        )
        self.rtcp = bytes.fromhex(
            "80c800060000000700000000000000000000000000000000000000000000000081ca0003000000070103616263"
        )


class Fuzzer:
    def __init__(self, rng: random.Random, corpus: Corpus, slow: float, out: Path) -> None:
        self.rng = rng
        self.c = corpus
        self.slow = slow
        self.out = out
        self.findings = 0
        self.inputs: dict[str, int] = {}

    def finding(self, target: str, data: bytes, what: str) -> None:
        self.findings += 1
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"{target}-{self.findings}.hex"
        path.write_text(data.hex() + "\n" + what)
        print(f"FINDING {target}: {what.splitlines()[-1] if what else ''} -> {path}", flush=True)

    def run(self, target: str, data: bytes, call: Callable[[bytes], None]) -> None:
        self.inputs[target] = self.inputs.get(target, 0) + 1
        started = time.perf_counter()
        try:
            call(data)
        except Exception:
            self.finding(target, data, traceback.format_exc())
        if time.perf_counter() - started > self.slow:
            self.finding(target, data, f"slow: {time.perf_counter() - started:.2f} s")

    # -- targets ------------------------------------------------------------------------------

    def scanner(self) -> None:
        seg = self.c.segment
        data = (
            self.rng.randbytes(self.rng.randint(0, 512))
            if self.rng.random() < 0.1
            else mutate(self.rng, seg, [seg])
        )

        def call(blob: bytes) -> None:
            def read(offset: int, n: int) -> bytes:
                assert offset >= 0 and 0 <= n <= MAX_MOOF_SIZE and offset + n <= len(blob)
                return blob[offset : offset + n]

            result = scan(read, len(blob))
            assert result.good_end <= len(blob)

        self.run("scanner", data, call)

    def _depack(self, target: str, packets: list[bytes], make: Callable[[], Any], mod: Any) -> None:
        rng = self.rng
        start = rng.randrange(len(packets))
        stream = list(packets[start : start + rng.randint(1, 60)])
        for _ in range(rng.randint(1, 6)):
            op = rng.randrange(4)
            i = rng.randrange(len(stream))
            if op == 0:
                stream[i] = mutate(rng, stream[i], packets)
            elif op == 1:
                del stream[i]
            elif op == 2:
                stream.insert(i, stream[i])
            else:
                j = rng.randrange(len(stream))
                stream[i], stream[j] = stream[j], stream[i]
            if not stream:
                stream = [rng.randbytes(20)]
        blob = b"".join(len(p).to_bytes(2, "big") + p for p in stream)

        def call(_: bytes) -> None:
            d = make()
            for p in stream:
                with contextlib.suppress(ValueError):
                    d.feed(p)
                assert d._fu_size <= mod.MAX_NAL_SIZE and d._au_size + d._fu_size <= mod.MAX_AU_SIZE
                assert len(d._au_nals) <= mod.MAX_AU_NALS
                d.take_events()

        self.run(target, blob, call)

    def h264(self) -> None:
        self._depack("h264", self.c.h264_packets, h264.H264Depacketizer, h264)

    def h265(self) -> None:
        self._depack("h265", self.c.h265_packets, h265.H265Depacketizer, h265)

    def rtsp(self) -> None:
        rng = self.rng
        parts = [rng.choice(self.c.rtsp) for _ in range(rng.randint(1, 8))]
        data = mutate(rng, b"".join(parts), self.c.rtsp)
        cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 6)))

        def call(blob: bytes) -> None:
            conn = LeanConnection("127.0.0.1", 554, "u", "p", on_packet=lambda *a: None)
            conn.connection_made(_Transport())
            pos = 0
            for cut in [*cuts, len(blob)]:
                conn.data_received(blob[pos:cut])
                pos = cut
                assert conn.demux.buffered <= MAX_BUFFERED
            if conn.result.done():
                assert isinstance(conn.result.exception(), StreamError)

        self.run("rtsp", data, call)

    def sdp(self) -> None:
        text = mutate(self.rng, self.c.sdp.encode(), [self.c.sdp.encode()]).decode("utf-8", "replace")

        def call(blob: bytes) -> None:
            with contextlib.suppress(ValueError):
                parse_sdp(text)
            try:
                with rtsp_errors("camera"):
                    description = stream_description(parse_description(text), 60)
                assert description.encoding in ("H264", "H265")
            except StreamError:
                pass

        self.run("sdp", text.encode(), call)

    def rtcp(self) -> None:
        data = mutate(self.rng, self.c.rtcp, [self.c.rtcp])

        def call(blob: bytes) -> None:
            with contextlib.suppress(ValueError):
                parse_rtcp_packets(blob)

        self.run("rtcp", data, call)


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


TARGETS = ("scanner", "h264", "h265", "rtsp", "sdp", "rtcp")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", action="append", choices=TARGETS)
    parser.add_argument("--slow", type=float, default=1.0, help="seconds above which an input is a finding")
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    args = parser.parse_args()
    asyncio.set_event_loop(asyncio.new_event_loop())  # aiortsp's connection makes a Future
    rng = random.Random(args.seed)
    fuzzer = Fuzzer(rng, Corpus(), args.slow, args.out)
    targets = [getattr(fuzzer, t) for t in (args.only or TARGETS)]
    started = time.perf_counter()
    for n in range(args.inputs):
        targets[n % len(targets)]()
        if (n + 1) % 100_000 == 0:
            rate = (n + 1) / (time.perf_counter() - started)
            print(f"{n + 1} inputs, {rate:.0f}/s, {fuzzer.findings} findings", flush=True)
    seconds = time.perf_counter() - started
    print(f"fuzz: {args.inputs} inputs in {seconds:.0f} s (seed {args.seed}): {fuzzer.inputs}")
    print(f"findings: {fuzzer.findings}" + (f" (inputs under {args.out}/)" if fuzzer.findings else ""))
    return 1 if fuzzer.findings else 0


if __name__ == "__main__":
    sys.exit(main())
