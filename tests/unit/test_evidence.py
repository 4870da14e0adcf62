"""Evidence pieces without a store: manifest bytes and parsing, folder names, keys, progress line."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import timedelta, timezone
from pathlib import Path

import pytest

from csud.errors import CsudError, UsageError
from csud.evidence import manifest as mf
from csud.evidence.clip import ClipPlan, ClipSource, FragmentSpan, Gap, SegmentSpan
from csud.evidence.extract import folder_name, output_name
from csud.evidence.signing import generate_keypair, load_public_key, sign, signature_valid

S = 1_000_000_000
T0 = 1_790_000_000 * S  # 2026-09-21T14:13:20Z
PARIS_SUMMER = timezone(timedelta(hours=2), "CEST")


def sample_manifest() -> dict[str, object]:
    segment = SegmentSpan(
        7, "metz/cam/x.mp4", T0, T0 + 60 * S, 1500, 123, "ab" * 32, (FragmentSpan(T0, 900, 25),)
    )
    plan = ClipPlan(
        T0 + S,
        T0 + 70 * S,
        (ClipSource(segment, T0, 900),),
        (Gap(T0 + 60 * S, T0 + 70 * S),),
        T0,
        T0 + 60 * S,
    )
    header = mf.Header(
        "PV 2026/1", "Lt. Élodie Müller", None, "op", "csu-1", "0.1.0", T0 + 3600 * S, "Europe/Paris"
    )
    output = mf.OutputFile("cam_x.mp4", 1000, "cd" * 32, 59 * S, 1475, "h264", 1280, 720)
    clip = mf.ClipRecord(mf.CameraRef("cam", "Gare", "metz", "Metz"), plan, T0, T0 + 60 * S, output)
    return mf.build_manifest(header, [clip], PARIS_SUMMER)


def test_manifest_bytes_are_deterministic_utf8_and_read_back() -> None:
    data = mf.manifest_bytes(sample_manifest())
    assert data == mf.manifest_bytes(sample_manifest())
    assert data.endswith(b"}\n") and "Élodie Müller".encode() in data  # no \u escapes
    doc = json.loads(data)
    assert list(doc) == [
        "schema", "requisition", "officer", "service", "operator", "host", "csud_version",
        "created_at", "created_at_local", "timezone", "clips",
    ]  # fmt: skip
    clip = doc["clips"][0]
    assert clip["requested"]["from"] == "2026-09-21T14:13:21.000000Z"
    assert clip["requested"]["from_local"] == "2026-09-21T16:13:21.000000+02:00"
    assert clip["gaps"][0]["reason"] == "not recorded" and clip["gaps"][0]["seconds"] == 10.0
    assert clip["sources"][0]["sha256"] == "ab" * 32
    summary = mf.read_manifest(data)
    assert summary.requisition == "PV 2026/1"
    assert summary.files == (mf.ExpectedFile("cam_x.mp4", 1000, "cd" * 32, "cam"),)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema="other/2"), "unknown schema"),
        (lambda d: d.update(clips=[]), "no clips"),
        (lambda d: d["clips"][0]["output"].update(file="../etc/passwd"), "not a plain file name"),
        (lambda d: d["clips"][0]["output"].update(file=".hidden"), "not a plain file name"),
        (lambda d: d["clips"][0]["output"].update(sha256="xyz"), "not a SHA-256"),
        (lambda d: d["clips"][0]["output"].update(bytes=-1), "not a size"),
        (lambda d: d["clips"][0].pop("output"), "lacks"),
        (lambda d: d["clips"].append(d["clips"][0]), "listed twice"),
    ],
)
def test_read_manifest_refuses_malformed(mutate: object, message: str) -> None:
    doc = json.loads(mf.manifest_bytes(sample_manifest()))
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        mf.read_manifest(json.dumps(doc).encode())
    with pytest.raises(ValueError, match="not valid UTF-8 JSON"):
        mf.read_manifest(b"{not json")


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("PV-2026-0042", "PV-2026-0042"),
        ("PV 2026/0042", "PV_2026_0042"),
        ("réq n°5", "r_q_n_5"),
        ("../x", "_._x"),
    ],
)
def test_folder_name(ref: str, name: str) -> None:
    assert folder_name(ref) == name


@pytest.mark.parametrize("ref", ["", "..", "///", "x" * 200])
def test_folder_name_refused(ref: str) -> None:
    with pytest.raises(UsageError):
        folder_name(ref)


def test_output_name() -> None:
    assert output_name("cam-1", T0 + 40_000_000) == "cam-1_20260921T141320.040Z.mp4"


def test_keys_sign_and_verify(tmp_path: Path) -> None:
    private, public, fp = generate_keypair(tmp_path / "k")
    assert private.stat().st_mode & 0o777 == 0o600 and fp.startswith("SHA256:")
    from csud.evidence.signing import load_private_key

    key = load_private_key(private)
    signature = sign(key, b"manifest")
    assert len(signature) == 64
    pub = load_public_key(public.read_bytes(), "k")
    assert signature_valid(pub, b"manifest", signature)
    assert not signature_valid(pub, b"manifest!", signature)
    assert not signature_valid(pub, b"manifest", signature[:-1])
    with pytest.raises(CsudError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "k")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_only_on_a_terminal() -> None:
    from csud.cli.evidence import ProgressLine

    pipe = io.StringIO()
    line = ProgressLine("x", pipe)
    line(5, 10)
    line.finish()
    assert pipe.getvalue() == ""
    tty = _Tty()
    line = ProgressLine("x", tty)
    line(5 << 20, 10 << 20)
    line(10 << 20, 10 << 20)
    line.finish()
    assert tty.getvalue() == "\rx:  50% (5/10 MiB)\x1b[K\rx: 100% (10/10 MiB)\x1b[K\n"


def make_folder(folder: Path, key_dir: Path | None = None, officer: str = "Lt. Élodie Müller") -> None:
    """An extraction folder with one (fake) clip that matches its manifest, signed with the key
    pair in ``key_dir`` (its public key shipped in the folder, as ``csud extract`` does)."""
    from csud.evidence.signing import load_private_key

    folder.mkdir(parents=True, exist_ok=True)
    clip = b"not really an mp4" * 50
    (folder / "cam_x.mp4").write_bytes(clip)
    doc = sample_manifest()
    doc["officer"] = officer
    doc["clips"][0]["output"].update(bytes=len(clip), sha256=hashlib.sha256(clip).hexdigest())  # type: ignore[index]
    data = mf.manifest_bytes(doc)
    (folder / mf.MANIFEST_NAME).write_bytes(data)
    for name in (mf.SIGNATURE_NAME, mf.PUBLIC_KEY_NAME):
        (folder / name).unlink(missing_ok=True)
    if key_dir is not None:
        (folder / mf.SIGNATURE_NAME).write_bytes(sign(load_private_key(key_dir / "signing_key.pem"), data))
        (folder / mf.PUBLIC_KEY_NAME).write_bytes((key_dir / "public_key.pem").read_bytes())


def verify_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    from csud.cli.main import main

    code = main(["verify", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_unsigned_folder_says_not_signed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Consistent but unsigned: exit 3 (integrity consistent, authenticity not established)."""
    make_folder(tmp_path / "PV")
    code, out, err = verify_cli(capsys, tmp_path / "PV")
    assert code == 3 and err.count("\n") == 1 and "authenticity is not established" in err
    assert "(manifest.json is not signed); exit 3" in err
    assert "NOT SIGNED: the files match manifest.json, but nothing proves manifest.json itself" in out
    assert "AUTHENTICITY NOT ESTABLISHED" in out and "verification OK" not in out
    _, site_key, _ = generate_keypair(tmp_path / "site")
    code, out, err = verify_cli(capsys, tmp_path / "PV", "--public-key", site_key)
    assert code == 3 and "NOT SIGNED" in out


def test_verify_key_substitution(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12, point 3: an altered manifest re-signed with another key, that key shipped in the
    folder, never verifies with exit 0; only a key the verifier supplies does."""
    _, site_key, site_print = generate_keypair(tmp_path / "site")
    _, _, other_print = generate_keypair(tmp_path / "other")
    make_folder(tmp_path / "PV", tmp_path / "site")
    code, out, _ = verify_cli(capsys, tmp_path / "PV", "--public-key", site_key)
    assert code == 0 and f"signature valid under the given key {site_key} ({site_print})" in out
    code, out, _ = verify_cli(capsys, tmp_path / "PV", "--fingerprint", site_print)
    assert code == 0 and f"signature valid under the site's key (fingerprint {site_print}" in out
    spoken = site_print.upper().replace("SHA256:", "sha256: ")  # as read out over the phone
    code, out, _ = verify_cli(capsys, tmp_path / "PV", "--fingerprint", spoken)
    assert code == 0
    code, out, _ = verify_cli(capsys, tmp_path / "PV")
    assert code == 3  # the genuine folder too: nothing of the verifier's vouches for it

    make_folder(tmp_path / "PV", tmp_path / "other", officer="someone else")
    code, out, err = verify_cli(capsys, tmp_path / "PV")
    assert code == 3  # internally consistent: only the verifier's key can tell
    assert (
        f"signature valid under the key IN THIS FOLDER (fingerprint {other_print}): compare it with "
        "the site's published fingerprint, or pass --public-key"
    ) in out.splitlines()
    assert site_print not in out and "verification OK" not in out
    # The one stderr line gives the reason whole (it used to be cut at the first colon:
    # "(signature valid under the key IN THIS FOLDER (fingerprint SHA256); exit 3").
    assert err.count("\n") == 1 and f"the key IN THIS FOLDER ({other_print})" in err
    assert "no key of yours given: pass --public-key or --fingerprint); exit 3" in err
    code, _, err = verify_cli(capsys, tmp_path / "PV", "--public-key", site_key)
    assert code == 1 and "signature invalid" in err
    code, _, err = verify_cli(capsys, tmp_path / "PV", "--fingerprint", site_print)
    assert code == 1 and f"the key in the folder is {other_print}, the site's is {site_print}" in err


@pytest.mark.parametrize(
    "args",
    [
        ("--fingerprint", "SHA256:abc"),
        ("--fingerprint", "MD5:" + "0" * 64),
        ("--fingerprint", "SHA256:" + "0" * 64, "--public-key", "k.pem"),
    ],
)
def test_verify_bad_fingerprint_is_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...]
) -> None:
    make_folder(tmp_path / "PV")
    code, _, err = verify_cli(capsys, tmp_path / "PV", *args)
    assert code == 2 and err.count("\n") == 1


def test_verify_folder_without_manifest_is_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "PV").mkdir()
    (tmp_path / "PV" / "clip.mp4").write_bytes(b"x")
    code, _, err = verify_cli(capsys, tmp_path / "PV")
    assert code == 2 and "holds no manifest.json" in err


# -- gaps: "not yet recorded" and causes (issue 12, point 5) -----------------------------------


def _span(seg_id: int, start_s: int, end_s: int) -> SegmentSpan:
    frags = tuple(FragmentSpan(T0 + s * S, 100 * (s - start_s), 25) for s in range(start_s, end_s))
    return SegmentSpan(seg_id, f"s{seg_id}.mp4", T0 + start_s * S, T0 + end_s * S, 25 * (end_s - start_s),
                       100 * (end_s - start_s), "00" * 32, frags)  # fmt: skip


def test_the_tail_of_a_camera_being_recorded_is_not_yet_recorded_never_a_gap() -> None:
    from csud.evidence.clip import CAUSE_SEGMENT_IN_PROGRESS, REASON_NOT_YET_RECORDED, plan_clip

    spans = [_span(1, 0, 10)]
    plain = plan_clip(spans, T0 + S, T0 + 20 * S)
    assert plain.gaps == (Gap(T0 + 10 * S, T0 + 20 * S, "not recorded"),)
    live = plan_clip(spans, T0 + S, T0 + 20 * S, recording=True)
    assert live.gaps == (Gap(T0 + 10 * S, T0 + 20 * S, REASON_NOT_YET_RECORDED, CAUSE_SEGMENT_IN_PROGRESS),)
    manifest_gap = mf._clip_json(
        mf.ClipRecord(
            mf.CameraRef("cam", "", "metz", ""), live, T0, T0 + 10 * S,
            mf.OutputFile("c.mp4", 1, "cd" * 32, S, 1, "h264", 1, 1),
        ),
        PARIS_SUMMER,
    )["gaps"][0]  # fmt: skip
    assert manifest_gap["reason"] == "not yet recorded" and manifest_gap["cause"] == CAUSE_SEGMENT_IN_PROGRESS


def test_gaps_carry_their_known_cause() -> None:
    from csud.evidence.clip import Outage, plan_clip
    from csud.evidence.outages import CAUSE_AUTH_REFUSED, CAUSE_DAEMON_STOPPED, daemon_outages
    from csud.store.journal import JournalEntry

    def entry(i: int, kind: str, at_s: int) -> JournalEntry:
        return JournalEntry(i, T0 + at_s * S, kind, "csud", None, None, None, None, None, None, {}, "", "")

    journal = [
        entry(1, "daemon_started", -100),
        entry(2, "daemon_stopped", 11),
        entry(3, "daemon_started", 19),
    ]
    daemon = daemon_outages(journal, T0 + 100 * S, running=True)
    assert daemon == [Outage(T0 + 11 * S, T0 + 19 * S, CAUSE_DAEMON_STOPPED)]
    camera = [Outage(T0 + 35 * S, T0 + 45 * S, CAUSE_AUTH_REFUSED)]
    spans = [_span(1, 0, 10), _span(2, 20, 30), _span(3, 50, 60)]
    plan = plan_clip(spans, T0, T0 + 60 * S, outages=[*daemon, *camera])
    assert [(g.start_ns, g.end_ns, g.reason, g.cause) for g in plan.gaps] == [
        (T0 + 10 * S, T0 + 20 * S, "not recorded", CAUSE_DAEMON_STOPPED),
        (T0 + 30 * S, T0 + 50 * S, "not recorded", CAUSE_AUTH_REFUSED),
    ]
    stopped = daemon_outages(journal[:2], T0 + 100 * S, running=False)  # stopped, still not running
    assert stopped == [Outage(T0 + 11 * S, T0 + 100 * S + 1, CAUSE_DAEMON_STOPPED)]


def test_a_gap_across_an_unclean_restart_says_so() -> None:
    """Issues 12.5 and 12.9: after SIGKILL there is no daemon_stopped; the gap from the last durable
    frame to the restart had no cause. The restart (a daemon_started after a daemon_started, which
    the start journals as unclean_stop_detected) is a known cause of the gap that spans it."""
    from csud.evidence.clip import Outage, plan_clip
    from csud.evidence.outages import CAUSE_DAEMON_STOPPED, CAUSE_UNCLEAN_STOP, daemon_outages
    from csud.store.journal import JournalEntry

    def entry(i: int, kind: str, at_s: float) -> JournalEntry:
        at = T0 + round(at_s * S)
        return JournalEntry(i, at, kind, "csud", None, None, None, None, None, None, {}, "", "")

    journal = [
        entry(1, "daemon_started", -100),
        entry(2, "daemon_started", 11.7),  # killed at about 10.5, restarted here
        entry(3, "daemon_stopped", 40),
        entry(4, "daemon_started", 45),
    ]
    daemon = daemon_outages(journal, T0 + 100 * S, running=True)
    restart = T0 + round(11.7 * S)
    assert daemon == [
        Outage(restart - 1, restart, CAUSE_UNCLEAN_STOP),
        Outage(T0 + 40 * S, T0 + 45 * S, CAUSE_DAEMON_STOPPED),
    ]
    spans = [_span(1, 0, 10), _span(2, 12, 20), _span(3, 25, 30)]
    plan = plan_clip(spans, T0, T0 + 30 * S, outages=daemon)
    assert [(g.start_ns, g.end_ns, g.cause) for g in plan.gaps] == [
        (T0 + 10 * S, T0 + 12 * S, CAUSE_UNCLEAN_STOP),
        (T0 + 20 * S, T0 + 25 * S, None),  # the daemon ran then: cause unknown, none invented
    ]


@pytest.mark.parametrize(
    ("running", "enabled", "last_end_s", "status", "recording", "cause"),
    [
        (True, True, -5, None, True, None),  # no /status: a recent last segment means recording
        (True, True, -3600, None, False, None),  # an hour old: not recording, cause unknown
        (False, True, -5, None, False, "daemon stopped"),
        (True, False, -5, None, False, None),  # disabled
        (True, True, -5, {"up": True}, True, None),
        (True, True, -5, {"up": False, "last_error": "rtsp://cam refused the credentials (401 x)",
                          "last_frame_age_seconds": 5.0}, False, "camera down: authentication refused"),
        (True, True, -5, {"up": False, "last_error": "connection refused"}, False,
         "camera down: connection refused"),
    ],
)  # fmt: skip
def test_camera_context(
    running: bool,
    enabled: bool,
    last_end_s: int,
    status: dict[str, object] | None,
    recording: bool,
    cause: str | None,
) -> None:
    from csud.evidence.clip import Outage
    from csud.evidence.outages import camera_context

    now = T0 + 1000 * S
    daemon = [] if running else [Outage(now - 10 * S, now + 1, "daemon stopped")]
    context = camera_context(
        "cam", enabled, now + last_end_s * S, now_ns=now, running=running, status=status, daemon=daemon,
        segment_seconds=60,
    )  # fmt: skip
    assert context.recording is recording
    assert [o.cause for o in context.outages] == ([cause] if cause else [])


def test_extract_refuses_the_future_in_the_site_zone(tmp_path: Path) -> None:
    """Issue 12, points 5 and 8: the refusal of an interval ending after now names both times in
    the site's zone, with its offset (it printed them in UTC)."""
    from zoneinfo import ZoneInfo

    from csud.errors import UsageError
    from csud.evidence.extract import Request, extract

    now_ns = 1_796_197_041_000_000_000  # 2026-12-02T07:37:21Z
    request = Request((), now_ns - 60 * 10**9, now_ns + 30 * 10**9, "R", "O", None, tmp_path)
    with pytest.raises(UsageError) as caught:
        paris = (ZoneInfo("Europe/Paris"), "Europe/Paris")
        extract(request, root=tmp_path, index=None, now_ns=now_ns, zone=paris)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "--to 2026-12-02T08:37:51.000000+01:00 is after now (2026-12-02T08:37:21.000000+01:00)" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("tamper", "expected"), [(True, 1), (False, 3)])
def test_verify_exit_code_survives_a_closed_pipe(tmp_path: Path, tamper: bool, expected: int) -> None:
    """``csud verify PV | head -1``: the reader leaving must not turn a failed verification (1) or
    an unauthenticated one (3) into exit 0; the verdict is the exit code, whatever stdout became."""
    import os
    import subprocess
    import sys

    make_folder(tmp_path / "PV")
    if tamper:
        (tmp_path / "PV" / "cam_x.mp4").write_bytes(b"altered")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    try:
        done = subprocess.run(
            [sys.executable, "-m", "csud.cli.main", "verify", str(tmp_path / "PV")],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == expected, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
