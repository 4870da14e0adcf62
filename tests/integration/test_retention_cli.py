"""``csud retention`` and ``csud registre`` end to end, through the installed console script."""

from __future__ import annotations

import csv
import io
import subprocess
import time
from pathlib import Path

from tests.helpers import write_config
from tests.integration.helpers import CSUD
from tests.store_fixtures import (
    DAY,
    STORE_SITE,
    T0,
    S,
    add_segment,
    files_under,
    indexed_paths,
    iso,
    open_index,
)


def csud(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CSUD, *args], capture_output=True, text=True, timeout=60, check=False)


def test_retention_dry_run_then_pass_then_registre(tmp_path: Path) -> None:
    # Footage of ~16-17 days ago (whole minutes of one UTC day), and one segment of yesterday:
    # a real pass runs at the real time (issue 12, point 1), so the store is dated from it.
    t0 = (time.time_ns() - 17 * DAY) // DAY * DAY + 3600 * S
    root = tmp_path / "store"
    index = open_index(root)
    for i in range(3):
        add_segment(index, root, "metz-gare-01", "metz", t0 + i * 60 * S)
        add_segment(index, root, "metz-gare-02", "metz", t0 + i * 60 * S)  # 7-day override
    add_segment(index, root, "metz-gare-01", "metz", time.time_ns() - DAY)
    index.close()
    config = str(write_config(tmp_path, STORE_SITE, root=root))
    hold = csud(
        "hold", "add", "--camera", "metz-gare-01", "--from", iso(t0), "--to", iso(t0 + 60 * S),
        "--requisition", "PV 2026/5", "--officer", "OPJ", "--reason", "vol", "--config", config,
    )  # fmt: skip
    assert hold.returncode == 0, hold.stderr

    due_at = t0 + 3 * 60 * S + 15 * DAY
    dry = csud("retention", "--dry-run", "--now", iso(due_at), "--config", config)
    assert dry.returncode == 0, dry.stderr
    assert "camera metz-gare-01 (15 days): would destroy 2 segment(s)" in dry.stdout
    assert "1 past the window kept under hold" in dry.stdout
    assert "camera metz-gare-02 (7 days): would destroy 3 segment(s)" in dry.stdout
    early = csud("retention", "--dry-run", "--now", iso(due_at - S), "--config", config)
    assert "camera metz-gare-01 (15 days): would destroy 1 segment(s)" in early.stdout  # the 2nd: 1 s later
    before = files_under(root)
    assert len(before) == 7

    run = csud("retention", "--config", config)
    assert run.returncode == 0, run.stderr
    assert "camera metz-gare-01 (15 days): destroyed 2 segment(s)" in run.stdout
    assert "camera metz-gare-02 (7 days): destroyed 3 segment(s)" in run.stdout
    assert "total: destroyed 5 segment(s) by retention" in run.stdout
    index = open_index(root)
    try:
        assert indexed_paths(index) == files_under(root)
        assert len(files_under(root)) == 2  # the held one and the recent one
    finally:
        index.close()

    naive = csud("retention", "--dry-run", "--now", "2026-09-20T00:00:00", "--config", config)
    assert naive.returncode == 2 and "no UTC offset" in naive.stderr

    month = iso(t0)[:7]
    reg = csud("registre", "--commune", "metz", "--month", month, "--csv", "--config", config)
    assert reg.returncode == 0, reg.stderr
    rows = list(csv.DictReader(io.StringIO(reg.stdout)))
    by = {(r["camera"], r["day"]): r for r in rows}
    today = iso(time.time_ns())[:10]
    first = by[("metz-gare-01", iso(t0)[:10])]
    assert first["hours_recorded"] == "0.05"  # 3 minutes: 1 kept under hold + 2 destroyed
    assert first["first_segment"] == iso(t0)
    assert first["last_segment"] == iso(t0 + 3 * 60 * S)
    assert first["destroyed_on"] == today and first["held"] == "PV 2026/5"  # destroyed today, not "due_at"
    assert by[("metz-gare-02", iso(t0)[:10])]["destroyed_on"] == today
    text = csud("registre", "--commune", "metz", "--month", month, "--config", config)
    assert "Registre des enregistrements" in text.stdout and "arrêté 2023-042" in text.stdout
    bad = csud("registre", "--commune", "metz", "--month", "2026-13", "--config", config)
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr
    unknown = csud("registre", "--commune", "nancy", "--month", month, "--config", config)
    assert unknown.returncode == 2 and "unknown commune" in unknown.stderr
    verify = csud("journal", "--verify", "--config", config)
    assert verify.returncode == 0 and "journal OK" in verify.stdout


def test_now_without_dry_run_is_refused_and_destroys_nothing(tmp_path: Path) -> None:
    """Issue 12, point 1: ``--now`` pretends; a pretended pass never destroys nor journals."""
    root = tmp_path / "store"
    index = open_index(root)
    for i in range(3):
        add_segment(index, root, "metz-gare-01", "metz", T0 + i * 60 * S)
    entries = len(index.journal_entries())
    index.close()
    config = str(write_config(tmp_path, STORE_SITE, root=root))
    future = csud("retention", "--now", iso(time.time_ns() + 40 * DAY), "--config", config)
    assert future.returncode == 2
    assert future.stderr.count("\n") == 1 and "--now goes with --dry-run only" in future.stderr
    assert len(files_under(root)) == 3
    index = open_index(root)
    try:
        assert len(index.journal_entries()) == entries and len(indexed_paths(index)) == 3
    finally:
        index.close()
