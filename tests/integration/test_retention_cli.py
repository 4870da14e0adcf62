"""``csud retention`` and ``csud registre`` end to end, through the installed console script."""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path

from tests.integration.helpers import CSUD
from tests.store_fixtures import (
    DAY,
    T0,
    S,
    add_segment,
    files_under,
    indexed_paths,
    iso,
    open_index,
    write_config,
)


def csud(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CSUD, *args], capture_output=True, text=True, timeout=60, check=False)


def test_retention_dry_run_then_pass_then_registre(tmp_path: Path) -> None:
    root = tmp_path / "store"
    index = open_index(root)
    for i in range(3):
        add_segment(index, root, "metz-gare-01", "metz", T0 + i * 60 * S)
        add_segment(index, root, "metz-gare-02", "metz", T0 + i * 60 * S)  # 7-day override
    add_segment(index, root, "metz-gare-01", "metz", T0 + 2 * DAY)
    index.close()
    config = str(write_config(tmp_path, root))
    hold = csud(
        "hold", "add", "--camera", "metz-gare-01", "--from", iso(T0), "--to", iso(T0 + 60 * S),
        "--requisition", "PV 2026/5", "--officer", "OPJ", "--reason", "vol", "--config", config,
    )  # fmt: skip
    assert hold.returncode == 0, hold.stderr

    due_at = T0 + 3 * 60 * S + 15 * DAY
    dry = csud("retention", "--dry-run", "--now", iso(due_at), "--config", config)
    assert dry.returncode == 0, dry.stderr
    assert "camera metz-gare-01 (15 days): would destroy 2 segment(s)" in dry.stdout
    assert "1 past the window kept under hold" in dry.stdout
    assert "camera metz-gare-02 (7 days): would destroy 3 segment(s)" in dry.stdout
    before = files_under(root)
    assert len(before) == 7

    early = csud("retention", "--now", iso(due_at - S), "--config", config)
    assert "camera metz-gare-01 (15 days): destroyed 1 segment(s)" in early.stdout  # the 2nd: end 1 s later
    run = csud("retention", "--now", iso(due_at), "--config", config)
    assert run.returncode == 0, run.stderr
    assert "camera metz-gare-01 (15 days): destroyed 1 segment(s)" in run.stdout
    assert "total: destroyed 1 segment(s) by retention" in run.stdout
    index = open_index(root)
    try:
        assert indexed_paths(index) == files_under(root)
        assert len(files_under(root)) == 2  # the held one and the recent one
    finally:
        index.close()

    naive = csud("retention", "--now", "2026-09-20T00:00:00", "--config", config)
    assert naive.returncode == 2 and "no UTC offset" in naive.stderr

    reg = csud("registre", "--commune", "metz", "--month", "2026-09", "--csv", "--config", config)
    assert reg.returncode == 0, reg.stderr
    rows = list(csv.DictReader(io.StringIO(reg.stdout)))
    by = {(r["camera"], r["day"]): r for r in rows}
    first = by[("metz-gare-01", "2026-09-01")]
    assert first["hours_recorded"] == "0.05"  # 3 minutes: 1 kept under hold + 2 destroyed
    assert first["first_segment"] == "2026-09-01T00:00:00.000Z"
    assert first["last_segment"] == "2026-09-01T00:03:00.000Z"
    assert first["destroyed_on"] == "2026-09-16" and first["held"] == "PV 2026/5"
    assert by[("metz-gare-01", "2026-09-03")]["destroyed_on"] == ""
    assert by[("metz-gare-02", "2026-09-01")]["destroyed_on"] == "2026-09-16"
    text = csud("registre", "--commune", "metz", "--month", "2026-09", "--config", config)
    assert "Registre des enregistrements" in text.stdout and "arrêté 2023-042" in text.stdout
    bad = csud("registre", "--commune", "metz", "--month", "2026-13", "--config", config)
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr
    unknown = csud("registre", "--commune", "nancy", "--month", "2026-09", "--config", config)
    assert unknown.returncode == 2 and "unknown commune" in unknown.stderr
    verify = csud("journal", "--verify", "--config", config)
    assert verify.returncode == 0 and "journal OK" in verify.stdout
