"""Configuration: valid files load; each invalid one fails with one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from csud.cli.main import main
from csud.config import load_config, retention_days
from csud.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

BASE = """
[storage]
root = "{root}"
[[communes]]
id = "metz"
name = "Metz"
service = "live"
retention_days = 15
[[cameras]]
id = "metz-gare-01"
commune = "metz"
url = "rtsp://10.20.0.11:554/stream1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "csud.toml"
    path.write_text(text.replace("{root}", str(tmp_path / "store")), encoding="utf-8")
    return path


def test_example_and_demo_configs_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_config(REPO / "config" / "csud.example.toml").settings
    assert [c.id for c in example.communes] == ["metz", "woippy"]
    assert example.camera("metz-gare-01").password_file == Path("metz-gare-01.password")
    demo = load_config(REPO / "config" / "demo.toml").settings
    assert len(demo.cameras) == 3


def test_defaults(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, BASE)).settings
    assert settings.storage.segment_seconds == 60
    assert settings.metrics.listen == "127.0.0.1:9108"
    assert settings.legal.max_retention_days == 30
    cam = settings.cameras[0]
    assert (cam.transport, cam.stall_seconds, cam.host, cam.port) == ("tcp", 10.0, "10.20.0.11", 554)
    assert retention_days(settings, cam) == 15


def test_credentials_move_out_of_the_url(tmp_path: Path) -> None:
    text = BASE.replace("rtsp://10.20.0.11:554/stream1", "rtsp://admin:s%40cret@10.20.0.11:554/stream1")
    cam = load_config(write(tmp_path, text)).settings.cameras[0]
    assert cam.url == "rtsp://10.20.0.11:554/stream1"
    assert cam.username == "admin"
    assert cam.resolve_password() == "s@cret"
    assert "s@cret" not in repr(cam) and "s%40cret" not in repr(cam)


def test_password_file_from_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "cam.pw").write_text("hunter2\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    text = BASE + 'username = "csud"\npassword_file = "cam.pw"\n'
    cam = load_config(write(tmp_path, text)).settings.cameras[0]
    assert cam.resolve_password() == "hunter2"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSUD_STORAGE__SEGMENT_SECONDS", "30")
    monkeypatch.setenv("CSUD_METRICS__LISTEN", "127.0.0.1:9999")
    settings = load_config(write(tmp_path, BASE)).settings
    assert settings.storage.segment_seconds == 30
    assert settings.metrics.listen == "127.0.0.1:9999"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSUD_CONFIG", str(write(tmp_path, BASE)))
    assert load_config(None).settings.cameras[0].id == "metz-gare-01"


BAD = {
    "unknown commune": (
        BASE.replace('commune = "metz"', 'commune = "thionville"'),
        "cameras[0].commune: unknown commune 'thionville'",
    ),
    "duplicate camera": (
        BASE + '[[cameras]]\nid = "metz-gare-01"\ncommune = "metz"\nurl = "rtsp://10.0.0.2/s"\n',
        "cameras[1].id: duplicate camera id 'metz-gare-01'",
    ),
    "retention above legal maximum": (
        BASE.replace("retention_days = 15", "retention_days = 31"),
        "communes[0].retention_days: 31 days exceeds the legal maximum of 30",
    ),
    "retention above a lowered legal maximum": (
        "[legal]\nmax_retention_days = 10\n" + BASE,
        "communes[0].retention_days: 15 days exceeds the legal maximum of 10",
    ),
    "camera longer than commune": (
        BASE + "retention_days = 20\n",
        "cameras[0].retention_days: 20 days is longer than commune 'metz'",
    ),
    "zero retention": (
        BASE.replace("retention_days = 15", "retention_days = 0"),
        "communes[0].retention_days:",
    ),
    "non-rtsp url": (
        BASE.replace("rtsp://10.20.0.11:554/stream1", "http://10.20.0.11/stream1"),
        "cameras[0].url: must be an rtsp:// URL, not 'http' one",
    ),
    "malformed url": (
        BASE.replace("rtsp://10.20.0.11:554/stream1", "rtsp://10.20.0.11:99999/s"),
        "cameras[0].url: malformed URL",
    ),
    "url without host": (
        BASE.replace("rtsp://10.20.0.11:554/stream1", "rtsp:///s"),
        "cameras[0].url: no host",
    ),
    "unknown key": (BASE.replace("[storage]", "[storage]\nrooot = 1"), "storage.rooot: unknown key"),
    "unknown camera key": (BASE + "pasword = 'x'\n", "cameras[0].pasword: unknown key"),
    "bad service": (
        BASE.replace('"live"', '"archive"'),
        "communes[0].service: Input should be 'live' or 'storage'",
    ),
    "bad camera id": (BASE.replace('id = "metz-gare-01"', 'id = "../etc"'), "cameras[0].id:"),
    "both credentials": (
        BASE.replace("rtsp://10.20.0.11", "rtsp://u:p@10.20.0.11") + 'username = "x"\n',
        "cameras[0].url: credentials both in the URL and in username/password",
    ),
    "invalid toml": ("[storage\n", "invalid TOML"),
    "unencoded slash in the password": (
        BASE.replace("rtsp://10.20.0.11:554/stream1", "rtsp://admin:12/34@10.20.0.11/stream1"),
        "cameras[0].url: '@' after the host part",
    ),
    "bad udp bind address": (
        "[network]\nudp_bind = 'eth0'\n" + BASE,
        "network.udp_bind: not an IP address: 'eth0'",
    ),
    "retention interval zero": ("[retention]\ninterval_seconds = 0\n" + BASE, "retention.interval_seconds:"),
    "unknown retention key": ("[retention]\nintervall = 5\n" + BASE, "retention.intervall: unknown key"),
    "min free percent 100": (
        BASE.replace("[storage]", "[storage]\nmin_free_percent = 100"),
        "storage.min_free_percent:",
    ),
    "negative min free percent": (
        BASE.replace("[storage]", "[storage]\nmin_free_percent = -1"),
        "storage.min_free_percent:",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_invalid_configs_name_the_field(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.toml"):
        load_config(tmp_path / "nope.toml")


def test_check_config_exit_codes_and_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, BASE.replace("rtsp://10.20.0.11", "rtsp://admin:topsecret@10.20.0.11"))
    assert main(["check-config", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "metz-gare-01" in out and "rtsp://10.20.0.11:554/stream1" in out
    assert "topsecret" not in out
    bad = write(tmp_path, BASE.replace('commune = "metz"', 'commune = "nancy"'))
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cameras[0].commune: unknown commune 'nancy'" in err
    assert main(["check-config", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_unreadable_password_file_fails_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BASE + 'username = "csud"\npassword_file = "/nonexistent/pw"\n')
    assert main(["check-config", "--config", str(path)]) == 2
    assert "password_file: cannot read /nonexistent/pw" in capsys.readouterr().err


def test_retention_and_disk_pressure_keys(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, BASE)).settings
    assert settings.retention.interval_seconds == 60
    assert settings.storage.min_free_percent == 5
    storage = BASE.replace("[storage]", "[storage]\nmin_free_percent = 2.5")
    text = "[retention]\ninterval_seconds = 300\n" + storage
    settings = load_config(write(tmp_path, text)).settings
    assert (settings.retention.interval_seconds, settings.storage.min_free_percent) == (300, 2.5)
    example = load_config(REPO / "config" / "csud.example.toml").settings
    assert (example.retention.interval_seconds, example.storage.min_free_percent) == (60, 5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE.replace("retention_days = 15", "retention_days = 31"), "exceeds the legal maximum of 30"),
        (BASE + "retention_days = 16\n", "a camera may only shorten its commune's window"),
    ],
)
def test_check_config_refuses_retention_beyond_the_rules(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--config", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_camera_override_shortens_the_window(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, BASE + "retention_days = 7\n")).settings
    assert retention_days(settings, settings.cameras[0]) == 7


def test_credentials_in_the_query_are_masked_for_display(tmp_path: Path) -> None:
    text = BASE.replace(
        "rtsp://10.20.0.11:554/stream1", "rtsp://10.20.0.11/cgi?channel=1&user=admin&password=hunter2"
    )
    cam = load_config(write(tmp_path, text)).settings.cameras[0]
    assert cam.display_url == "rtsp://10.20.0.11/cgi?channel=1&user=***&password=***"
    assert "hunter2" in cam.url  # the camera still gets the URL it needs


def test_unencoded_password_is_never_echoed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BASE.replace("rtsp://10.20.0.11:554/stream1", "rtsp://admin:s3/cret@10.20.0.11/s"))
    assert main(["check-config", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "s3/cret" not in captured.err + captured.out and "cret" not in captured.err


# -- issue 12, point 12: strict types, one error format ----------------------------------------

STRICT_BAD = {
    "enabled as a string": (
        BASE + 'enabled = "yes"\n',
        "cameras[0].enabled: Input should be a valid boolean",
    ),
    "retention as a string": (
        BASE.replace("retention_days = 15", 'retention_days = "7"'),
        "communes[0].retention_days: Input should be a valid integer",
    ),
    "segment_seconds as a string": (
        BASE.replace("[storage]", '[storage]\nsegment_seconds = "60"'),
        "storage.segment_seconds: Input should be a valid integer",
    ),
    "password without username": (
        BASE + 'password = "secret"\n',
        "cameras[0].password: given without username",
    ),
    "password_file without username": (
        BASE + 'password_file = "/run/pw"\n',
        "cameras[0].password_file: given without username",
    ),
    "unknown time zone": (
        '[site]\ntimezone = "Europe/Metz"\n' + BASE,
        "site.timezone: not an IANA time zone",
    ),
}


@pytest.mark.parametrize("case", STRICT_BAD)
def test_strict_config_names_file_and_field(tmp_path: Path, case: str) -> None:
    text, expected = STRICT_BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "secret" not in message and "\n" not in message


def test_environment_overrides_still_parse_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSUD_STORAGE__SEGMENT_SECONDS", "30")
    monkeypatch.setenv("CSUD_STORAGE__MIN_FREE_PERCENT", "2.5")
    monkeypatch.setenv("CSUD_LEGAL__MAX_RETENTION_DAYS", "20")
    monkeypatch.setenv("CSUD_SITE__TIMEZONE", "Europe/Paris")
    s = load_config(write(tmp_path, BASE)).settings
    assert (s.storage.segment_seconds, s.storage.min_free_percent) == (30, 2.5)
    assert s.legal.max_retention_days == 20
    assert s.site.zone()[1] == "Europe/Paris"
    monkeypatch.setenv("CSUD_STORAGE__SEGMENT_SECONDS", "thirty")
    with pytest.raises(ConfigError, match=r"storage\.segment_seconds"):
        load_config(write(tmp_path, BASE))


def test_password_file_error_has_the_common_format(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + 'username = "csud"\npassword_file = "/nonexistent/pw"\n')
    camera = load_config(path).settings.cameras[0]
    with pytest.raises(ConfigError) as info:
        camera.resolve_password()
    expected = f"{path}: cameras[metz-gare-01].password_file: cannot read /nonexistent/pw"
    assert str(info.value).startswith(expected)


def test_site_timezone_default_is_the_system_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/Cayenne")
    assert load_config(write(tmp_path, BASE)).settings.site.zone()[1] == "America/Cayenne"
    settings = load_config(write(tmp_path, '[site]\ntimezone = "Europe/Paris"\n' + BASE)).settings
    assert settings.site.zone()[1] == "Europe/Paris"
