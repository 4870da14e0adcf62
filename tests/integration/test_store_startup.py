"""The daemon and its store (docs/storage.md, "Store identity" and "Startup", steps 4-7).

- Recorded footage, then the root replaced by an empty directory (an unmounted disk): ``csud
  run`` refuses with exit 2 and one line, and writes nothing there; a missing root is not created.
- A store of 100,000 segment rows (synthetic files) reaches READY=1 in under 5 s: only the
  latest days are recovered before cameras record; the rest is checked in the background and
  reported done (``/status`` ``store_check``, a ``recovered`` journal entry).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from csud.service.daemon import INDEX_FILENAME
from csud.store.index import Index
from csud.store.layout import segment_relpath
from tests.helpers import sim_site, write_config
from tests.integration.helpers import (
    CSUD,
    daemon,
    free_port,
    segments,
    simulator,
    stop_process,
    wait_port,
)

S = 1_000_000_000
ROWS = 100_000
CAMERAS = 10
READY_BUDGET_SECONDS = 5.0


def test_run_refuses_an_empty_or_missing_root_and_writes_nothing(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, sim_site(port, 1), segment_seconds=2)
    root = tmp_path / "store"
    with simulator(tmp_path, port, 1), daemon(config, tmp_path) as proc:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not segments(config, "cam1"):
            time.sleep(0.5)
        assert stop_process(proc) == 0
    assert segments(config, "cam1")
    root.rename(tmp_path / "store-real")  # the disk is "unmounted": an empty mount point remains
    root.mkdir()
    run = [CSUD, "run", "--config", str(config)]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"storage root {root} is empty: not a csud store (not mounted?" in lines[0]
    assert list(root.iterdir()) == []  # no index, no lock file, nothing
    root.rmdir()
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "does not exist (not mounted?)" in out.stderr, out
    assert not root.exists()
    (tmp_path / "store-real").rename(root)  # mounted again: the same store, recorded footage intact
    assert segments(config, "cam1")


def _big_store(root: Path, now_ns: int) -> int:
    """ROWS one-minute segments over CAMERAS cameras ending now, each with a 1-byte file, and one
    .partial left by a 'crash' in the latest day of cam1. Returns the number of date dirs."""
    index = Index.open(root / INDEX_FILENAME)
    conn = index._conn  # bulk load, as scripts/bench_retention.py does
    conn.execute("PRAGMA synchronous=OFF")
    per_camera = ROWS // CAMERAS
    sha = hashlib.sha256(b"x").hexdigest()
    days: set[str] = set()
    rows = []
    for c in range(1, CAMERAS + 1):
        cam = f"cam{c}"
        for i in range(per_camera):
            start = now_ns - (per_camera - i + 5) * 60 * S
            rel = segment_relpath("metz", cam, start)
            rows.append((cam, "metz", start, start + 60 * S, rel, 1, 1, sha, start + 61 * S))
            path = root / rel
            if path.parent.as_posix() not in days:
                path.parent.mkdir(parents=True, exist_ok=True)
                days.add(path.parent.as_posix())
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o640)
            os.write(fd, b"x")
            os.close(fd)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO segments (camera, commune, start_ns, end_ns, path, bytes, frames, sha256, created_ns)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    index.close()
    return len(days)


def test_a_store_of_100000_segments_records_within_5_seconds(tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(1.0)
    mport = free_port()
    # The camera never answers: READY=1 comes once every recorder is started, not connected.
    config = write_config(
        tmp_path, sim_site(free_port(), 1), metrics_listen=f"127.0.0.1:{mport}", segment_seconds=5
    )
    root = tmp_path / "store"
    day_dirs = _big_store(root, time.time_ns())
    try:
        t0 = time.monotonic()
        with daemon(config, tmp_path, extra_env={"NOTIFY_SOCKET": str(notify)}) as proc:
            ready_after = None
            while time.monotonic() - t0 < 60 and proc.poll() is None:
                try:
                    message = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                if "READY=1" in message.splitlines():
                    ready_after = time.monotonic() - t0
                    break
            assert ready_after is not None, "no READY=1"
            print(f"READY=1 after {ready_after:.2f} s with {ROWS} rows, {day_dirs} date directories")
            assert ready_after < READY_BUDGET_SECONDS
            wait_port(mport, 10)
            status: dict = {}
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with urllib.request.urlopen(f"http://127.0.0.1:{mport}/status", timeout=10) as r:
                    status = json.loads(r.read())["store_check"]
                if status["state"] == "done":
                    break
                time.sleep(0.5)
            assert status["state"] == "done", status
            # Every date directory not checked before READY (2 latest per camera) was checked after.
            assert status["days_checked"] == status["days_total"] == day_dirs - 2 * CAMERAS, status
            assert status["missing"] == 0 and status["indexed_orphans"] == 0 and status["errors"] == 0
            assert stop_process(proc) == 0
    finally:
        sock.close()
    out = subprocess.run(
        [CSUD, "journal", "--json", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    entries = json.loads(out.stdout)
    assert any(e["kind"] == "recovered" and e["details"].get("action") == "background_check" for e in entries)
