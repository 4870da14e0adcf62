"""GStreamer's RTSP server (tests/interop/gst_rtsp_server.py) as a fixture: started under Debian's
/usr/bin/python3 with the system gi, READY awaited, always stopped."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import skip_or_fail

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("gst_rtsp_server.py")
READY_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0
_GI_CHECK = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"


def _gstreamer_available() -> str:
    """Empty if the server can run here, else why not."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", _GI_CHECK], capture_output=True, text=True, timeout=30)
    if probe.returncode:
        return "GStreamer RTSP server not installed (scripts/setup.sh installs it): " + probe.stderr[-200:]
    return ""


@dataclass
class GstServer:
    """One running gst_rtsp_server.py. ``lines`` collects its stdout events as they come."""

    proc: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.port}{path}"

    def events(self, kind: str) -> list[tuple[str, float]]:
        """``(detail, monotonic time)`` of every event line of ``kind`` (CLIENT, REQUEST...)."""
        out = []
        for line in list(self.lines):
            words = line.split()
            if words and words[0] == kind:
                out.append((" ".join(words[1:-1]), float(words[-1])))
        return out

    def requests(self, method: str) -> list[float]:
        return [t for detail, t in self.events("REQUEST") if detail == method]

    def wait_event(self, kind: str, timeout: float, detail: str | None = None) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d, t in self.events(kind):
                if detail is None or d == detail:
                    return t
            time.sleep(0.05)
        raise AssertionError(f"no {kind} {detail or ''} event from the GStreamer server in {timeout} s")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                self._ready.set()
            self.lines.append(line)
        self._ready.set()  # EOF: the process died; start() reports it

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def describe(port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    """A bare RTSP DESCRIBE: (status, SDP body). To see what the server puts in its SDP."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        request = (
            f"DESCRIBE rtsp://127.0.0.1:{port}{path} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
        )
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        match = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
        length = int(match.group(1)) if match else 0
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"RTSP/") else 0
    return status, body.decode("utf-8", "replace")


def _rtsp_request(sock: socket.socket, method: str, url: str, cseq: int, headers: str = "") -> str:
    sock.sendall(f"{method} {url} RTSP/1.0\r\nCSeq: {cseq}\r\n{headers}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"content-length:\s*(\d+)", head, re.IGNORECASE)
    while match and len(body) < int(match.group(1)):
        body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode("utf-8", "replace")


def inband_h264_nal_types(port: int, path: str, seconds: float = 2.0) -> set[int]:
    """Types of the H.264 NAL units a TCP-interleaved session carries in ``seconds``: to see
    whether SPS (7) and PPS (8) travel in-band. Single NAL, STAP-A and FU-A (start) looked into."""
    url = f"rtsp://127.0.0.1:{port}{path}"
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sdp = _rtsp_request(sock, "DESCRIBE", url, 1, "Accept: application/sdp\r\n")
        control = re.findall(r"a=control:(\S+)", sdp)[-1]
        setup_url = control if control.startswith("rtsp://") else f"{url}/{control}"
        reply = _rtsp_request(
            sock, "SETUP", setup_url, 2, "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n"
        )
        session = re.search(r"Session: ([^;\r\n]+)", reply)
        assert session, reply
        sock.sendall(f"PLAY {url} RTSP/1.0\r\nCSeq: 3\r\nSession: {session.group(1)}\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                data += sock.recv(65536)
    types: set[int] = set()
    pos = data.find(b"$")
    while pos >= 0 and pos + 4 <= len(data):
        if data[pos] != 0x24:  # an RTSP reply between frames: skip to the next frame
            pos = data.find(b"$", pos + 1)
            continue
        size = int.from_bytes(data[pos + 2 : pos + 4], "big")
        payload = data[pos + 4 + 12 : pos + 4 + size]  # RTP header without CSRC/extension
        if data[pos + 1] == 0 and len(payload) == size - 12 and len(payload) > 1:
            ntype = payload[0] & 0x1F
            if ntype == 24:  # STAP-A
                i = 1
                while i + 2 < len(payload):
                    types.add(payload[i + 2] & 0x1F)
                    i += 2 + int.from_bytes(payload[i : i + 2], "big")
            elif ntype == 28:  # FU-A
                if payload[1] & 0x80:
                    types.add(payload[1] & 0x1F)
            else:
                types.add(ntype)
        pos += 4 + size
    return types


@pytest.fixture(scope="session")
def gstreamer() -> None:
    reason = _gstreamer_available()
    if reason:
        skip_or_fail(reason)


@pytest.fixture
def gst_server(gstreamer: None, tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], GstServer]]:
    """A factory: ``gst_server(spec)`` starts a server (spec as in gst_rtsp_server.py's doc)."""
    servers: list[GstServer] = []
    logs: list[Any] = []

    def start(spec: dict[str, Any]) -> GstServer:
        stderr = (tmp_path / f"gst-{len(servers)}.log").open("w")
        logs.append(stderr)
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--spec", json.dumps({"port": 0, **spec})],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        server = GstServer(proc)
        servers.append(server)
        threading.Thread(target=server._read, daemon=True).start()
        if not server._ready.wait(READY_TIMEOUT_SECONDS) or not server.port:
            server.stop()
            log = (tmp_path / f"gst-{len(servers) - 1}.log").read_text()
            raise AssertionError(f"GStreamer RTSP server not ready: {log[-2000:]}")
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        for log in logs:
            log.close()
