"""SIGKILL a recording daemon three times; each restart recovers what was on disk.

docs/storage.md, "Startup", steps 4-6 (and "What a crash leaves behind"): after each kill the
files are scanned exactly as the kill left them; after the restart, every fragment the scanner
found whole is indexed (step 4 for ``.partial`` files, step 5 for renamed files without a row),
a file with no whole fragment is in ``quarantine/``, every indexed file decodes completely, and
``csud check`` exits 0.

The loss bound, per camera, comparing the simulator's ``frames_sent_from_first_keyframe`` (summed
over its sessions: frames before a session's first keyframe cannot be recorded by anyone and are
not counted) with the frames indexed at the end:

- each kill loses the GOP in flight: its keyframe is muxed but its fragment is only emitted when
  the next keyframe arrives, and its other frames wait in the segmenter (at most 1 GOP);
- plus, if the kill lands between a keyframe's arrival and the end of the write of the previous
  GOP's fragment (the mux and write take milliseconds), that fragment is torn and dropped by
  recovery: at most 1 more GOP;
- plus the frames in transit in the socket at the kill (a few at 25 fps over loopback), which are
  the start of the GOP in flight or of the next one;
- the final SIGTERM loses nothing (the recorder flushes its GOP in flight before it closes).

So ``sent - recorded <= kills * (2 GOP + 5 frames)``, and never ``recorded > sent``.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import av
import pytest

from csud.store.index import Index
from csud.store.layout import PARTIAL_SUFFIX
from csud.store.recovery import QUARANTINE_DIR, scan_file
from tests.helpers import sim_site, write_config
from tests.integration.helpers import (
    CSUD,
    FPS,
    daemon,
    free_port,
    log_lines,
    simulator,
    stop_process,
)

pytestmark = pytest.mark.integration
CAMERAS = 3
KILLS = 3
GOP = FPS  # --gop-seconds 1
LOSS_PER_KILL = 2 * GOP + 5


def disk_fragments(root: Path) -> dict[str, tuple[bool, list[tuple[int, int, int]]]]:
    """Every segment file on disk (final relpath) -> (was partial, whole fragments it holds)."""
    out = {}
    for path in sorted(root.glob("metz/*/*/*/*/*.mp4*")):
        partial = path.name.endswith(PARTIAL_SUFFIX)
        rel = path.relative_to(root).as_posix().removesuffix(PARTIAL_SUFFIX)
        result = scan_file(path)
        out[rel] = (partial, [(f.offset, f.size, f.samples) for f in result.fragments])
    return out


def wait_recovered(tmp: Path, starts: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the ``starts``-th ``store_recovered`` log line (recovery of that start is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the daemon exited"
        if sum(e.get("event") == "store_recovered" for e in log_lines(tmp)) >= starts:
            return
        time.sleep(0.1)
    raise AssertionError(f"no store_recovered after start {starts}")


def check_after_restart(
    tmp: Path, config: Path, snapshot: dict[str, tuple[bool, list[tuple[int, int, int]]]]
) -> None:
    root = tmp / "store"
    index = Index.open(root / "index.sqlite3", readonly=True)
    try:
        rows = {r.path: r for cam in range(1, CAMERAS + 1) for r in index.segments(f"cam{cam}")}
        for rel, (partial, fragments) in snapshot.items():
            if not fragments:  # step 4: no whole fragment -> quarantined, never deleted
                moved = root / QUARANTINE_DIR / (rel + (PARTIAL_SUFFIX if partial else ""))
                assert moved.exists(), f"{rel}: neither indexed nor quarantined"
                continue
            assert rel in rows, f"{rel} ({'partial' if partial else 'final'}) is not indexed after restart"
            indexed = [(f.offset, f.size, f.frames) for f in index.fragments(rows[rel].id)]
            assert indexed == fragments, f"{rel}: fragments on disk before restart != indexed"
        for row in rows.values():  # every indexed file decodes completely
            with av.open(str(root / row.path)) as container:
                assert sum(1 for _ in container.decode(video=0)) == row.frames, row.path
    finally:
        index.close()
    check = subprocess.run(
        [CSUD, "check", "--config", str(config), "--json"], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["daemon_running"]


def test_sigkill_three_times_loses_at_most_the_gop_in_flight(tmp_path: Path) -> None:
    rng = random.Random(7)
    port = free_port()
    config = write_config(tmp_path, sim_site(port, CAMERAS), segment_seconds=5)
    root = tmp_path / "store"
    recovered_files = 0
    snapshot: dict[str, tuple[bool, list[tuple[int, int, int]]]] = {}
    with simulator(tmp_path, port, CAMERAS) as (_, stats_file):
        for start in range(1, KILLS + 2):
            with daemon(config, tmp_path) as proc:
                wait_recovered(tmp_path, start, proc)
                if start > 1:
                    check_after_restart(tmp_path, config, snapshot)
                if start == KILLS + 1:
                    time.sleep(3)
                    assert stop_process(proc, signal.SIGTERM) == 0
                    break
                time.sleep(rng.uniform(4, 9))
                proc.kill()  # SIGKILL
                proc.wait(10)
            snapshot = disk_fragments(root)
            recovered_files += sum(1 for partial, frags in snapshot.values() if partial and frags)
    stats = json.loads(stats_file.read_text())
    assert recovered_files >= KILLS, "each kill should leave at least one partial segment to recover"
    index = Index.open(root / "index.sqlite3", readonly=True)
    try:
        journal = [e.details.get("action") for e in index.journal_entries(kind="recovered")]
        assert journal.count("partial_published") >= KILLS
        # Issue 12, point 9: each start after a kill says so, with what recovery did.
        unclean = index.journal_entries(kind="unclean_stop_detected")
        assert len(unclean) == KILLS
        assert sum(e.details["recovery"]["partials_published"] for e in unclean) >= KILLS
        for cam in range(1, CAMERAS + 1):
            sent = stats["cameras"][f"cam{cam}"]["frames_sent_from_first_keyframe"]
            recorded = sum(r.frames for r in index.segments(f"cam{cam}"))
            assert recorded <= sent, (cam, recorded, sent)
            assert sent - recorded <= KILLS * LOSS_PER_KILL, (cam, sent, recorded)
    finally:
        index.close()
