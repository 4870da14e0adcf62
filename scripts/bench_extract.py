#!/usr/bin/env python3
"""Extraction benchmark: ``csud extract`` of one recorded hour vs ``cp`` + ``sha256sum`` of its bytes.

Records ``--minutes`` (default 60) of one 4 Mbit/s, 25 fps, 1280x720 camera in 60-s segments
into a scratch store (the simulator's libx264 clip looped, with real time stamps, through the
real Segmenter, SegmentWriter and Index: the files are what the daemon writes), then times,
``--runs`` times each, median reported:

- ``csud extract`` of the whole recording (re-hash every segment, stream copy, +faststart,
  hash the output, manifest, signature, journal), a fresh process each run;
- ``cp`` of the same segment files into one folder, then ``sha256sum`` of the copies.

The target (issue 5): extraction at least half the speed of cp + sha256sum. Both run with the
store in the page cache (the first, unmeasured, run of each warms it). The scratch directory is
removed at the end.

    .venv/bin/python scripts/bench_extract.py [--minutes 60] [--runs 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from csud.media.units import AccessUnit
from csud.recording.segmenter import Close, Mux, Open, Segmenter
from csud.recording.writer import SegmentWriter
from csud.sim.clip import ClipParams, load_clip
from csud.store.index import Index
from csud.store.layout import segment_relpath

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import NS_PER_SECOND

T0_NS = 1_790_000_000 * NS_PER_SECOND
CSUD = str(Path(sys.executable).parent / "csud")


async def record(root: Path, minutes: int, params: ClipParams) -> tuple[int, int]:
    """Record ``minutes`` of the looped clip; return (segments, bytes)."""
    clip = load_clip(params)
    frame_ns = NS_PER_SECOND // params.fps
    seg = Segmenter(60 * NS_PER_SECOND, 0, default_frame_ns=frame_ns)
    index = Index.create(root / "index.sqlite3")
    writer: SegmentWriter | None = None
    segments = total = 0
    try:
        for i in range(minutes * 60 * params.fps):
            frame = clip.frames[i % len(clip.frames)]
            au = AccessUnit(i * (90000 // params.fps), list(frame.nals), frame.keyframe, frame.size)
            for a in [
                *seg.push(au, T0_NS + i * frame_ns),
                *([] if i + 1 < minutes * 60 * params.fps else seg.stop()),
            ]:
                if isinstance(a, Open):
                    relpath = segment_relpath("metz", "bench-cam", a.start_ns)
                    writer = await SegmentWriter.open(root, relpath, a.start_ns, params.width, params.height)
                elif isinstance(a, Mux):
                    assert writer is not None
                    await writer.write(a.frames)
                elif isinstance(a, Close):
                    assert writer is not None
                    info = await writer.close(a.end_ns, a.drop_tail)
                    writer = None
                    if info is not None:
                        index.add_segment("bench-cam", "metz", info, created_ns=time.time_ns())
                        segments += 1
                        total += info.bytes
    finally:
        index.close()
    return segments, total


def timed(fn: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - start)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=int, default=60)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/tmp", help="scratch space (needs ~4x the recording)")
    ap.add_argument("--bitrate", type=int, default=4_000_000)
    args = ap.parse_args()

    params = ClipParams(width=1280, height=720, fps=25, bitrate=args.bitrate, gop_seconds=1.0)
    scratch = Path(tempfile.mkdtemp(prefix="csud-bench-extract-", dir=args.dir))
    try:
        root = scratch / "store"
        from csud.store.identity import create_store

        create_store(root)  # what csud init does
        t0 = time.perf_counter()
        segments, total = asyncio.run(record(root, args.minutes, params))
        mbps = total * 8 / (args.minutes * 60) / 1e6
        print(
            f"recorded {args.minutes} min: {segments} segments, {total / 1e9:.2f} GB "
            f"({mbps:.2f} Mbit/s) in {time.perf_counter() - t0:.1f} s"
        )
        keys = scratch / "keys"
        subprocess.run([CSUD, "keygen", "--out", str(keys)], check=True, capture_output=True)
        config = scratch / "csud.toml"
        config.write_text(
            f'[storage]\nroot = "{root}"\n[metrics]\nlisten = ""\n'
            f'[evidence]\nsigning_key = "{keys}/signing_key.pem"\n'
            '[[communes]]\nid = "metz"\nname = "Metz"\nservice = "live"\nretention_days = 15\n'
            '[[cameras]]\nid = "bench-cam"\ncommune = "metz"\nurl = "rtsp://127.0.0.1/x"\n',
            encoding="utf-8",
        )
        files = sorted(str(p) for p in root.rglob("*.mp4"))
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0_NS // NS_PER_SECOND))
        end = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0_NS // NS_PER_SECOND + args.minutes * 60 + 60)
        )
        out = scratch / "out"
        copy_dir = scratch / "copy"

        def extract() -> None:
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(
                [CSUD, "extract", "--config", str(config), "--camera", "bench-cam",
                 "--from", start, "--to", end, "--requisition", "BENCH", "--officer", "bench",
                 "--out", str(out)],
                check=True, capture_output=True,
            )  # fmt: skip

        def cp_sha() -> None:
            shutil.rmtree(copy_dir, ignore_errors=True)
            copy_dir.mkdir()
            subprocess.run(["cp", *files, str(copy_dir)], check=True)
            subprocess.run(
                ["sha256sum", *sorted(str(p) for p in copy_dir.iterdir())], check=True, capture_output=True
            )

        extract()  # warm-up (page cache, imports)
        cp_sha()
        t_extract = timed(extract, args.runs)
        t_copy = timed(cp_sha, args.runs)
        out_bytes = sum(p.stat().st_size for p in (out / "BENCH").glob("*.mp4"))
        m_extract, m_copy = statistics.median(t_extract), statistics.median(t_copy)
        print(f"csud extract     : median {m_extract:6.2f} s  ({total / m_extract / 1e6:7.1f} MB/s)  runs "
              + " ".join(f"{x:.2f}" for x in t_extract))  # fmt: skip
        print(f"cp + sha256sum   : median {m_copy:6.2f} s  ({total / m_copy / 1e6:7.1f} MB/s)  runs "
              + " ".join(f"{x:.2f}" for x in t_copy))  # fmt: skip
        ratio = m_copy / m_extract
        print(f"output {out_bytes / 1e9:.3f} GB; extraction runs at {ratio:.2f}x the speed of cp + sha256sum "
              f"(target >= 0.5): {'OK' if ratio >= 0.5 else 'MISSED'}")  # fmt: skip
        return 0 if ratio >= 0.5 else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
