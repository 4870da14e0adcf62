"""``csud extract``, ``csud verify`` and ``csud keygen`` end to end, through the CLI in subprocesses.

The store is real: libx264 frames -> Segmenter -> SegmentWriter -> Index (tests/media.py).
Camera ``cam-1`` (commune metz) records 8 s of frames in 2-s segments with a 3-s hole after the
4th second (a discontinuity at a keyframe); ``cam-2`` (commune woippy) records the same 8 s with no
hole. Times below are seconds from T0 (2026-09-21T14:13:20Z).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest

from csud.cli.main import format_time
from csud.evidence import extract as ev
from csud.evidence.manifest import CameraRef
from csud.store.identity import create_store
from csud.store.index import Index
from tests.helpers import METZ, WOIPPY, write_config
from tests.helpers import Site as ConfigSite
from tests.integration.helpers import CSUD
from tests.media import FRAME_NS, NS_PER_SECOND, T0_NS, Recording, encode, record_store, timed_frames

pytestmark = pytest.mark.integration

GAP_AT_FRAME = 100  # a keyframe (GOP 25): cam-1's recording jumps 3 s forward here
GAP_NS = 3 * NS_PER_SECOND
FFPROBE = shutil.which("ffprobe")


@dataclass(frozen=True)
class Site:
    root: Path
    config: Path
    keys: Path
    recordings: dict[str, Recording]
    fingerprint: str  # as csud keygen printed it


def t(seconds: float) -> str:
    """T0 + seconds as ISO 8601 with an offset, as an operator types it (here in +02:00)."""
    ns = T0_NS + round(seconds * NS_PER_SECOND)
    from datetime import UTC, datetime, timedelta, timezone

    moment = datetime.fromtimestamp(ns / NS_PER_SECOND, UTC).astimezone(timezone(timedelta(hours=2)))
    return moment.isoformat(timespec="milliseconds")


def run(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CSUD, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120, check=False
    )


EXTRACT_SITE = ConfigSite(
    communes=[METZ, WOIPPY],
    cameras=[
        {"id": "cam-1", "commune": "metz", "name": "Gare, parvis nord", "url": "rtsp://127.0.0.1/1"},
        {"id": "cam-2", "commune": "woippy", "url": "rtsp://127.0.0.1/2"},
        {"id": "cam-3", "commune": "woippy", "url": "rtsp://127.0.0.1/3"},
    ],
    tables={"metrics": {"listen": ""}},
)


async def _record(root: Path) -> dict[str, Recording]:
    aus = encode(200)
    index = Index.create(root / "index.sqlite3")
    try:
        cam1 = await record_store(
            root, index, timed_frames(aus, jumps={GAP_AT_FRAME: GAP_NS}), camera="cam-1"
        )
        cam2 = await record_store(root, index, timed_frames(aus), camera="cam-2", commune="woippy")
    finally:
        index.close()
    return {"cam-1": cam1, "cam-2": cam2}


def make_site(base: Path) -> Site:
    root = base / "store"
    create_store(root)  # as csud init does
    recordings = asyncio.run(_record(root))
    keys = base / "keys"
    done = run("keygen", "--out", keys)
    assert done.returncode == 0, done.stderr
    (print_line,) = [line for line in done.stdout.splitlines() if line.startswith("fingerprint ")]
    config = write_config(base, EXTRACT_SITE, root=root, signing_key=keys / "signing_key.pem", init=False)
    return Site(root, config, keys, recordings, print_line.split()[1])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return make_site(tmp_path_factory.mktemp("site"))


def extract(site: Site, out: Path, *cameras: str, start: float, end: float, ref: str = "PV-2026-0042",
            extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:  # fmt: skip
    camera_args = [a for c in cameras for a in ("--camera", c)]
    return run(
        "extract", "--config", site.config, *camera_args, "--from", t(start), "--to", t(end),
        "--requisition", ref, "--officer", "Lt. Marie Dupont", "--service", "SR Metz", "--out", out, *extra,
    )  # fmt: skip


def decode_pts(path: Path) -> list[int]:
    """Decode every frame (raises on a damaged stream); frame times in ns from the file's start."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.time_base is not None
        return [round((f.pts or 0) * stream.time_base * NS_PER_SECOND) for f in c.decode(stream)]


def ffprobe_clean(path: Path) -> dict[str, str]:
    """ffprobe reads (and decodes) the whole file with nothing on stderr; return its stream fields."""
    assert FFPROBE is not None, "ffprobe (Debian ffmpeg) is required"
    done = subprocess.run(
        [FFPROBE, "-v", "error", "-count_frames", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames:format_tags=creation_time", "-of", "json", str(path)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    doc = json.loads(done.stdout)
    return {**doc["streams"][0], **doc["format"]["tags"]}


def check_clip(site: Site, folder: Path, camera: str, start: float, end: float) -> dict[str, Any]:
    """Every property the issue asks of one clip; returns its manifest entry."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    (clip,) = [c for c in manifest["clips"] if c["camera"]["id"] == camera]
    requested_from, requested_to = T0_NS + round(start * NS_PER_SECOND), T0_NS + round(end * NS_PER_SECOND)
    actual_from, actual_to = clip["actual"]["from_ns"], clip["actual"]["to_ns"]
    assert (clip["requested"]["from_ns"], clip["requested"]["to_ns"]) == (requested_from, requested_to)
    assert actual_from <= requested_from and actual_to >= requested_to  # covers the request
    assert (actual_from - T0_NS) % (25 * FRAME_NS) == 0  # a keyframe (GOP of 25 frames from T0)
    recorded = [p for p in site.recordings[camera].frame_pts_ns if actual_from <= p < requested_to]
    path = folder / clip["output"]["file"]
    pts = decode_pts(path)
    assert len(pts) == len(recorded) == clip["output"]["frames"]
    assert pts == [p - actual_from for p in recorded]  # real time kept, gaps included
    probe = ffprobe_clean(path)
    assert probe["codec_name"] == clip["output"]["codec"] == "h264"
    assert (
        (probe["width"], probe["height"]) == (clip["output"]["width"], clip["output"]["height"]) == (320, 240)
    )
    assert int(probe["nb_read_frames"]) == len(recorded)
    assert probe["creation_time"] == format_time(actual_from)[:19] + ".000000Z"
    with path.open("rb") as f:  # +faststart: moov before mdat
        head = f.read(64)
    assert head[4:8] == b"ftyp" and b"moov" in head
    return clip


def test_clip_across_a_segment_boundary(site: Site, tmp_path: Path) -> None:
    done = extract(site, tmp_path, "cam-1", start=1.5, end=3.3)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no progress bar on a pipe
    folder = tmp_path / "PV-2026-0042"
    clip = check_clip(site, folder, "cam-1", 1.5, 3.3)
    assert clip["gaps"] == []
    assert [s["path"].rsplit("/", 1)[1] for s in clip["sources"]] == [
        "20260921T141320.000Z.mp4",
        "20260921T141322.000Z.mp4",
    ]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [clip["output"]["file"], "manifest.json", "manifest.json.sig", "public_key.pem"]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_clip_across_a_gap_keeps_real_time(site: Site, tmp_path: Path) -> None:
    done = extract(site, tmp_path, "cam-1", start=2.5, end=8.5)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "PV-2026-0042"
    clip = check_clip(site, folder, "cam-1", 2.5, 8.5)
    (gap,) = clip["gaps"]
    assert (gap["from_ns"], gap["to_ns"], gap["reason"]) == (
        T0_NS + 4 * NS_PER_SECOND,
        T0_NS + 7 * NS_PER_SECOND,
        "not recorded",
    )
    assert gap["from_local"].endswith("+00:00") or "+" in gap["from_local"] or "-" in gap["from_local"][19:]


def test_manifest_fields_and_journal(site: Site, tmp_path: Path) -> None:
    done = extract(site, tmp_path, "cam-1", "cam-2", start=0.9, end=7.5, ref="PV 2026/0042")
    assert done.returncode == 0, done.stderr
    assert f"signed with the site's key, fingerprint {site.fingerprint}" in done.stdout  # issue 12.3
    folder = tmp_path / "PV_2026_0042"  # the reference is kept as is in the manifest
    raw = (folder / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    assert raw == (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode()
    assert list(manifest)[:2] == ["schema", "requisition"]
    assert manifest["schema"] == "csud-extraction/1"
    assert (manifest["requisition"], manifest["officer"], manifest["service"]) == (
        "PV 2026/0042", "Lt. Marie Dupont", "SR Metz",
    )  # fmt: skip
    assert manifest["operator"] and manifest["host"] and manifest["csud_version"]
    assert manifest["created_at"].endswith("Z") and manifest["timezone"]
    cam1 = check_clip(site, folder, "cam-1", 0.9, 7.5)
    cam2 = check_clip(site, folder, "cam-2", 0.9, 7.5)
    assert cam1["camera"] == {
        "id": "cam-1",
        "name": "Gare, parvis nord",
        "commune": {"id": "metz", "name": "Metz"},
    }
    assert cam2["camera"]["commune"]["id"] == "woippy"
    assert len(cam1["gaps"]) == 1 and cam2["gaps"] == []
    for clip in (cam1, cam2):
        for source in clip["sources"]:
            assert set(source) >= {"path", "interval", "sha256", "bytes"}
            assert len(source["sha256"]) == 64
        out = clip["output"]
        assert out["sha256"] == hashlib.sha256((folder / out["file"]).read_bytes()).hexdigest()
        assert out["bytes"] == (folder / out["file"]).stat().st_size
    conn = sqlite3.connect(site.root / "index.sqlite3")
    rows = conn.execute(
        "SELECT camera, commune, requisition, details FROM journal"
        " WHERE kind = 'extraction' AND requisition = ?",
        ("PV 2026/0042",),
    ).fetchall()
    conn.close()
    assert sorted((r[0], r[1]) for r in rows) == [("cam-1", "metz"), ("cam-2", "woippy")]
    details = {r[0]: json.loads(r[3]) for r in rows}
    assert details["cam-1"]["sha256"] == cam1["output"]["sha256"]
    assert details["cam-1"]["officer"] == "Lt. Marie Dupont"
    assert details["cam-1"]["cameras"] == ["cam-1", "cam-2"]


def test_verify_offline_and_tampering(site: Site, tmp_path: Path) -> None:
    assert extract(site, tmp_path / "out", "cam-1", start=1, end=5).returncode == 0
    # The OPJ's machine: a copy of the folder, no config, no store, another working directory.
    opj = tmp_path / "opj"
    shutil.copytree(tmp_path / "out" / "PV-2026-0042", opj / "PV-2026-0042")
    shutil.copy(site.keys / "public_key.pem", opj / "site-key.pem")  # received separately
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSUD_")}
    env["CSUD_CONFIG"] = str(tmp_path / "does-not-exist.toml")  # must not even be read
    folder = opj / "PV-2026-0042"

    def verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return run("verify", *args, cwd=opj, env=env)

    ok = verify("PV-2026-0042")
    assert ok.returncode == 3, ok.stderr  # consistent, but no key of the OPJ's vouches for it
    assert "signature valid" in ok.stdout and "IN THIS FOLDER" in ok.stdout
    assert "AUTHENTICITY NOT ESTABLISHED" in ok.stdout and "verification OK" not in ok.stdout
    ok = verify(folder / "manifest.json", "--public-key", opj / "site-key.pem")
    assert ok.returncode == 0, ok.stderr
    assert "signature valid under the given key" in ok.stdout and "verification OK" in ok.stdout
    ok = verify(folder, "--fingerprint", site.fingerprint)
    assert ok.returncode == 0, ok.stderr

    # Another key (a forged signature would need the site's private key).
    other = tmp_path / "other"
    assert run("keygen", "--out", other).returncode == 0
    bad = verify(folder, "--public-key", other / "public_key.pem")
    assert bad.returncode == 1
    assert "signature invalid" in bad.stderr and bad.stderr.count("\n") == 1

    # One byte of the clip.
    (clip,) = folder.glob("*.mp4")
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0x01
    clip.write_bytes(bytes(data))
    bad = verify(folder, "--public-key", opj / "site-key.pem")
    assert bad.returncode == 1
    assert f"{clip.name}: sha256 differs" in bad.stderr and "signature invalid" not in bad.stderr
    data[len(data) // 2] ^= 0x01
    clip.write_bytes(bytes(data))
    assert verify(folder, "--public-key", opj / "site-key.pem").returncode == 0

    # One byte of the manifest (a digit of the officer's... anything: the signature breaks).
    manifest = folder / "manifest.json"
    raw = bytearray(manifest.read_bytes())
    i = raw.index(b"Dupont")
    raw[i] = ord("d")
    manifest.write_bytes(bytes(raw))
    bad = verify(folder, "--public-key", opj / "site-key.pem")
    assert bad.returncode == 1 and "signature invalid" in bad.stderr

    # A missing clip.
    clip.unlink()
    bad = verify(folder)
    assert bad.returncode == 1 and f"{clip.name}: missing" in bad.stderr

    # The manifest gone: not an extraction folder (usage, exit 2).
    manifest.unlink()
    bad = verify(folder)
    assert bad.returncode == 2 and "holds no manifest.json" in bad.stderr


def test_unsigned_extraction_verifies_as_not_signed(site: Site, tmp_path: Path) -> None:
    config = write_config(tmp_path, EXTRACT_SITE, root=site.root, name="unsigned.toml", init=False)
    done = run(
        "extract", "--config", config, "--camera", "cam-2", "--from", t(1), "--to", t(2),
        "--requisition", "R1", "--officer", "X", "--out", tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "NOT signed" in done.stdout
    assert not (tmp_path / "R1" / "manifest.json.sig").exists()
    ok = run("verify", tmp_path / "R1")
    assert ok.returncode == 3 and "NOT SIGNED" in ok.stdout
    bad = run("verify", tmp_path / "R1", "--public-key", site.keys / "public_key.pem")
    assert bad.returncode == 3 and "NOT SIGNED" in bad.stdout and "AUTHENTICITY NOT ESTABLISHED" in bad.stdout


def test_altered_segment_is_refused_and_named(tmp_path: Path) -> None:
    site = make_site(tmp_path)  # its own store: this test damages it
    rows = Index.open(site.root / "index.sqlite3", readonly=True)
    try:
        segments = rows.segments("cam-1")
    finally:
        rows.close()
    victim = segments[1]  # [2 s, 4 s)
    path = site.root / victim.path
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    (site.root / "metz" / "cam-1" / "stray.mp4").write_bytes(b"not indexed")
    (site.root / "metz" / "cam-1" / "open.mp4.partial").write_bytes(b"being written")

    out = tmp_path / "out"
    done = extract(site, out, "cam-1", start=1, end=5)
    assert done.returncode == 1
    assert victim.path in done.stderr and "does not match its recorded hash" in done.stderr
    assert done.stderr.count("\n") == 1
    assert not out.exists() or list(out.iterdir()) == []  # nothing written, not even half
    conn = sqlite3.connect(site.root / "index.sqlite3")
    (entry,) = conn.execute(
        "SELECT camera, requisition, details FROM journal WHERE kind = 'integrity_failure'"
    ).fetchall()
    conn.close()
    assert entry[:2] == ("cam-1", "PV-2026-0042") and json.loads(entry[2])["path"] == victim.path

    # An interval that does not touch the damaged segment still extracts.
    assert extract(site, out, "cam-1", start=0, end=1.5).returncode == 0

    check = run("verify", "--archive", "--config", site.config)
    assert check.returncode == 1
    assert f"MISMATCH  {victim.path}" in check.stdout
    assert "UNINDEXED metz/cam-1/stray.mp4" in check.stdout
    assert "partial" not in check.stdout and "index.sqlite3" not in check.stdout
    assert victim.path in check.stderr
    only_cam2 = run("verify", "--archive", "--camera", "cam-2", "--config", site.config)
    assert only_cam2.returncode == 0, only_cam2.stdout + only_cam2.stderr
    assert "0 mismatched, 0 missing, 0 unindexed" in only_cam2.stdout

    path.unlink()
    check = run("verify", "--archive", "--camera", "cam-1", "--config", site.config)
    assert check.returncode == 1 and f"MISSING   {victim.path}" in check.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--from", "2026-09-21T14:13:21", "--to", "2026-09-21T14:13:25Z"), 2, "has no UTC offset"),
        (("--from", "2026-09-21T14:13:25Z", "--to", "2026-09-21T14:13:21Z"), 2, "--to must be after --from"),
        (("--from", "2026-09-21T14:13:21Z", "--to", "2026-09-21T14:13:21Z"), 2, "--to must be after --from"),
        (("--from", "yesterday", "--to", "2026-09-21T14:13:21Z"), 2, "not an ISO 8601 time"),
        (
            ("--camera", "nope", "--from", "2026-09-21T14:13:21Z", "--to", "2026-09-21T14:13:25Z"),
            2,
            "unknown camera 'nope'",
        ),
        (
            ("--camera", "cam-3", "--from", "2026-09-21T14:13:21Z", "--to", "2026-09-21T14:13:25Z"),
            1,
            "camera cam-3: no footage",
        ),
        (
            ("--from", "2026-09-21T14:13:24.5Z", "--to", "2026-09-21T14:13:26.5Z"),
            1,
            "camera cam-1: no footage",
        ),
    ],
    ids=[
        "naive",
        "reversed",
        "empty",
        "not-a-time",
        "unknown-camera",
        "camera-without-footage",
        "interval-in-a-gap",
    ],
)
def test_refusals(site: Site, tmp_path: Path, args: tuple[str, ...], code: int, message: str) -> None:
    camera = () if "--camera" in args else ("--camera", "cam-1")
    done = run(
        "extract",
        "--config",
        site.config,
        *camera,
        *args,
        "--requisition",
        "R",
        "--officer",
        "O",
        "--out",
        tmp_path,
    )
    assert done.returncode == code, done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_refused_unless_force(site: Site, tmp_path: Path) -> None:
    (tmp_path / "PV-2026-0042").mkdir()
    (tmp_path / "PV-2026-0042" / "old.txt").write_text("previous extraction")
    done = extract(site, tmp_path, "cam-2", start=1, end=2)
    assert done.returncode == 2 and "exists (use --force" in done.stderr
    assert (tmp_path / "PV-2026-0042" / "old.txt").exists()
    done = extract(site, tmp_path, "cam-2", start=1, end=2, extra=("--force",))
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "PV-2026-0042" / "old.txt").exists()
    assert run("verify", tmp_path / "PV-2026-0042", "--fingerprint", site.fingerprint).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["PV-2026-0042"]  # nothing aside left


def test_force_over_a_delivered_extraction_journals_what_it_destroyed(site: Site, tmp_path: Path) -> None:
    """Issue 12, point 7: the replaced clips (perhaps handed over) are journaled with their hashes."""
    copy = copy_site(site, tmp_path / "copy")
    out = tmp_path / "out"
    first = run(
        "extract", "--config", copy.config, "--camera", "cam-2", "--from", t(1), "--to", t(3),
        "--requisition", "PV-7", "--officer", "OPJ", "--out", out,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    delivered = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "PV-7").iterdir()}
    again = run(
        "extract", "--config", copy.config, "--camera", "cam-2", "--from", t(4), "--to", t(6),
        "--requisition", "PV-7", "--officer", "OPJ", "--out", out,
    )  # fmt: skip
    assert again.returncode == 2 and "exists (use --force" in again.stderr
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "PV-7").iterdir()} == delivered
    forced = run(
        "extract", "--config", copy.config, "--camera", "cam-2", "--from", t(4), "--to", t(6),
        "--requisition", "PV-7", "--officer", "OPJ", "--out", out, "--force",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert "replaced the previous" in forced.stdout and "4 file(s) destroyed" in forced.stdout
    index = Index.open(copy.root / "index.sqlite3", readonly=True)
    try:
        entries = index.journal_entries()
        assert index.verify_journal().ok
    finally:
        index.close()
    entries = [e for e in entries if e.requisition == "PV-7"]
    kinds = [e.kind for e in entries]
    assert kinds == ["extraction", "extraction_replaced", "extraction"]
    (replaced,) = [e for e in entries if e.kind == "extraction_replaced"]
    assert kinds.index("extraction_replaced") == len(kinds) - 2  # before the new extraction's entry
    assert replaced.requisition == "PV-7" and replaced.details["folder"] == str(out / "PV-7")
    assert {f["name"]: f["sha256"] for f in replaced.details["files"]} == delivered
    (clip,) = [n for n in delivered if n.endswith(".mp4")]
    assert replaced.details["manifest"]["clips"] == [
        {"file": clip, "camera": "cam-2", "sha256": delivered[clip]}
    ]
    assert replaced.details["signed"] is True


def test_footage_is_never_world_readable_whatever_the_umask(tmp_path: Path) -> None:
    """Issue 12, point 6: with umask 022, segments, the index and extractions are 0640 / 0750 or
    tighter; the signing key stays 0600."""
    previous = os.umask(0o022)
    try:
        site = make_site(tmp_path / "site")
        done = extract(site, tmp_path / "out", "cam-1", start=1, end=3)
        assert done.returncode == 0, done.stderr
    finally:
        os.umask(previous)
    store = [p for p in site.root.rglob("*")]
    assert any(p.name.endswith(".mp4") for p in store) and (site.root / "index.sqlite3") in store
    out = [tmp_path / "out", *(tmp_path / "out").rglob("*")]
    assert len(out) == 1 + 1 + 4  # DIR, DIR/<REF>, clip, manifest, signature, public key
    for path in store + out:
        mode = path.stat().st_mode & 0o777
        if path.name == "public_key.pem":
            continue  # a public key is public
        limit = 0o750 if path.is_dir() else 0o640
        assert mode & ~limit == 0, f"{path} is {mode:o}"
    assert (site.keys / "signing_key.pem").stat().st_mode & 0o777 == 0o600


def test_an_interval_ending_after_now_is_refused(site: Site, tmp_path: Path) -> None:
    """Issue 12, point 5: the future is not yet recorded; it is never signed as a recording gap."""
    import time

    future = format_time(time.time_ns() + 3600 * NS_PER_SECOND)
    done = run(
        "extract", "--config", site.config, "--camera", "cam-1", "--from", t(1), "--to", future,
        "--requisition", "R-future", "--officer", "O", "--out", tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "is after now" in done.stderr and "not yet recorded" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_keygen_refuses_to_overwrite(site: Site) -> None:
    assert (site.keys / "signing_key.pem").stat().st_mode & 0o777 == 0o600
    before = (site.keys / "signing_key.pem").read_bytes()
    done = run("keygen", "--out", site.keys)
    assert done.returncode == 1 and "refusing to overwrite" in done.stderr
    assert (site.keys / "signing_key.pem").read_bytes() == before


def test_verify_usage_errors(tmp_path: Path) -> None:
    assert run("verify").returncode == 2
    assert run("verify", tmp_path / "nothing-here").returncode == 2
    assert run("verify", "--archive", tmp_path).returncode == 2


TICK_NS = NS_PER_SECOND / 90000
CAM1 = CameraRef("cam-1", "", "metz", "Metz")


def request(out: Path, from_ns: int, to_ns: int, ref: str = "R", camera: CameraRef = CAM1) -> ev.Request:
    return ev.Request((camera,), from_ns, to_ns, ref, "OPJ", None, out)


async def _record_at(root: Path, fps: int, start_ns: int) -> Recording:
    index = Index.create(root / "index.sqlite3")
    try:
        aus = encode(200, gop=25, fps=fps)
        return await record_store(
            root, index, timed_frames(aus, start_ns, fps=fps), segment_ns=3 * NS_PER_SECOND, fps=fps
        )
    finally:
        index.close()


def test_mid_segment_keyframes_at_30_fps(tmp_path: Path) -> None:
    """At 30 fps a keyframe is rarely a whole tick after its segment's start: the writer rounded
    its time to ticks, and the extractor must find it by the same rounding (not 1 ns early)."""
    root = tmp_path / "store"
    root.mkdir()
    recording = asyncio.run(_record_at(root, 30, T0_NS + 123_456_789))  # not on a whole tick
    starts = [f.start_ns for seg in recording.segments for f in seg.fragments[1:]]
    assert len(starts) >= 3
    index = Index.create(root / "index.sqlite3")
    try:
        for k, start in enumerate(starts):
            to_ns = start + NS_PER_SECOND // 2
            result = ev.extract(
                request(tmp_path / "out", start + 1000, to_ns, f"R{k}"),
                root=root, index=index, now_ns=T0_NS + 86_400 * NS_PER_SECOND, zone=(dt.UTC, "UTC"),
            )  # fmt: skip
            (clip,) = result.manifest["clips"]
            assert clip["actual"]["from_ns"] == start
            recorded = [p - start for p in recording.frame_pts_ns if start <= p < to_ns]
            pts = decode_pts(result.folder / clip["output"]["file"])
            assert len(pts) == len(recorded) == clip["output"]["frames"]
            assert all(abs(a - b) <= TICK_NS for a, b in zip(pts, recorded, strict=True))
    finally:
        index.close()


def copy_site(site: Site, base: Path) -> Site:
    """A copy of the shared store (cheaper than recording one), for a test that alters it."""
    root = base / "store"
    shutil.copytree(site.root, root)
    config = write_config(
        base, EXTRACT_SITE, root=root, signing_key=site.keys / "signing_key.pem", init=False
    )
    return Site(root, config, site.keys, site.recordings, site.fingerprint)


def test_verify_archive_counts_quarantine_apart(site: Site, tmp_path: Path) -> None:
    """Files recovery set aside are known and journaled: counted, never reported UNINDEXED."""
    mine = copy_site(site, tmp_path)
    for commune, camera in (("metz", "cam-1"), ("woippy", "cam-2")):
        day = mine.root / "quarantine" / commune / camera / "2026" / "09" / "21"
        day.mkdir(parents=True)
        (day / "20260921T141330.000Z.mp4").write_bytes(b"torn")
        (day / "20260921T141332.000Z.mp4.partial").write_bytes(b"torn")
    check = run("verify", "--archive", "--config", mine.config)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "UNINDEXED" not in check.stdout and "0 unindexed" in check.stdout
    assert f"note: 4 file(s) in {mine.root / 'quarantine'}" in check.stdout
    check = run("verify", "--archive", "--camera", "cam-2", "--config", mine.config)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "note: 2 file(s) in" in check.stdout


def extract_in_process(site: Site, out: Path, start: float, end: float, *cameras: str) -> int:
    from csud.cli.main import main

    camera_args = [a for c in cameras or ("cam-1",) for a in ("--camera", c)]
    return main(
        ["extract", "--config", str(site.config), *camera_args, "--from", t(start), "--to", t(end),
         "--requisition", "PV-1", "--officer", "O", "--out", str(out)]
    )  # fmt: skip


def integrity_failures(root: Path) -> list[tuple[str, dict[str, Any]]]:
    conn = sqlite3.connect(root / "index.sqlite3")
    rows = conn.execute("SELECT camera, details FROM journal WHERE kind = 'integrity_failure'").fetchall()
    conn.close()
    return [(r[0], json.loads(r[1])) for r in rows]


def test_source_destroyed_after_planning_is_refused(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retention (or anything) removes a planned segment before it is read: a one-line error
    naming it, journaled like a mismatch, nothing written."""
    mine = copy_site(site, tmp_path / "site")
    gone: list[str] = []
    real_plan_all = ev.plan_all

    def plan_then_lose(index: Index, request: ev.Request) -> list[Any]:
        plans = real_plan_all(index, request)
        victim = plans[0].sources[-1].segment.path
        (mine.root / victim).unlink()
        gone.append(victim)
        return plans

    monkeypatch.setattr(ev, "plan_all", plan_then_lose)
    out = tmp_path / "out"
    assert extract_in_process(mine, out, 1.5, 3.3) == 1
    err = capsys.readouterr().err
    assert f"segment {gone[0]} is missing from the store" in err and err.count("\n") == 1
    assert not out.exists() or list(out.iterdir()) == []
    assert [(c, d["path"]) for c, d in integrity_failures(mine.root)] == [("cam-1", gone[0])]


def test_copy_uses_the_bytes_that_were_hashed(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The source is read once: destroying it after its hash was checked changes nothing (the
    demuxer never opens it again), so what is copied is exactly what was hashed."""
    mine = copy_site(site, tmp_path / "site")
    real_open = av.open

    def open_after_loss(file: Any, *args: Any, **kwargs: Any) -> Any:
        if "w" not in args and kwargs.get("mode") != "w":  # opening a source for reading
            for path in (mine.root / "metz" / "cam-1").rglob("*.mp4"):
                path.unlink()
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", open_after_loss)
    out = tmp_path / "out"
    assert extract_in_process(mine, out, 0.5, 1.5) == 0, capsys.readouterr().err
    monkeypatch.undo()
    assert not list((mine.root / "metz" / "cam-1").rglob("*.mp4"))  # the race did happen
    check_clip(mine, out / "PV-1", "cam-1", 0.5, 1.5)
    assert integrity_failures(mine.root) == []


def test_camera_removed_from_the_config_extracts_from_the_index(site: Site, tmp_path: Path) -> None:
    """Footage outlives its camera's config entry (retention, holds): the index names its commune."""
    from csud.evidence.manifest import NOT_IN_CONFIG_NOTE

    cam2 = '[[cameras]]\nid = "cam-2"\ncommune = "woippy"\nurl = "rtsp://127.0.0.1/2"\n'
    text = site.config.read_text(encoding="utf-8")
    assert cam2 in text
    config = tmp_path / "without-cam-2.toml"
    config.write_text(text.replace(cam2, ""), encoding="utf-8")
    out = tmp_path / "out"
    done = run(
        "extract", "--config", config, "--camera", "cam-2", "--from", t(1), "--to", t(2),
        "--requisition", "R-removed", "--officer", "X", "--out", out,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"note: camera cam-2 is not in {config}: identified from the index" in done.stdout
    clip = check_clip(site, out / "R-removed", "cam-2", 1, 2)
    assert clip["camera"] == {
        "id": "cam-2",
        "name": "",
        "commune": {"id": "woippy", "name": "Woippy"},
        "note": NOT_IN_CONFIG_NOTE,
    }
    conn = sqlite3.connect(site.root / "index.sqlite3")
    rows = conn.execute(
        "SELECT camera, commune FROM journal WHERE kind = 'extraction' AND requisition = 'R-removed'"
    ).fetchall()
    conn.close()
    assert rows == [("cam-2", "woippy")]


async def _record_restart(root: Path) -> None:
    """cam-1 records 4 s at 25 fps, is restarted 2 s later at 30 fps: same codec and size, new SPS."""
    index = Index.create(root / "index.sqlite3")
    try:
        await record_store(root, index, timed_frames(encode(100)), camera="cam-1")
        restart_ns = T0_NS + 6 * NS_PER_SECOND
        aus = encode(120, fps=30)
        await record_store(root, index, timed_frames(aus, restart_ns, fps=30), camera="cam-1", fps=30)
    finally:
        index.close()


def test_extraction_across_a_restart_with_new_parameter_sets_gives_one_clip_per_configuration(
    tmp_path: Path,
) -> None:
    """Issue 12, point 4: one requisition folder, one manifest, two clips, each verified."""
    root = tmp_path / "store"
    create_store(root)  # as csud init does
    asyncio.run(_record_restart(root))
    keys = tmp_path / "keys"
    assert run("keygen", "--out", keys).returncode == 0
    config = write_config(tmp_path, EXTRACT_SITE, root=root, signing_key=keys / "signing_key.pem", init=False)
    done = run(
        "extract", "--config", config, "--camera", "cam-1", "--from", t(1), "--to", t(9),
        "--requisition", "PV-restart", "--officer", "OPJ", "--out", tmp_path / "out",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "out" / "PV-restart"
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    clips = manifest["clips"]
    assert [c["camera"]["id"] for c in clips] == ["cam-1", "cam-1"]
    assert "starts_after" not in clips[0] and clips[1]["starts_after"] == "SPS changed"
    assert clips[0]["output"]["file"] != clips[1]["output"]["file"]
    assert clips[1]["actual"]["from_ns"] == T0_NS + 6 * NS_PER_SECOND
    assert clips[0]["actual"]["to_ns"] <= clips[1]["actual"]["from_ns"]
    assert [g["from_ns"] for g in clips[0]["gaps"]] == [T0_NS + 4 * NS_PER_SECOND]  # the restart
    for clip in clips:
        pts = decode_pts(folder / clip["output"]["file"])
        assert len(pts) == clip["output"]["frames"] and pts[0] == 0
    assert clips[0]["output"]["frames"] == 75  # 1 s .. 4 s at 25 fps (from the keyframe at 1 s)
    assert clips[1]["output"]["frames"] == 90  # 6 s .. 9 s at 30 fps
    verify = run("verify", folder, "--public-key", keys / "public_key.pem")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.count("OK        cam-1_") == 2


def test_describe_change_names_the_real_difference() -> None:
    from csud.evidence.clip import describe_change

    def avcc(sps: bytes, pps: bytes) -> bytes:
        return (
            bytes([1, 100, 0, 31, 0xFF, 0xE1])
            + len(sps).to_bytes(2, "big")
            + sps
            + b"\x01"
            + (len(pps).to_bytes(2, "big") + pps)
        )

    a = ("h264", 1280, 720, avcc(b"\x67sps1", b"\x68pps"))
    assert describe_change(a, ("h264", 1280, 720, avcc(b"\x67sps2", b"\x68pps"))) == "SPS changed"
    assert describe_change(a, ("h264", 1280, 720, avcc(b"\x67sps1", b"\x68pp2"))) == "PPS changed"
    assert describe_change(a, ("h264", 1920, 1080, a[3])) == "resolution 1280x720 -> 1920x1080"
    assert describe_change(a, ("hevc", 1280, 720, b"x")) == "codec h264 -> hevc"
