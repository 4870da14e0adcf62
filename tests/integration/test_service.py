"""csud as a service: /metrics, /healthz and /status over real sockets, promtool, systemd-analyze,
the sd_notify protocol on a real AF_UNIX datagram socket, and reload on SIGHUP.

Every daemon and simulator here is a subprocess started by :mod:`tests.integration.helpers` and
always stopped; every wait is bounded.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import sim_site, write_config
from tests.integration.helpers import (
    CSUD,
    FPS,
    daemon,
    free_port,
    log_lines,
    segments,
    simulator,
    stop_process,
    wait_port,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FRAME_NS = 1_000_000_000 // FPS
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def scrape(port: int) -> tuple[str, Samples]:
    status, body = http_get(port, "/metrics")
    assert status == 200
    text = body.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def cam_value(samples: Samples, name: str, camera: str) -> float | None:
    return samples.get((name, (("camera", camera), ("commune", "metz"))))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(every)


def all_cameras(port: int, name: str, cameras: list[str], check: Callable[[float], bool]) -> bool:
    _, samples = scrape(port)
    values = [cam_value(samples, name, c) for c in cameras]
    return all(v is not None and check(v) for v in values)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool missing: apt-get install prometheus (scripts/setup.sh does)"
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, timeout=30)


# -- metrics, health, status -------------------------------------------------------------------


def test_metrics_follow_cameras_down_and_back(tmp_path: Path) -> None:
    """3 cameras: up and counting; the simulator dies: down within 10 s, reconnects grow; back: up."""
    port, mport = free_port(), free_port()
    config = write_config(tmp_path, sim_site(port, 3), metrics_listen=f"127.0.0.1:{mport}", segment_seconds=5)
    cams = ["cam1", "cam2", "cam3"]
    with daemon(config, tmp_path) as proc:
        with simulator(tmp_path, port, 3, name="sim-a") as (sim, _):
            wait_port(mport, 30)
            wait_for(lambda: all_cameras(mport, "csud_camera_up", cams, lambda v: v == 1), 20, "cameras up")
            _, first = scrape(mport)
            time.sleep(2.5)  # at least one export (every 2 s)
            text, second = scrape(mport)
            for cam in cams:
                before = cam_value(first, "csud_camera_frames_total", cam) or 0
                after = cam_value(second, "csud_camera_frames_total", cam) or 0
                assert after > before > 0, (cam, before, after)
                assert cam_value(second, "csud_camera_reconnects_total", cam) == 0
            checked = promtool("check", "metrics", stdin=text)
            assert checked.returncode == 0 and checked.stdout == "" and checked.stderr == "", checked
            assert http_get(mport, "/healthz") == (200, b"ok\n")
            table = subprocess.run(
                [CSUD, "status", "--config", str(config)], capture_output=True, text=True, timeout=30
            )
            assert table.returncode == 0, table.stderr
            lines = table.stdout.splitlines()
            assert lines[0].split()[:3] == ["CAMERA", "COMMUNE", "STATE"]
            assert [line.split()[:3] for line in lines[1:4]] == [[c, "metz", "up"] for c in cams]
            assert lines[-2].startswith("3/3 cameras up")
            assert lines[-1].startswith("config reloads: 0 applied, 0 refused")
            sim.kill()  # the cameras vanish without TEARDOWN
            sim.wait()
            killed = time.monotonic()
            wait_for(lambda: all_cameras(mport, "csud_camera_up", cams, lambda v: v == 0), 10, "cameras down")
            assert time.monotonic() - killed <= 10
            wait_for(
                lambda: all_cameras(mport, "csud_camera_reconnects_total", cams, lambda v: v >= 1),
                10,
                "reconnects counted",
            )
        down = subprocess.run(
            [CSUD, "status", "--config", str(config), "--json"], capture_output=True, text=True, timeout=30
        )
        assert down.returncode == 1  # cameras down: monitoring scripts see it in the exit code
        assert down.stderr == "csud status: 3 camera(s) down: cam1, cam2, cam3\n"
        status = json.loads(down.stdout)
        assert [(c["camera"], c["up"]) for c in status["cameras"]] == [(c, False) for c in cams]
        assert all(c["last_segment"] for c in status["cameras"])
        with simulator(tmp_path, port, 3, name="sim-b"):  # the same port: the cameras reboot
            wait_for(lambda: all_cameras(mport, "csud_camera_up", cams, lambda v: v == 1), 20, "cameras back")
        assert stop_process(proc) == 0


def test_status_without_daemon_fails_clearly(tmp_path: Path) -> None:
    mport = free_port()  # nothing listens there
    config = write_config(
        tmp_path, sim_site(free_port(), 1), metrics_listen=f"127.0.0.1:{mport}", segment_seconds=5
    )
    out = subprocess.run(
        [CSUD, "status", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith(f"csud status: no csud daemon answers at http://127.0.0.1:{mport}/status")
    assert len(out.stderr.splitlines()) == 1


def test_alert_rules_and_dashboard_use_real_metrics() -> None:
    rules = REPO / "config/prometheus/csud-rules.yml"
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    from csud.service import metrics

    exported = set()
    for family in metrics.REGISTRY.collect():
        exported |= {family.name, f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_info"}
    dashboard = json.loads((REPO / "config/grafana/csud-dashboard.json").read_text())
    assert dashboard["panels"] and dashboard["uid"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for source in [rules.read_text(), *exprs]:
        for name in re.findall(r"\b(csud_[a-z_]+|process_[a-z_]+)\b", source):
            if name in ("csud_rules",):
                continue
            assert name in exported, f"{name} is used by an alert or panel but not exported"


# -- systemd ---------------------------------------------------------------------------------


def test_unit_file_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the unit, ExecStart pointed at this checkout's csud."""
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze missing: apt-get install systemd (scripts/setup.sh does)"
    unit = (REPO / "systemd/csud.service").read_text()
    assert "ExecStart=/usr/local/bin/csud run " in unit
    (tmp_path / "csud.service").write_text(unit.replace("/usr/local/bin/csud", CSUD))
    out = subprocess.run(
        [exe, "verify", str(tmp_path / "csud.service")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out


def test_install_script_refuses_non_root() -> None:
    # A copy in a fresh directory any user can traverse: the checkout itself may live where
    # ``nobody`` cannot (under /root, in a 0700 directory), and the script cds to its parent.
    import tempfile

    with tempfile.TemporaryDirectory(prefix="csud-install-") as tmp:
        os.chmod(tmp, 0o755)
        (Path(tmp) / "scripts").mkdir(mode=0o755)
        copy = Path(tmp) / "scripts" / "install.sh"
        shutil.copy(REPO / "scripts/install.sh", copy)
        copy.chmod(0o755)
        script = [str(copy)]
        if os.geteuid() == 0:  # drop to nobody: the refusal is what is tested, nothing is installed
            script = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", *script]
        out = subprocess.run(script, capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 1, out.stderr
    assert "must run as root" in out.stderr


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path) -> None:
    """The real daemon, NOTIFY_SOCKET on an abstract AF_UNIX datagram socket, WATCHDOG_USEC small."""
    port = free_port()
    config = write_config(tmp_path, sim_site(port, 1), segment_seconds=5)
    name = f"csud-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(0.5)
        messages: list[str] = []

        def receive_until(pred: Callable[[str], bool], timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    msg = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                messages.append(msg)
                if pred(msg):
                    return
            raise AssertionError(f"not received within {timeout} s; got {messages}")

        env = {"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "400000"}
        with simulator(tmp_path, port, 1), daemon(config, tmp_path, extra_env=env) as proc:
            receive_until(lambda m: "READY=1" in m.splitlines(), 60)
            ready_at = len(messages)
            receive_until(lambda _: messages[ready_at:].count("WATCHDOG=1") >= 3, 10)  # every 0.2 s
            receive_until(lambda m: m.startswith("STATUS=recording: 1/1 cameras up"), 15)
            proc.send_signal(signal.SIGTERM)
            receive_until(lambda m: "STOPPING=1" in m.splitlines(), 30)
            assert proc.wait(30) == 0
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m.splitlines())
    ping = next(i for i, m in enumerate(messages) if m == "WATCHDOG=1" and i > ready)
    stopping = next(i for i, m in enumerate(messages) if "STOPPING=1" in m.splitlines())
    assert ready < ping < stopping, messages
    assert messages[ready].startswith("READY=1\nSTATUS=recording: ")


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(66, 0, 0, 0, 0) >= 0)  # PR_GET_MDWE (Linux >= 6.3)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _mdwe_supported(), reason="no PR_SET_MDWE")
def test_records_without_writable_executable_memory(tmp_path: Path) -> None:
    """Evidence for ``MemoryDenyWriteExecute=yes``: record under prctl(PR_SET_MDWE), which refuses
    W+X mappings and making writable memory executable (inherited across exec)."""
    port = free_port()
    config = write_config(tmp_path, sim_site(port, 1), segment_seconds=2)
    wrapper = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.prctl(65, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    log = (tmp_path / "csud.log").open("ab")
    with simulator(tmp_path, port, 1):
        proc = subprocess.Popen(
            [sys.executable, "-c", wrapper, CSUD, "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(7)
            assert proc.poll() is None, "csud died under PR_SET_MDWE"
        finally:
            assert stop_process(proc) == 0
            log.close()
    assert len(segments(config, "cam1")) >= 2


# -- reload ----------------------------------------------------------------------------------


def _without_camera(config: Path, camera: str) -> None:
    head, *blocks = config.read_text().split("[[cameras]]\n")
    kept = [b for b in blocks if f'id = "{camera}"' not in b]
    config.write_text("[[cameras]]\n".join([head, *kept]))


def test_sighup_adds_removes_restarts_and_keeps_the_rest(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    listen = f"127.0.0.1:{mport}"
    config = write_config(tmp_path, sim_site(port, 3), segment_seconds=2, metrics_listen=listen)
    with simulator(tmp_path, port, 4), daemon(config, tmp_path) as proc:
        wait_port(mport, 30)
        wait_for(
            lambda: all_cameras(mport, "csud_camera_up", ["cam1", "cam2", "cam3"], lambda v: v == 1), 20, "up"
        )
        time.sleep(4)
        # cam1 unchanged, cam2 removed, cam3 changed (its name), cam4 added.
        write_config(
            tmp_path,
            sim_site(port, 4, camera_options=[{}, {}, {"name": "Gare, quai 2"}, {}]),
            segment_seconds=2,
            metrics_listen=listen,
        )
        _without_camera(config, "cam2")
        reload_ns = time.time_ns()
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: all_cameras(mport, "csud_camera_up", ["cam1", "cam3", "cam4"], lambda v: v == 1),
            20,
            "new set",
        )
        _, samples = scrape(mport)
        assert cam_value(samples, "csud_camera_up", "cam2") is None, "a removed camera's series stay"
        assert samples[("csud_config_reloads_total", ())] == 1
        time.sleep(3)
        # A broken config (unknown commune) is refused; recording goes on with the previous one.
        config.write_text(config.read_text().replace('commune = "metz"', 'commune = "nowhere"', 1))
        proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: scrape(mport)[1][("csud_config_reload_failures_total", ())] == 1, 10, "failure counted"
        )
        _, before = scrape(mport)
        time.sleep(3)
        _, after = scrape(mport)
        for cam in ("cam1", "cam3", "cam4"):
            assert cam_value(after, "csud_camera_up", cam) == 1
            assert (cam_value(after, "csud_camera_frames_total", cam) or 0) > (
                cam_value(before, "csud_camera_frames_total", cam) or 0
            )
        assert cam_value(after, "csud_camera_reconnects_total", "cam1") == 0
        status = json.loads(http_get(mport, "/status")[1])
        assert [c["camera"] for c in status["cameras"]] == ["cam1", "cam3", "cam4"]
        assert status["reloads"] == 1 and status["reload_failures"] == 1
        assert "unknown commune 'nowhere'" in status["last_reload"]["error"]
        assert stop_process(proc) == 0
    events = log_lines(tmp_path)
    reloaded = [e for e in events if e["event"] == "config_reloaded"]
    assert len(reloaded) == 1
    assert (
        reloaded[0]["cameras_added"],
        reloaded[0]["cameras_removed"],
        reloaded[0]["cameras_restarted"],
    ) == (
        ["cam4"],
        ["cam2"],
        ["cam3"],
    )
    failed = [e for e in events if e["event"] == "config_reload_failed"]
    assert len(failed) == 1 and "cameras[0].commune: unknown commune 'nowhere'" in failed[0]["error"]
    # The unchanged camera: one session, segments contiguous within one frame across both reloads.
    _restore(config)
    cam1 = segments(config, "cam1")
    assert cam1[0]["start_ns"] < reload_ns - 2_000_000_000 and cam1[-1]["end_ns"] > reload_ns + 5_000_000_000
    for a, b in itertools.pairwise(cam1):
        assert abs(b["start_ns"] - a["end_ns"]) <= FRAME_NS, (a, b)
    # The removed camera's open segment was closed and indexed; nothing is left half-written.
    cam2 = segments(config, "cam2")
    assert cam2 and abs(cam2[-1]["end_ns"] - reload_ns) < 3_000_000_000
    assert segments(config, "cam4")
    assert not list((tmp_path / "store").rglob("*.partial"))
    journal = json.loads(
        subprocess.run(
            [CSUD, "journal", "--config", str(config), "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    )
    loads = [e for e in journal if e["kind"] == "config_loaded"]
    assert len(loads) == 2 and loads[1]["details"]["reload"] is True
    assert loads[1]["details"]["cameras_added"] == ["cam4"]


def _restore(config: Path) -> None:
    """The CLI needs a valid config to find the store: undo the deliberate breakage."""
    config.write_text(config.read_text().replace('commune = "nowhere"', 'commune = "metz"'))
