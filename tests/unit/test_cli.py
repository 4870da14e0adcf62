"""The supervisor's command line (issue 12, points 8, 10, 11, 13, 14, 15, 16): site time zone,
mistyped cameras, closed pipes, status, help, counters at 0, coverage listings and --json."""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from csud.cli import common
from csud.cli.common import ProgressLine, format_time
from csud.cli.main import build_parser, main
from csud.cli.segments import coverage
from tests.helpers import write_config
from tests.store_fixtures import DAY, STORE_SITE, T0, S, add_segment, iso, open_index

REPO = Path(__file__).resolve().parents[2]
PARIS = '[site]\ntimezone = "Europe/Paris"\n'


def _config(tmp_path: Path, site: str = PARIS) -> str:
    root = tmp_path / "store"
    path = write_config(tmp_path, STORE_SITE, root=root)
    path.write_text(site + path.read_text(encoding="utf-8"), encoding="utf-8")
    return str(path)


@pytest.fixture
def store(tmp_path: Path) -> str:
    """Metz camera 01: three 60-s segments with a 60-s gap, at 2026-09-01T00:00Z (02:00 in Paris);
    a camera removed from the config whose footage stays; Woippy: nothing."""
    root = tmp_path / "store"
    index = open_index(root)
    for start in (T0, T0 + 60 * S, T0 + 180 * S):
        add_segment(index, root, "metz-gare-01", "metz", start)
    add_segment(index, root, "retired-cam", "metz", T0)
    index.close()
    return _config(tmp_path)


# -- point 8: the site's time zone -----------------------------------------------------------------


def test_format_time_carries_the_zone_offset() -> None:
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    assert format_time(T0, paris) == "2026-09-01T02:00:00.000+02:00"  # summer time
    assert format_time(T0 + 90 * DAY, paris) == "2026-11-30T01:00:00.000+01:00"
    assert format_time(T0) == "2026-09-01T00:00:00.000Z"


def test_segments_hold_and_journal_print_the_site_offset(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["segments", "--camera", "metz-gare-01", "--config", store]) == 0
    out = capsys.readouterr().out
    assert "2026-09-01T02:00:00.000+02:00  2026-09-01T02:01:00.000+02:00" in out
    assert main(["segments", "--camera", "metz-gare-01", "--json", "--config", store]) == 0
    assert json.loads(capsys.readouterr().out)[0]["start"] == "2026-09-01T02:00:00.000+02:00"
    add = ["hold", "add", "--camera", "metz-gare-01", "--from", iso(T0), "--to", iso(T0 + 60 * S)]
    add += ["--requisition", "PV 1", "--officer", "OPJ Durand", "--reason", "rixe", "--config", store]
    assert main(add) == 0
    assert "[2026-09-01T02:00:00.000+02:00, 2026-09-01T02:01:00.000+02:00)" in capsys.readouterr().out
    assert main(["journal", "--json", "--config", store]) == 0
    assert all(e["time"][-6:] in ("+01:00", "+02:00") for e in json.loads(capsys.readouterr().out))


def test_registre_days_are_local_days(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    index = open_index(root)
    late = T0 - 30 * 60 * S  # 2026-08-31T23:30Z: 1 September, 01:30 in Paris
    add_segment(index, root, "metz-gare-01", "metz", late)
    index.close()
    config = _config(tmp_path)
    assert main(["registre", "--commune", "metz", "--month", "2026-09", "--json", "--config", config]) == 0
    rows = json.loads(capsys.readouterr().out)["recordings"]
    assert [(r["camera"], r["day"]) for r in rows] == [("metz-gare-01", "2026-09-01")]
    assert rows[0]["first_segment"] == "2026-09-01T01:30:00.000+02:00"
    assert main(["registre", "--commune", "metz", "--month", "2026-08", "--json", "--config", config]) == 0
    assert json.loads(capsys.readouterr().out) == {"recordings": [], "live_views": []}
    assert main(["registre", "--commune", "metz", "--month", "2026-09", "--config", config]) == 0
    assert "(days in Europe/Paris)" in capsys.readouterr().out


def test_registre_splits_a_destroyed_utc_day_over_local_days() -> None:
    from zoneinfo import ZoneInfo

    from csud.cli.retention import _local_parts

    paris = ZoneInfo("Europe/Paris")
    start = T0 - 2 * 3600 * S  # 2026-08-31T22:00Z = 1 Sept 00:00 Paris: one UTC day, two local days
    parts = _local_parts(start - 22 * 3600 * S, start + 2 * 3600 * S, 24 * 3600 * S, paris)
    assert [(day, ns // (3600 * S)) for day, ns, _, _ in parts] == [("2026-08-31", 22), ("2026-09-01", 2)]


def test_extract_passes_the_site_zone_to_the_manifest(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import csud.evidence.extract as extract_module

    seen: dict[str, Any] = {}

    def fake_extract(request: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return SimpleNamespace(folder=tmp_path / "out" / "PV", signed=False, manifest={"clips": []})

    monkeypatch.setattr(extract_module, "extract", fake_extract)
    argv = ["extract", "--camera", "metz-gare-01", "--from", iso(T0), "--to", iso(T0 + 60 * S)]
    argv += ["--requisition", "PV", "--officer", "OPJ", "--out", str(tmp_path / "out"), "--config", store]
    assert main([*argv, "--json"]) == 0
    assert seen["zone"][1] == "Europe/Paris"
    assert json.loads(capsys.readouterr().out)["signed"] is False


# -- point 10: a mistyped camera is a usage error --------------------------------------------------


def test_mistyped_camera_exits_2(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segments", "--camera", "nope", "--config", store]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown camera 'nope'" in err
    assert main(["verify", "--archive", "--camera", "nope", "--config", store]) == 2
    assert "unknown camera 'nope'" in capsys.readouterr().err
    assert main(["segments", "--commune", "nowhere", "--config", store]) == 2
    assert "unknown commune 'nowhere'" in capsys.readouterr().err
    # No longer configured, still indexed: listable.
    assert main(["segments", "--camera", "retired-cam", "--config", store]) == 0
    assert main(["verify", "--archive", "--camera", "retired-cam", "--config", store]) == 0


# -- point 11: a closed pipe is not a traceback ----------------------------------------------------


@pytest.mark.parametrize("argv", [["segments", "--camera", "metz-gare-01"], ["journal", "--json"]])
def test_closed_pipe_prints_no_traceback(tmp_path: Path, argv: list[str]) -> None:
    root = tmp_path / "store"
    index = open_index(root)
    for i in range(1500):  # well past a pipe's 64 KiB buffer
        add_segment(index, root, "metz-gare-01", "metz", T0 + i * 60 * S, size=10)
    index.close()
    config = _config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "csud.cli.main", *argv, "--config", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert first and "Traceback" not in err and "BrokenPipeError" not in err, err


# -- point 13: csud status ------------------------------------------------------------------------


STATUS = {
    "version": "0.1.0",
    "pid": 7,
    "reloads": 2,
    "reload_failures": 1,
    "last_reload": {"ok": False, "at_ns": T0, "error": "storage.root changed: needs a restart"},
    "cameras": [
        {"camera": "metz-gare-01", "commune": "metz", "up": True, "last_frame_age_seconds": 0.1},
        {
            "camera": "metz-gare-02",
            "commune": "metz",
            "up": False,
            "last_frame_age_seconds": 40.0,
            "last_error": "401 Unauthorized: credentials refused",
        },
    ],
}


def test_status_shows_why_down_and_exits_1(
    store: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import csud.cli.service as service

    monkeypatch.setattr(service, "fetch_status", lambda url: STATUS)
    assert main(["status", "--config", store]) == 1
    out, err = capsys.readouterr()
    down = next(line for line in out.splitlines() if line.startswith("metz-gare-02"))
    assert "DOWN" in down and down.endswith("401 Unauthorized: credentials refused")
    assert "config reloads: 2 applied, 1 refused; last at 2026-09-01T02:00:00.000+02:00 REFUSED:" in out
    assert err.strip() == "csud status: 1 camera(s) down: metz-gare-02"
    up = {**STATUS, "cameras": STATUS["cameras"][:1]}  # type: ignore[index]
    monkeypatch.setattr(service, "fetch_status", lambda url: up)
    assert main(["status", "--config", store]) == 0


def test_status_keeps_the_last_segment_across_recorder_sessions(tmp_path: Path) -> None:
    from csud.recording.recorder import CameraStats
    from csud.service.daemon import Daemon, RateMeter, last_segments
    from tests.unit.test_service import _loaded

    root = tmp_path / "store"
    index = open_index(root)
    _, path = add_segment(index, root, "metz-gare-01", "metz", T0)
    assert last_segments(index, ["metz-gare-01", "never"], T0 + 2 * DAY) == {
        "metz-gare-01": (path, T0 + 60 * S)
    }
    index.close()
    daemon = Daemon(_loaded(tmp_path))
    daemon.last_segments = {"metz-gare-01": (path, T0 + 60 * S)}
    fresh = SimpleNamespace(commune=SimpleNamespace(id="metz"), stats=CameraStats())  # a new session
    daemon.cameras["metz-gare-01"] = SimpleNamespace(recorder=fresh, rates=RateMeter())  # type: ignore[assignment]
    row = daemon.status()["cameras"][0]
    assert (row["last_segment"], row["last_segment_end_ns"]) == (path, T0 + 60 * S)


# -- point 14: help ----------------------------------------------------------------------------------


def _walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if not choice.help:
                    missing.append(f"{path} {choice.dest}")
            for name, sub in action.choices.items():
                missing += _walk(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)) and not action.help:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_has_help() -> None:
    assert _walk(build_parser(), "csud") == []


def test_every_simulate_option_has_help() -> None:
    """``csud simulate`` has its own parser (csud/sim/cli.py): the walk above does not reach it."""
    from csud.sim.cli import build_parser as simulate_parser

    assert _walk(simulate_parser(), "csud simulate") == []


def test_plain_csud_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out, err = capsys.readouterr()
    for command in ("run", "segments", "extract", "verify", "hold", "journal", "registre", "status"):
        assert f"    {command} " in out
    assert err.count("\n") == 1


def test_hold_list_shows_the_reason(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    add = ["hold", "add", "--camera", "metz-gare-01", "--from", iso(T0), "--to", iso(T0 + 60 * S)]
    add += ["--requisition", "PV 1", "--officer", "OPJ Durand", "--reason", "rixe gare", "--config", store]
    assert main(add) == 0
    capsys.readouterr()
    assert main(["hold", "list", "--config", store]) == 0
    assert "reason 'rixe gare'" in capsys.readouterr().out


def test_command_modules_never_import_the_entry_point() -> None:
    for path in (REPO / "csud" / "cli").glob("*.py"):
        if path.name == "main.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # function-level imports count too
            if isinstance(node, ast.ImportFrom):
                assert node.module != "csud.cli.main", path.name
            if isinstance(node, ast.Import):
                assert all(a.name != "csud.cli.main" for a in node.names), path.name


# -- point 15: counters exist at 0 before their first event ------------------------------------------


def test_counters_of_a_configured_camera_start_at_zero() -> None:
    from csud.recording.recorder import CameraStats
    from csud.service import metrics

    rec = SimpleNamespace(
        camera=SimpleNamespace(id="cam-zero"), commune=SimpleNamespace(id="commune-zero"), stats=CameraStats()
    )
    metrics.export([rec])  # type: ignore[list-item]
    labels = {"camera": "cam-zero", "commune": "commune-zero"}
    value = metrics.REGISTRY.get_sample_value
    assert value("csud_storage_write_errors_total", labels) == 0
    assert value("csud_extractions_total", labels) == 0
    assert value("csud_segment_write_seconds_count", labels) == 0
    assert value("csud_camera_dropped_frames_total", {**labels, "reason": "gap"}) == 0
    assert value("csud_camera_dropped_frames_total", {**labels, "reason": "storage_error"}) == 0
    for reason in ("retention", "disk_pressure"):
        assert (
            value("csud_retention_deleted_segments_total", {"commune": "commune-zero", "reason": reason}) == 0
        )
    metrics.forget("cam-zero", "commune-zero")
    assert value("csud_camera_dropped_frames_total", {**labels, "reason": "gap"}) is None


# -- point 16: coverage listings, --json, progress -----------------------------------------------------


def test_coverage_summary() -> None:
    rows = [
        SimpleNamespace(start_ns=T0 + a * S, end_ns=T0 + b * S) for a, b in ((0, 60), (60, 120), (180, 240))
    ]
    cov = coverage(rows, None, None)  # type: ignore[arg-type]
    assert (cov.segments, cov.recorded_ns, cov.gaps, round(cov.percent)) == (
        3,
        180 * S,
        ((T0 + 120 * S, T0 + 180 * S),),
        75,
    )
    cov = coverage(rows, T0 - 60 * S, T0 + 300 * S)  # type: ignore[arg-type]
    assert len(cov.gaps) == 3 and cov.largest_gap_ns == 60 * S and round(cov.percent) == 50
    assert coverage([], T0, T0 + S).gaps == ((T0, T0 + S),)


def test_segments_by_commune_and_all(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["segments", "--commune", "metz", "--json", "--config", store]) == 0
    rows = {r["camera"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"metz-gare-01", "metz-gare-02", "retired-cam"}
    cam = rows["metz-gare-01"]
    assert (cam["segments"], cam["gaps"], cam["largest_gap_seconds"], cam["coverage_percent"]) == (
        3,
        1,
        60.0,
        75.0,
    )
    assert cam["from"] == "2026-09-01T02:00:00.000+02:00"
    assert rows["metz-gare-02"]["segments"] == 0
    assert main(["segments", "--all", "--config", store]) == 0
    out = capsys.readouterr().out
    assert "woippy-mairie-01" in out and "75.0%" in out
    with pytest.raises(SystemExit) as info:
        main(["segments", "--camera", "x", "--all", "--config", store])
    assert info.value.code == 2


def test_json_on_retention_registre_check_config_verify(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["retention", "--dry-run", "--json", "--config", store]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True and report["at"].endswith(("+01:00", "+02:00"))
    cams = {c["camera"]: c for c in report["cameras"]}
    assert cams["metz-gare-01"]["window_days"] == 15
    assert report["total"] == {"retention": 4, "disk_pressure": 0}  # September is past every window
    assert sum(d["segments"] for d in report["destroyed"]) == 4
    assert main(["registre", "--commune", "metz", "--month", "2026-09", "--json", "--config", store]) == 0
    assert json.loads(capsys.readouterr().out)["recordings"][0]["hours_recorded"] == 0.05
    assert main(["check-config", "--json", "--config", store]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["timezone"] == "Europe/Paris" and len(summary["cameras"]) == 3
    assert main(["verify", "--archive", "--json", "--config", store]) == 0
    assert json.loads(capsys.readouterr().out)["checked"] == 4
    (tmp_path / "empty").mkdir()
    assert main(["verify", str(tmp_path / "empty"), "--json"]) != 0  # exit codes unchanged by --json


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_an_estimate_on_a_terminal_only() -> None:
    now = [100.0]
    tty = _Tty()
    line = ProgressLine("extract", tty, clock=lambda: now[0])
    line(0, 100 << 20)
    now[0] += 10
    line(25 << 20, 100 << 20)
    line.finish()
    assert "25% (25/100 MiB), about 30 s left" in tty.getvalue()
    pipe = io.StringIO()
    quiet = ProgressLine("extract", pipe, clock=lambda: now[0])
    quiet(25, 100)
    quiet.finish()
    assert pipe.getvalue() == ""
    assert common.ProgressLine is ProgressLine


def test_registre_marks_a_released_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    index = open_index(root)
    add_segment(index, root, "metz-gare-01", "metz", T0)
    common = {"requisition": "", "officer": "OPJ", "reason": "r", "until_ns": None, "now_ns": T0}
    kept = index.add_hold(["metz-gare-01"], T0, T0 + 60 * S, **{**common, "requisition": "PV 1"})
    gone = index.add_hold(["metz-gare-01"], T0, T0 + 60 * S, **{**common, "requisition": "PV 2"})
    index.release_hold(gone.id, reason="closed", now_ns=T0 + S)
    index.close()
    config = _config(tmp_path)
    assert main(["registre", "--commune", "metz", "--month", "2026-09", "--json", "--config", config]) == 0
    (row,) = json.loads(capsys.readouterr().out)["recordings"]
    assert kept.requisition == "PV 1" and row["held"] == "PV 1,PV 2 (released)"
